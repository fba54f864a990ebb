//! The tests' own certificate authority for gRPC mTLS: made once per test
//! process (nothing is committed), with one certificate per identity for
//! `localhost` and 127.0.0.1. Every service the testkit starts serves and
//! calls over mTLS with its own identity, as a production deployment with
//! `grpc_tls` does; a test calls as `iotctl` (a platform identity) unless
//! it asks for another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use iot_proto::GrpcTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority of the test process, its files under `dir`.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    issued: Mutex<HashMap<String, GrpcTls>>,
}

impl Pki {
    /// A new CA named `name`, its files in a folder of its own.
    pub fn new(name: &str) -> Self {
        let base = std::env::temp_dir().join("iot-testkit-pki");
        forget_dead(&base);
        let dir = base.join(format!("{}-{}", std::process::id(), crate::unique()));
        std::fs::create_dir_all(&dir).expect("a folder for test certificates");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).expect("a CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        Self {
            dir,
            ca,
            ca_key,
            issued: Mutex::default(),
        }
    }

    /// The `grpc_tls` of `identity` (the certificate's common name),
    /// issued on first use.
    pub fn identity(&self, identity: &str) -> GrpcTls {
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued
            .entry(identity.to_owned())
            .or_insert_with(|| self.issue(identity))
            .clone()
    }

    fn issue(&self, identity: &str) -> GrpcTls {
        let key = KeyPair::generate().expect("a key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("a signed certificate");
        let (cert_path, key_path) = (
            self.dir.join(format!("{identity}.pem")),
            self.dir.join(format!("{identity}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        GrpcTls {
            cert: Some(cert_path),
            key: Some(key_path),
            ca: Some(self.dir.join("ca.pem")),
            ..GrpcTls::default()
        }
    }
}

/// Removes the folders of test processes that have ended.
fn forget_dead(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name.to_string_lossy();
        let pid = pid.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The test process's CA, which every service of the testkit trusts.
pub fn platform() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new("iot-testkit CA"))
}

/// `identity`'s `grpc_tls` from [`platform`].
pub fn grpc_tls(identity: &str) -> GrpcTls {
    platform().identity(identity)
}

/// How tests call the platform's services: as the operator's `iotctl`.
pub fn operator() -> GrpcTls {
    grpc_tls("iotctl")
}

/// A channel to the service at `url`, calling as the operator.
pub async fn channel(url: &str) -> tonic::transport::Channel {
    iot_proto::connect(&operator(), "the service under test", url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
