//! Bakes libtorch's directory into the worker's rpath so the binaries run without
//! LD_LIBRARY_PATH, and with the `cuda` feature links libtorch's CUDA half unconditionally.

fn main() {
    // torch-sys declares `links = "tch"`, so its `cargo:libtorch_lib=` line reaches us here.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // Without --no-as-needed the linker drops libtorch_cuda.so (no symbol of it is used
        // directly) and tch reports no GPU. The CUDA libraries themselves are only needed on the
        // machine that runs the worker, so allow their symbols to stay unresolved here.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
