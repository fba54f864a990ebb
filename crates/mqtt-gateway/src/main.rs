fn main() -> Result<(), iot_runtime::BoxError> {
    iot_runtime::service::main(
        "mqtt-gateway",
        std::time::Duration::from_secs(30),
        mqtt_gateway::run,
    )
}
