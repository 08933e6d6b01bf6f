//! Bakes libtorch's directory into the rpath of this crate's test binaries so they run without
//! LD_LIBRARY_PATH (torch-sys declares `links = "tch"`, so its `cargo:libtorch_lib=` line
//! reaches us here).

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
