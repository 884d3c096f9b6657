//! Compiles the hyperllama.v1 protos with the protoc binary vendored by `protoc-bin-vendored`,
//! so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["hyperllama/v1/control.proto", "hyperllama/v1/runner.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_client(true).build_server(true).compile_with_config(
        config,
        &protos,
        &["."],
    )?;
    Ok(())
}
