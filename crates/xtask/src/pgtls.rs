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
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            days,
            "-extfile",
            "server.ext",
        ])?;
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
    let sql = |q: &str| -> Result<String> {
        let out = Command::new("psql")
            .arg(admin_url)
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
    };
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
