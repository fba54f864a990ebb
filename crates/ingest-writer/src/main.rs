use std::time::Duration;

use iot_runtime::ServiceConfig as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    iot_telemetry::init_tracing("ingest-writer");
    let config = ingest_writer::Config::load(iot_runtime::config_path_from_args().as_deref())?;
    let result = iot_runtime::run_until_signal(
        |shutdown| ingest_writer::run(config, shutdown),
        Duration::from_secs(30),
    )
    .await;
    // Export the last spans before exiting.
    iot_telemetry::trace::shutdown().await;
    result
}
