//! TLS for the local PostgreSQL: a CA and a server certificate of the
//! machine's own, made at set-up (no key is committed), and the server
//! told to use them. Services and tests reach it with
//! `sslmode=verify-full&sslrootcert=<ca.pem>`; plain connections still
//! work, as every URL without `sslmode` asks. Mosquitto's TLS listener
//! serves the same certificate ([`broker_files`]), and clients trust the
//! same `ca.pem`.

use std::path::PathBuf;
use std::process::Command;

use crate::paths;
use crate::proc::{self, Result};

/// Where the certificates live: readable by the `postgres` user (the cache
/// folder under `/root` is not).
pub fn dir() -> PathBuf {
    paths::pg_data()
        .parent()
        .map_or_else(|| PathBuf::from("/var/lib/iot-platform"), PathBuf::from)
        .join("tls")
}

/// The certificate and key a local broker serves TLS with (the server's
/// certificate, for `localhost` and 127.0.0.1, and a copy of its key that
/// PostgreSQL does not own). Call after [`ensure`] made them.
pub fn broker_files() -> Result<(PathBuf, PathBuf)> {
    let dir = dir();
    let (cert, key) = (dir.join("server.pem"), dir.join("broker.key"));
    if !cert.exists() {
        return Err(format!(
            "{} is missing: the local CA was not made",
            cert.display()
        ));
    }
    // A folder made before brokers used it may lack the copy.
    if !key.exists() {
        std::fs::copy(dir.join("server.key"), &key).map_err(|e| e.to_string())?;
        proc::run(Command::new("chmod").arg("600").arg(&key))?;
    }
    Ok((cert, key))
}

fn openssl(args: &[&str]) -> Result<()> {
    proc::run(Command::new("openssl").args(args).current_dir(dir()))
}

/// A key (`key`) and a certificate (`cert`) for `subject` from the local
/// CA, with the extensions in `ext` (paths relative to [`dir`] or absolute);
/// the request is left beside the key as `<key>.csr`.
fn issue(key: &str, cert: &str, subject: &str, ext: &str) -> Result<()> {
    let csr = format!("{}.csr", key.trim_end_matches(".key"));
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        &csr,
        "-subj",
        subject,
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "3650",
        "-extfile",
        ext,
    ])
}

/// Makes the CA and the server's certificate (for `localhost` and
/// 127.0.0.1) once, then has the server on `admin_url` use them.
pub fn ensure(admin_url: &str) -> Result<()> {
    let dir = dir();
    let made = !dir.join("server.pem").exists();
    if made {
        if !proc::have("openssl") {
            crate::stack::apt_install(&["openssl"])?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
             extendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n",
        )
        .map_err(|e| e.to_string())?;
        let days = "3650";
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            days,
            "-subj",
            "/CN=iot-platform local CA",
        ])?;
        issue("server.key", "server.pem", "/CN=localhost", "server.ext")?;
        // Brokers (Mosquitto's TLS listener, Kafka brokers of the tests)
        // serve the same certificate, with a copy of the key that
        // PostgreSQL does not own.
        std::fs::copy(dir.join("server.key"), dir.join("broker.key")).map_err(|e| e.to_string())?;
        // The server refuses a key others can read; nobody needs the CA's.
        proc::run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.join("server.key")),
        )?;
        proc::run(
            Command::new("chmod")
                .args(["600", "server.key", "ca.key"])
                .current_dir(&dir),
        )?;
        println!(
            "postgres: made a local CA and server certificate in {}",
            dir.display()
        );
    }
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    // A server this set-up reuses may have come without its client.
    if !proc::have("psql") {
        crate::stack::apt_install(&["postgresql-client"])?;
    }
    let sql = |q: &str| {
        Command::new("psql")
            .arg(admin_url)
            .args(["-qAtc", q])
            .output()
            .map_err(|e| format!("psql: {e}"))
    };
    let current = sql("SHOW ssl_cert_file")?;
    // New files under the same names need a reload as much as new names.
    if made || String::from_utf8_lossy(&current.stdout).trim() != cert.display().to_string() {
        for q in [
            "ALTER SYSTEM SET ssl = on".to_owned(),
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            let out = sql(&q)?;
            if !out.status.success() {
                return Err(format!(
                    "postgres TLS ({q}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        // The reload is applied by the postmaster shortly after.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = sql("SHOW ssl_cert_file")?;
        if String::from_utf8_lossy(&now.stdout).trim() != cert.display().to_string() {
            return Err("postgres did not take the local certificate (see its log)".into());
        }
        println!("postgres: serving TLS with {}", cert.display());
    }
    Ok(())
}

/// The role of the TLS-required test run, and the line of `pg_hba.conf`
/// that refuses it any connection without TLS (first, so that it wins).
pub const TLS_ROLE: &str = "iot_tls";
const TLS_ONLY: &str = "hostnossl all iot_tls all reject";

/// Makes the role the TLS-required run connects as, which the server
/// accepts over TLS only: PostgreSQL's `hostssl`-only access for the run,
/// while every other role keeps the server's own rules.
pub fn ensure_tls_role(admin_url: &str) -> Result<()> {
    let sql = |q: &str| psql(admin_url, q);
    sql(&format!(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TLS_ROLE}') \
         THEN CREATE ROLE {TLS_ROLE} LOGIN SUPERUSER PASSWORD '{TLS_ROLE}'; END IF; END$$"
    ))?;
    let hba = PathBuf::from(sql("SHOW hba_file")?);
    let rules = std::fs::read_to_string(&hba).map_err(|e| format!("{}: {e}", hba.display()))?;
    if !rules.lines().any(|l| l.trim() == TLS_ONLY) {
        std::fs::write(
            &hba,
            format!("# cargo xtask: the TLS-required test run\n{TLS_ONLY}\n{rules}"),
        )
        .map_err(|e| format!("{}: {e}", hba.display()))?;
        sql("SELECT pg_reload_conf()")?;
        // The postmaster applies the reload shortly after.
        std::thread::sleep(std::time::Duration::from_millis(500));
        println!(
            "postgres: {TLS_ROLE} connects over TLS only ({})",
            hba.display()
        );
    }
    Ok(())
}

/// The gRPC identities of the local stack: its five services and the
/// operator's `iotctl`.
pub const GRPC_IDENTITIES: [&str; 6] = [
    "device-registry",
    "ingest-writer",
    "alert-engine",
    "mqtt-gateway",
    "graphql-gateway",
    "iotctl",
];

/// Where the local stack's gRPC certificates live.
pub fn grpc_dir() -> PathBuf {
    dir().join("grpc")
}

/// Makes, once, a certificate from the local CA for each of
/// [`GRPC_IDENTITIES`] (its common name; `localhost` and 127.0.0.1; server
/// and client use), so that `cargo xtask up` runs gRPC over mTLS.
pub fn ensure_grpc_certs() -> Result<()> {
    let grpc = grpc_dir();
    std::fs::create_dir_all(&grpc).map_err(|e| e.to_string())?;
    let ext = grpc.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         extendedKeyUsage = serverAuth, clientAuth\nbasicConstraints = CA:FALSE\n",
    )
    .map_err(|e| e.to_string())?;
    for name in GRPC_IDENTITIES {
        let (cert, key) = (
            grpc.join(format!("{name}.pem")),
            grpc.join(format!("{name}.key")),
        );
        if cert.exists() {
            continue;
        }
        let text = |p: &PathBuf| p.display().to_string();
        issue(
            &text(&key),
            &text(&cert),
            &format!("/CN={name}"),
            &text(&ext),
        )?;
        proc::run(Command::new("chmod").arg("600").arg(&key))?;
        println!("grpc: made a certificate for {name} in {}", grpc.display());
    }
    Ok(())
}

/// The `grpc_tls` environment of `name` (a service's variables, or
/// `iotctl`'s `IOT_GRPC_*`).
pub fn grpc_env(name: &str) -> Vec<(String, PathBuf)> {
    let grpc = grpc_dir();
    let files = [
        ("CERT", grpc.join(format!("{name}.pem"))),
        ("KEY", grpc.join(format!("{name}.key"))),
        ("CA", dir().join("ca.pem")),
    ];
    let prefix = if name == "iotctl" {
        "IOT_GRPC_".to_owned()
    } else {
        format!("{}__GRPC_TLS__", name.to_uppercase().replace('-', "_"))
    };
    files
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// Runs `q` on the server at `url` through `psql`: its output, trimmed.
pub fn psql(url: &str, q: &str) -> Result<String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-qAtc", q])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "postgres ({q}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
