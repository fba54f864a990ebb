//! iotctl as a library: the simulator is also driven by the benchmarks.

pub mod archive;
pub mod device_commands;
pub mod devices;
pub mod export;
pub mod grpc_tls;
pub mod import;
pub mod responder;
pub mod simulate;
