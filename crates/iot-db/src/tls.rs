//! TLS to PostgreSQL, as the database URL asks with libpq's parameters:
//! `sslmode` and `sslrootcert` (a CA file in PEM).
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` (the default here) | never | |
//! | `prefer` | when the server offers it | not checked |
//! | `require` | always | checked against `sslrootcert` when given (as libpq) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host |
//!
//! libpq's default is `prefer`; here it is `disable`, so that a URL
//! without `sslmode` keeps a local database on a plain connection, and a
//! managed database says `require` or stronger.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
pub use tokio_postgres_rustls::MakeRustlsConnect;

use crate::DbError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    None,
    Ca,
    Full,
}

/// A database URL, parsed: the connection settings and the TLS connector
/// every connection to it uses.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Parses `url`, taking out `sslmode` and `sslrootcert` (tokio-postgres
/// knows neither `verify-ca` nor `verify-full`, nor CA files), and loads
/// the CA file.
pub fn target(url: &str) -> Result<Target, DbError> {
    let (config, verify, root) = parse(url)?;
    let roots = match &root {
        Some(path) => Some(load_roots(path)?),
        None => None,
    };
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new(client_config(verify, roots)?),
    })
}

/// What `url` asks for, checked without reading any file (a config check
/// on a machine other than the one the service runs on).
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, Verify, Option<String>), DbError> {
    let (rest, mode, root) = split_tls_params(url);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
    let mode = mode.as_deref().unwrap_or("disable");
    let (ssl, verify) = match (mode, root.is_some()) {
        ("disable", _) => (SslMode::Disable, Verify::None),
        ("prefer", _) => (SslMode::Prefer, Verify::None),
        ("require", false) => (SslMode::Require, Verify::None),
        ("require" | "verify-ca", true) => (SslMode::Require, Verify::Ca),
        ("verify-full", true) => (SslMode::Require, Verify::Full),
        ("verify-ca" | "verify-full", false) => {
            return Err(DbError::BadUrl(format!(
                "sslmode={mode} needs sslrootcert=<the CA file, PEM>"
            )));
        }
        (other, _) => {
            return Err(DbError::BadUrl(format!(
                "sslmode={other:?}: use disable, prefer, require, verify-ca or verify-full"
            )));
        }
    };
    config.ssl_mode(ssl);
    Ok((config, verify, root))
}

/// `url` without its `sslmode` and `sslrootcert` query parameters, and
/// their values (percent-decoded).
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(decode(v)),
            Some(("sslrootcert", v)) => root = Some(decode(v)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, mode, root)
}

fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn load_roots(path: &str) -> Result<RootCertStore, DbError> {
    let pem =
        std::fs::read(path).map_err(|e| DbError::BadUrl(format!("sslrootcert {path:?}: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| DbError::BadUrl(format!("sslrootcert {path:?}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| DbError::BadUrl(format!("sslrootcert {path:?}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(DbError::BadUrl(format!(
            "sslrootcert {path:?} holds no certificate"
        )));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(verify: Verify, roots: Option<RootCertStore>) -> Result<ClientConfig, DbError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Pool(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, roots) {
        (Verify::None, _) | (_, None) => Arc::new(Unchecked(provider())),
        (v, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| DbError::BadUrl(format!("sslrootcert: {e}")))?;
            Arc::new(Checked {
                webpki,
                names: v == Verify::Full,
            })
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `prefer` and `require` without a CA: encrypted, the server unverified
/// (libpq does the same); the handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

/// `verify-ca` (the chain only) and `verify-full` (the chain and the name).
#[derive(Debug)]
struct Checked {
    webpki: Arc<WebPkiServerVerifier>,
    names: bool,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // verify-ca: a certificate for another name is still the CA's.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
                if !self.names =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (rest, mode, root) = split_tls_params(
            "postgres://u:p@db:5432/iot?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/iot?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            split_tls_params("postgres://db/iot"),
            ("postgres://db/iot".into(), None, None)
        );
    }

    #[test]
    fn modes_are_checked() {
        assert!(target("postgres://db/iot?sslmode=require").is_ok());
        assert!(target("postgres://db/iot").is_ok());
        let e = target("postgres://db/iot?sslmode=verify-full")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs sslrootcert"), "{e}");
        let e = target("postgres://db/iot?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use disable, prefer"), "{e}");
        let e = target("postgres://db/iot?sslmode=verify-ca&sslrootcert=/nonexistent")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent"), "{e}");
    }
}
