//! `--grpc-cert`, `--grpc-key`, `--grpc-ca`: mTLS to the platform's gRPC
//! services, for a platform whose services set `grpc_tls`. The
//! certificate's common name is who the services see calling (`iotctl`
//! is a platform identity by default).

use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct GrpcTlsArgs {
    /// This client's certificate (PEM), from the platform's gRPC CA.
    #[arg(long, env = "IOT_GRPC_CERT", requires_all = ["grpc_key", "grpc_ca"])]
    pub grpc_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "IOT_GRPC_KEY", requires_all = ["grpc_cert", "grpc_ca"])]
    pub grpc_key: Option<PathBuf>,
    /// The platform's gRPC CA (PEM).
    #[arg(long, env = "IOT_GRPC_CA", requires_all = ["grpc_cert", "grpc_key"])]
    pub grpc_ca: Option<PathBuf>,
}

impl GrpcTlsArgs {
    pub fn config(&self) -> iot_proto::GrpcTls {
        iot_proto::GrpcTls {
            cert: self.grpc_cert.clone(),
            key: self.grpc_key.clone(),
            ca: self.grpc_ca.clone(),
            ..iot_proto::GrpcTls::default()
        }
    }
}
