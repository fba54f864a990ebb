//! iotctl as a library: the simulator is also driven by the benchmarks.

pub mod devices;
pub mod grpc_tls;
pub mod simulate;
