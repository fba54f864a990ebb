//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it is compiled: clones that share
    // one target directory may share the compiled script.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "iot/v1/reading.proto",
        "iot/v1/devices.proto",
        "iot/v1/telemetry.proto",
        "iot/v1/ingest.proto",
        "iot/v1/alerts.proto",
        "iot/v1/commands.proto",
    ];
    // Relative to this package, so that clones sharing one target directory
    // each watch their own files.
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(files, [&root])?;
    // For gRPC server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("iot_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
