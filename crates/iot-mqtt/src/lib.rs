//! The MQTT link as every platform client makes it (mqtt-gateway's
//! subscription, device-registry's dynamic-security admin session,
//! `iotctl simulate`): TLS to the broker with a CA file of the operator's
//! (and a client certificate where the broker asks for one), and errors
//! that say which link failed.
//!
//! The broker's certificate must chain to `ca_file` and name the host the
//! client connects to (a DNS name or an IP address in its subjectAltName):
//! rumqttc hands the configured host to rustls as the server name.

use std::fmt;
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

/// TLS to the broker (`[mqtt.tls]`, `[broker.tls]`). Off: plain TCP, which
/// the shipped brokers offer on loopback only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Connect over TLS (the brokers' device listener, 8883).
    pub enabled: bool,
    /// The CA that signed the broker's certificate, PEM (one or more
    /// certificates). Required while `enabled`.
    pub ca_file: Option<String>,
    /// A client certificate (PEM, its chain after it) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1), for a broker that asks for one
    /// (Mosquitto's `require_certificate true`). Both or neither.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// A TLS setting that cannot be used: a file that cannot be read or holds
/// nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {path:?}: {problem}")]
    File {
        setting: &'static str,
        path: String,
        problem: String,
    },
    #[error("{0}")]
    Settings(String),
}

impl TlsConfig {
    /// What is wrong with the settings, each problem naming its key under
    /// `prefix` (e.g. `mqtt.tls`). Reads no file: a config is checked on
    /// machines other than the one the service runs on.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let given = |f: &Option<String>| f.as_deref().is_some_and(|p| !p.is_empty());
        let mut p = Vec::new();
        if self.enabled && !given(&self.ca_file) {
            p.push(format!(
                "{prefix}.ca_file is required while {prefix}.enabled (the CA that signed the \
                 broker's certificate, PEM)"
            ));
        }
        if given(&self.cert_file) != given(&self.key_file) {
            p.push(format!(
                "{prefix}.cert_file and {prefix}.key_file go together (a client certificate \
                 and its key)"
            ));
        }
        // A CA file without `enabled` would leave the link in plain text
        // while its operator believes it encrypted.
        if !self.enabled
            && (given(&self.ca_file) || given(&self.cert_file) || given(&self.key_file))
        {
            p.push(format!(
                "{prefix}: files are set but {prefix}.enabled is false; set it to true for TLS"
            ));
        }
        p
    }

    /// The transport rumqttc connects with: plain TCP, or TLS with the
    /// configured CA as the only trust anchor. Reads the files.
    pub fn transport(&self) -> Result<Transport, TlsError> {
        if !self.enabled {
            return Ok(Transport::tcp());
        }
        let ca = self
            .ca_file
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| TlsError::Settings("TLS is enabled without a ca_file".into()))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .with_root_certificates(load_roots(ca)?);
        let config = match (self.cert_file.as_deref(), self.key_file.as_deref()) {
            (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => builder
                .with_client_auth_cert(load_certs("cert_file", cert)?, load_key(key)?)
                .map_err(|e| TlsError::File {
                    setting: "key_file",
                    path: key.to_owned(),
                    problem: e.to_string(),
                })?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )))
    }
}

/// The crypto provider of the workspace's rustls clients (iot-db's too),
/// named rather than left to the process default, which a dependency
/// compiling another provider in would make ambiguous.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(setting: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        setting,
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

fn load_certs(setting: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            setting,
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            setting,
            path: path.to_owned(),
            problem: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn load_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("ca_file", path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            setting: "ca_file",
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key_file", path)?;
    let problem = |problem: String| TlsError::File {
        setting: "key_file",
        path: path.to_owned(),
        problem,
    };
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| problem(e.to_string()))?
        .ok_or_else(|| problem("holds no private key".into()))
}

/// The broker a client talks to, as its errors name it:
/// `MQTT broker 127.0.0.1:8883`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub host: String,
    pub port: u16,
}

impl Link {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// `error` on this link: `MQTT broker 127.0.0.1:8883: TLS: invalid
    /// peer certificate: UnknownIssuer`.
    pub fn error(&self, error: &(dyn std::error::Error + 'static)) -> LinkError {
        LinkError {
            link: self.clone(),
            problem: describe(error),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MQTT broker {}:{}", self.host, self.port)
    }
}

/// A failure of one link, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{link}: {problem}")]
pub struct LinkError {
    pub link: Link,
    pub problem: String,
}

/// A connection error in words: a TLS failure as rustls words it (the
/// verifier's verdict on the broker's certificate, say), found under the
/// I/O error rumqttc wraps it in; anything else as it displays itself.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS: {tls}");
        }
        // io::Error::source skips the error it wraps; get_ref does not.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return format!("TLS: {tls}");
        }
        next = e.source();
    }
    error.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tls(ca: &str, cert: &str, key: &str) -> TlsConfig {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        TlsConfig {
            enabled: true,
            ca_file: some(ca),
            cert_file: some(cert),
            key_file: some(key),
        }
    }

    #[test]
    fn settings_are_checked_without_reading_files() {
        assert!(TlsConfig::default().problems("mqtt.tls").is_empty());
        assert!(tls("/etc/ca.pem", "", "").problems("mqtt.tls").is_empty());
        let p = tls("", "/c.pem", "").problems("mqtt.tls");
        assert!(p[0].starts_with("mqtt.tls.ca_file is required"), "{p:?}");
        assert!(p[1].starts_with("mqtt.tls.cert_file and"), "{p:?}");
        let off = TlsConfig {
            enabled: false,
            ..tls("/etc/ca.pem", "", "")
        };
        let p = off.problems("broker.tls");
        assert!(p[0].contains("broker.tls.enabled is false"), "{p:?}");
    }

    #[test]
    fn unusable_files_are_named() {
        let failure = |c: TlsConfig| c.transport().err().unwrap().to_string();
        let e = failure(tls("/nonexistent/ca.pem", "", ""));
        assert!(e.starts_with("ca_file \"/nonexistent/ca.pem\": "), "{e}");
        let empty = std::env::temp_dir().join(format!("iot-mqtt-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = failure(tls(&empty.to_string_lossy(), "", ""));
        std::fs::remove_file(&empty).unwrap();
        assert!(e.ends_with("holds no certificate"), "{e}");
        assert!(matches!(
            TlsConfig::default().transport().unwrap(),
            Transport::Tcp
        ));
    }

    #[test]
    fn errors_name_the_link_and_unwrap_tls_failures() {
        let link = Link::new("127.0.0.1", 8883);
        let verdict = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped =
            rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::other(verdict)));
        assert_eq!(
            link.error(&wrapped).to_string(),
            "MQTT broker 127.0.0.1:8883: TLS: invalid peer certificate: UnknownIssuer"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            link.error(&refused).to_string(),
            "MQTT broker 127.0.0.1:8883: connection refused"
        );
    }
}
