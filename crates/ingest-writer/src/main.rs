fn main() -> Result<(), iot_runtime::BoxError> {
    iot_runtime::service::main(
        "ingest-writer",
        std::time::Duration::from_secs(30),
        ingest_writer::run,
    )
}
