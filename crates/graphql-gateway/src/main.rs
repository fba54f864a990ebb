use std::time::Duration;

use iot_runtime::ServiceConfig as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    iot_telemetry::init_tracing("graphql-gateway");
    let config = graphql_gateway::Config::load(iot_runtime::config_path_from_args().as_deref())?;
    let result = iot_runtime::run_until_signal(
        |shutdown| graphql_gateway::run(config, shutdown),
        Duration::from_secs(10),
    )
    .await;
    // Export the last spans before exiting.
    iot_telemetry::trace::shutdown().await;
    result
}
