//! Trust on the gRPC links between services. With `grpc_tls` set, a
//! service's gRPC server accepts only callers presenting a certificate
//! from the platform's CA (mTLS), and every client it makes presents the
//! service's own certificate and accepts only servers with one from that
//! CA. The certificate's common name is the caller's identity: names in
//! `platform_identities` may ask for every owner's data (`x-iot-owner: *`);
//! any other certified caller may act for one owner at a time.
//!
//! Without `grpc_tls` nothing is encrypted and nobody is identified: the
//! port's network placement is the only guard (local development, or a
//! network nothing else reaches).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The platform's own callers: its five services and the operator's
/// `iotctl`.
pub const PLATFORM_IDENTITIES: &[&str] = &[
    "device-registry",
    "ingest-writer",
    "alert-engine",
    "mqtt-gateway",
    "graphql-gateway",
    "iotctl",
];

/// A service's `[grpc_tls]` config section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcTls {
    /// This service's certificate chain (PEM): what its server presents,
    /// and what its clients present to the services it calls.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA (PEM) that issues the platform's gRPC certificates.
    pub ca: Option<PathBuf>,
    /// Certificate common names that may ask for all owners.
    pub platform_identities: Vec<String>,
}

impl Default for GrpcTls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ca: None,
            platform_identities: PLATFORM_IDENTITIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Why TLS for gRPC could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("grpc_tls: cert, key and ca are set together (mTLS needs all three); missing: {0}")]
    Incomplete(String),
    #[error("grpc_tls.{field} {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC upstream {link} ({url}): {source}")]
    Endpoint {
        link: String,
        url: String,
        source: tonic::transport::Error,
    },
}

/// The files of an enabled [`GrpcTls`], read.
struct Loaded {
    identity: Identity,
    ca: Certificate,
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.display().to_string(),
        source,
    })
}

impl GrpcTls {
    /// Whether mTLS is asked for (any of its files is set).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }

    /// What is wrong with the section, for a service's config check.
    pub fn problems(&self) -> Vec<String> {
        match self.files() {
            Err(e) => vec![e.to_string()],
            Ok(_) => Vec::new(),
        }
    }

    fn files(&self) -> Result<Option<(&Path, &Path, &Path)>, TlsError> {
        match (&self.cert, &self.key, &self.ca) {
            (None, None, None) => Ok(None),
            (Some(c), Some(k), Some(a)) => Ok(Some((c, k, a))),
            (c, k, a) => {
                let missing: Vec<&str> = [("cert", c), ("key", k), ("ca", a)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| n)
                    .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }

    fn load(&self) -> Result<Option<Loaded>, TlsError> {
        let Some((cert, key, ca)) = self.files()? else {
            return Ok(None);
        };
        // tonic's TLS takes the process's rustls provider, and the
        // dependency tree enables more than one: name ours (the one every
        // other TLS link of the platform uses). A second call finds it set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Some(Loaded {
            identity: Identity::from_pem(read("cert", cert)?, read("key", key)?),
            ca: Certificate::from_pem(read("ca", ca)?),
        }))
    }

    /// The server's TLS (client certificates required) and who may ask
    /// for what; `None` when mTLS is off.
    pub fn server(&self) -> Result<Option<(ServerTlsConfig, Arc<CallerPolicy>)>, TlsError> {
        let Some(l) = self.load()? else {
            return Ok(None);
        };
        let tls = ServerTlsConfig::new()
            .identity(l.identity)
            .client_ca_root(l.ca);
        let policy = CallerPolicy {
            platform: self.platform_identities.iter().cloned().collect(),
        };
        Ok(Some((tls, Arc::new(policy))))
    }

    /// An endpoint for the upstream `link` (its name in errors) at `url`:
    /// over mTLS when it is on (an `http://` address is then dialled as
    /// `https://`), the server's name checked against its certificate.
    pub fn endpoint(&self, link: &str, url: &str) -> Result<Endpoint, TlsError> {
        let failed = |source| TlsError::Endpoint {
            link: link.to_owned(),
            url: url.to_owned(),
            source,
        };
        let Some(l) = self.load()? else {
            return Endpoint::from_shared(url.to_owned()).map_err(failed);
        };
        let secure = match url.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => url.to_owned(),
        };
        Endpoint::from_shared(secure)
            .and_then(|e| {
                e.tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(l.ca)
                        .identity(l.identity),
                )
            })
            .map_err(failed)
    }
}

/// A channel to `endpoint` that connects on first use, its
/// `connect_timeout` covering the TLS handshake as well as the TCP connect
/// (tonic's own lazy channel times only the TCP connect, so a peer that
/// accepts and never answers the handshake would hold every call).
/// NODELAY as tonic's own endpoints have it: with Nagle's algorithm a call
/// on a quiet connection waits out the peer's delayed ACK.
pub fn lazy(endpoint: &Endpoint) -> tonic::transport::Channel {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    endpoint.connect_with_connector_lazy(http)
}

/// Which certified callers are the platform's own; a server with mTLS
/// puts it in every request's extensions.
#[derive(Debug)]
pub struct CallerPolicy {
    platform: HashSet<String>,
}

/// Who made a call, as the server's transport established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server has no mTLS: every caller that reaches its port is
    /// trusted as the platform.
    Network,
    /// A certificate from the platform's CA naming one of
    /// `platform_identities`.
    Platform(String),
    /// A certificate from the platform's CA naming anyone else: it may
    /// act for one owner, never for all.
    Service(String),
    /// A certificate from the platform's CA that names nobody (no common
    /// name).
    Anonymous,
}

/// The caller of `req`.
pub fn caller_of<T>(req: &tonic::Request<T>) -> Caller {
    let Some(policy) = req.extensions().get::<Arc<CallerPolicy>>() else {
        return Caller::Network;
    };
    let name = req
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|c| common_name(c)));
    match name {
        None => Caller::Anonymous,
        Some(n) if policy.platform.contains(&n) => Caller::Platform(n),
        Some(n) => Caller::Service(n),
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode as _;
    use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == CN)
        .find_map(|atv| {
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

/// PERMISSION_DENIED unless the caller of `req` is the platform (or the
/// server has no mTLS): for doors that act for any owner, such as Ingest.
pub fn require_platform<T>(req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    match caller_of(req) {
        Caller::Network | Caller::Platform(_) => Ok(()),
        Caller::Service(name) => Err(tonic::Status::permission_denied(format!(
            "{name} is not a platform identity (grpc_tls.platform_identities): \
             this door is for the platform's own services"
        ))),
        Caller::Anonymous => Err(anonymous()),
    }
}

pub(crate) fn anonymous() -> tonic::Status {
    tonic::Status::unauthenticated("the caller's certificate names no one (no common name)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_files_or_none() {
        assert!(GrpcTls::default().problems().is_empty());
        let half = GrpcTls {
            cert: Some("c.pem".into()),
            ..GrpcTls::default()
        };
        let p = half.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("missing: key, ca"), "{p:?}");
    }

    #[test]
    fn plain_endpoints_stay_plain_and_bad_files_name_their_field() {
        let plain = GrpcTls::default();
        let e = plain
            .endpoint("device-registry", "http://127.0.0.1:1")
            .unwrap();
        assert_eq!(e.uri().scheme_str(), Some("http"));
        let missing = GrpcTls {
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/k.pem".into()),
            ca: Some("/nonexistent/ca.pem".into()),
            ..GrpcTls::default()
        };
        let err = missing
            .endpoint("device-registry", "http://127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("grpc_tls.cert /nonexistent/c.pem"), "{err}");
    }
}
