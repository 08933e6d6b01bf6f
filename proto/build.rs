//! Generates the tonic client and server code for `tessera.v1` from the .proto files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["tessera/v1/tessera.proto"], &["."])?;
    Ok(())
}
