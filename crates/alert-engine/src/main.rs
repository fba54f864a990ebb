fn main() -> Result<(), iot_runtime::BoxError> {
    iot_runtime::service::main(
        "alert-engine",
        std::time::Duration::from_secs(10),
        alert_engine::run,
    )
}
