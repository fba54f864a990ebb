fn main() -> Result<(), iot_runtime::BoxError> {
    iot_runtime::service::main(
        "graphql-gateway",
        std::time::Duration::from_secs(10),
        graphql_gateway::run,
    )
}
