fn main() -> Result<(), iot_runtime::BoxError> {
    iot_runtime::service::main(
        "device-registry",
        std::time::Duration::from_secs(10),
        device_registry::run,
    )
}
