//! TLS to the real PostgreSQL, which `cargo xtask stack` serves with a
//! certificate of a local CA (`IOT_TEST_PG_CA`): each `sslmode` connects
//! as libpq's does, a certificate of another CA is refused, and pools and
//! migrations go over TLS when the URL asks for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_testkit as kit;

fn ca() -> String {
    std::env::var("IOT_TEST_PG_CA").unwrap_or_else(|_| "/var/lib/iot-platform/tls/ca.pem".into())
}

/// `url` (the test server's) with `params` added.
fn with(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Whether the connection to `url` is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, String> {
    let c = iot_db::connect(url).await.map_err(|e| e.to_string())?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// A CA of nobody's, for a certificate the server does not have.
fn other_ca() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("iot-other-ca-{}", kit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = std::process::Command::new("openssl")
        .args([
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
            "1",
            "-subj",
            "/CN=other",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    dir.join("ca.pem")
}

#[tokio::test]
async fn each_sslmode_connects_as_libpq_does_and_a_wrong_ca_is_refused() {
    let admin = kit::admin_database_url();
    let ca = ca();
    assert!(
        std::path::Path::new(&ca).exists(),
        "{ca}: run cargo xtask stack"
    );
    // Without sslmode: plain. prefer and require: encrypted.
    assert!(!encrypted(&admin).await.unwrap());
    assert!(encrypted(&with(&admin, "sslmode=prefer")).await.unwrap());
    assert!(encrypted(&with(&admin, "sslmode=require")).await.unwrap());
    // Verified against the local CA, by address and by name.
    let full = with(&admin, &format!("sslmode=verify-full&sslrootcert={ca}"));
    assert!(encrypted(&full).await.unwrap());
    let by_name = full.replace("@127.0.0.1:", "@localhost:");
    assert!(encrypted(&by_name).await.unwrap());
    assert!(
        encrypted(&with(
            &admin,
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await
        .unwrap()
    );
    // Another CA's trust is not the server's: refused, whatever the mode
    // that verifies.
    let other = other_ca();
    for mode in ["verify-ca", "verify-full", "require"] {
        let url = with(
            &admin,
            &format!("sslmode={mode}&sslrootcert={}", other.display()),
        );
        let e = encrypted(&url).await.unwrap_err();
        assert!(e.to_lowercase().contains("certificate"), "{mode}: {e}");
    }
    std::fs::remove_dir_all(other.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn pools_and_migrations_go_over_tls_when_asked() {
    let db = kit::empty_database().await;
    let url = with(
        db.url(),
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    iot_db::migrate(&url, iot_db::BackendChoice::Auto)
        .await
        .unwrap();
    let pool = iot_db::pool(&url, 2).unwrap();
    let c = pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT ssl, (SELECT count(*) FROM schema_migrations) FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert!(row.get::<_, i64>(1) > 0);
}
