//! How the processes of an end-to-end run reach each other: plain, or
//! with TLS on every link (the ingest benchmark's TLS comparison).
//!
//! With TLS:
//! - MQTT: the gateway, the registry's admin session and the simulator
//!   connect to the broker's TLS listener, trusting the local CA;
//! - PostgreSQL: the services' `database_url` asks for
//!   `sslmode=verify-full` against the local CA;
//! - gRPC: mTLS, every service and the benchmark's own calls (as `iotctl`)
//!   with a certificate of their own from a CA made for this run ([`Pki`]);
//! - Kafka: librdkafka with `security.protocol=ssl` to a TLS terminator in
//!   this process in front of a Tansu of the run's own ([`OwnKafka`]):
//!   Tansu 0.6 cannot serve TLS itself.
//!
//! For a fair ratio the plain run gets the same: a freshly started Tansu of
//! its own behind a relay in this process, only without encryption.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use iot_proto::GrpcTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};

use crate::procs;

/// The local stack's CA (`cargo xtask`): PostgreSQL and Mosquitto's TLS
/// listener serve certificates it signed for localhost and 127.0.0.1.
fn stack_ca() -> String {
    crate::env("IOT_BENCH_STACK_CA", "/var/lib/iot-platform/tls/ca.pem")
}

/// A throwaway certificate authority for one run's gRPC mTLS (and the
/// Kafka terminator's certificate), its files in a temporary folder that
/// goes with it.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    issued: Mutex<HashMap<String, GrpcTls>>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "iot-bench-pki-{}-{}",
            std::process::id(),
            crate::unique()
        ));
        std::fs::create_dir_all(&dir).expect("a folder for the run's certificates");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "iot-bench CA");
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

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The `grpc_tls` of `identity`, issued on first use.
    pub fn identity(&self, identity: &str) -> GrpcTls {
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued
            .entry(identity.to_owned())
            .or_insert_with(|| self.issue(identity))
            .clone()
    }

    /// A certificate for `identity` (its common name) and for localhost
    /// and 127.0.0.1, for servers and clients alike, as `grpc_tls`.
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
            ca: Some(self.ca()),
            ..GrpcTls::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Tansu binary: `IOT_BENCH_TANSU`, `IOT_FAULTS_TANSU`, or where
/// `cargo xtask` builds it.
fn tansu_bin() -> PathBuf {
    std::env::var_os("IOT_BENCH_TANSU")
        .or_else(|| std::env::var_os("IOT_FAULTS_TANSU"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("IOT_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache/iot-platform")
                });
            cache.join("tansu/bin/tansu")
        })
}

/// A freshly started Tansu (memory storage) of one run, listening plain on
/// a port of its own and advertising `front`, where a relay in this
/// process accepts connections (TLS when given a certificate) and passes
/// the bytes on.
pub struct OwnKafka {
    tansu: Child,
    relay: tokio::task::JoinHandle<()>,
    dir: PathBuf,
    pub front: u16,
}

impl OwnKafka {
    pub async fn start(tls: Option<&GrpcTls>) -> Self {
        let (back, front) = (procs::free_port(), procs::free_port());
        let dir = std::env::temp_dir().join(format!("iot-bench-tansu-{}", crate::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = tansu_bin();
        let tansu = procs::command(&bin)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{back}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{front}"),
            ])
            .env("RUST_LOG", "error")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start tansu {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", back)).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not open port {back}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = TcpListener::bind(("127.0.0.1", front)).await.unwrap();
        let acceptor = tls.map(acceptor);
        let relay = tokio::spawn(relay(listener, back, acceptor));
        Self {
            tansu,
            relay,
            dir,
            front,
        }
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.relay.abort();
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server config with the certificate of `tls` (no client
/// certificates: librdkafka authenticates the broker only).
fn acceptor(tls: &GrpcTls) -> tokio_rustls::TlsAcceptor {
    let read = |p: &Option<PathBuf>| std::fs::read(p.as_ref().unwrap()).unwrap();
    let certs = rustls_pemfile::certs(&mut &*read(&tls.cert))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &*read(&tls.key))
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Accepts connections on `front` (TLS when `tls`) and relays each to the
/// broker on `back`; both runs relay the same way, so that only the
/// encryption differs.
async fn relay(front: TcpListener, back: u16, tls: Option<tokio_rustls::TlsAcceptor>) {
    const BUF: usize = 64 * 1024;
    loop {
        let Ok((socket, _)) = front.accept().await else {
            return;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            let Ok(mut broker) = TcpStream::connect(("127.0.0.1", back)).await else {
                return;
            };
            let _ = broker.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    let Ok(mut secure) = acceptor.accept(socket).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut secure,
                        &mut broker,
                        BUF,
                        BUF,
                    )
                    .await;
                }
                None => {
                    let mut socket = socket;
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut socket,
                        &mut broker,
                        BUF,
                        BUF,
                    )
                    .await;
                }
            }
        });
    }
}

/// How one end-to-end run's processes reach each other.
pub struct Links {
    /// "plain" or "TLS".
    pub name: &'static str,
    /// The services' Kafka brokers and librdkafka properties.
    pub brokers: String,
    pub kafka_properties: BTreeMap<String, String>,
    /// The broker's MQTT listener, and its CA when it is the TLS one.
    pub mqtt_port: u16,
    pub mqtt_ca: Option<String>,
    /// Appended to the services' database URLs.
    pub db_params: String,
    /// gRPC mTLS: the run's CA.
    pki: Option<Pki>,
    /// The run's own broker (none: the stack's).
    _kafka: Option<OwnKafka>,
}

impl Links {
    /// The stack as it is: its broker, plain everywhere.
    pub fn stack(ctx: &crate::Ctx) -> Self {
        Self {
            name: "plain",
            brokers: ctx.brokers.clone(),
            kafka_properties: BTreeMap::new(),
            mqtt_port: ctx.mqtt_port,
            mqtt_ca: None,
            db_params: String::new(),
            pki: None,
            _kafka: None,
        }
    }

    /// Plain links, with a freshly started broker of the run's own behind
    /// a plain relay.
    pub async fn plain(ctx: &crate::Ctx) -> Self {
        let kafka = OwnKafka::start(None).await;
        Self {
            brokers: format!("127.0.0.1:{}", kafka.front),
            _kafka: Some(kafka),
            ..Self::stack(ctx)
        }
    }

    /// TLS on every link, with a freshly started broker of the run's own
    /// behind a TLS terminator.
    pub async fn tls() -> Self {
        let pki = Pki::new();
        let kafka = OwnKafka::start(Some(&pki.identity("kafka-broker"))).await;
        let stack_ca = stack_ca();
        Self {
            name: "TLS",
            brokers: format!("127.0.0.1:{}", kafka.front),
            kafka_properties: BTreeMap::from([
                ("security.protocol".to_owned(), "ssl".to_owned()),
                ("ssl.ca.location".to_owned(), pki.ca().display().to_string()),
            ]),
            mqtt_port: crate::env("IOT_BENCH_MQTT_TLS_PORT", "18883")
                .parse()
                .expect("IOT_BENCH_MQTT_TLS_PORT"),
            db_params: format!("?sslmode=verify-full&sslrootcert={stack_ca}"),
            mqtt_ca: Some(stack_ca),
            pki: Some(pki),
            _kafka: Some(kafka),
        }
    }

    /// The Kafka settings of the run's topics `base` names.
    pub fn kafka(&self, base: iot_kafka::KafkaConfig) -> iot_kafka::KafkaConfig {
        iot_kafka::KafkaConfig {
            brokers: self.brokers.clone(),
            properties: self.kafka_properties.clone(),
            ..base
        }
    }

    /// A service's database URL.
    pub fn db(&self, url: &str) -> String {
        format!("{url}{}", self.db_params)
    }

    /// The `grpc_tls` of `identity`, default (off) without TLS.
    pub fn grpc(&self, identity: &str) -> GrpcTls {
        self.pki
            .as_ref()
            .map_or_else(GrpcTls::default, |p| p.identity(identity))
    }

    /// The environment (without the service's prefix) that gives the
    /// service `identity` its gRPC certificate and, with `mqtt_section`
    /// (`MQTT`, `BROKER`), TLS to the MQTT broker.
    pub fn vars(&self, identity: &str, mqtt_section: Option<&str>) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        let path = |p: &Option<PathBuf>| p.as_deref().map(Path::display).unwrap().to_string();
        if self.pki.is_some() {
            let g = self.grpc(identity);
            vars.push(("GRPC_TLS__CERT", path(&g.cert)));
            vars.push(("GRPC_TLS__KEY", path(&g.key)));
            vars.push(("GRPC_TLS__CA", path(&g.ca)));
        }
        if let (Some(ca), Some(section)) = (&self.mqtt_ca, mqtt_section) {
            let (enabled, ca_file): (&'static str, &'static str) = match section {
                "BROKER" => ("BROKER__TLS__ENABLED", "BROKER__TLS__CA_FILE"),
                _ => ("MQTT__TLS__ENABLED", "MQTT__TLS__CA_FILE"),
            };
            vars.push((enabled, "true".to_owned()));
            vars.push((ca_file, ca.clone()));
        }
        vars
    }

    /// The simulator's settings for these links.
    pub fn simulator(&self, mut args: iotctl::simulate::Args) -> iotctl::simulate::Args {
        args.mqtt_port = self.mqtt_port;
        args.mqtt_tls.mqtt_ca_file = self.mqtt_ca.clone();
        let g = self.grpc("iotctl");
        args.grpc_tls = iotctl::grpc_tls::GrpcTlsArgs {
            grpc_cert: g.cert,
            grpc_key: g.key,
            grpc_ca: g.ca,
        };
        args
    }
}
