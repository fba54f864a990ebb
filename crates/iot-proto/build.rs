//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "iot/v1/reading.proto",
        "iot/v1/devices.proto",
        "iot/v1/telemetry.proto",
        "iot/v1/ingest.proto",
        "iot/v1/alerts.proto",
    ];
    // Relative to this package, so that clones sharing one target directory
    // each watch their own files.
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
