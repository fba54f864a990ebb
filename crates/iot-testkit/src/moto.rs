//! A moto S3 server (PyPI `moto[server]`, which `cargo xtask test`
//! installs into its data venv beside pyarrow), for the tests of the
//! archive's S3 store: a real S3 API over HTTP, on a port of the test's own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::eventually;

/// The data venv's Python (`IOT_TEST_PYTHON`, set by `cargo xtask test`),
/// with pyarrow and moto.
pub fn python() -> String {
    std::env::var("IOT_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/iot-platform/venv-data/bin/python")
    })
}

/// A moto S3 server on a free port, stopped with the test.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "python with moto[server] (cargo xtask test installs it; or set IOT_TEST_PYTHON)",
            );
        let moto = Self { child, port };
        eventually("moto listens", Duration::from_secs(30), || async {
            (moto.request("GET", "/").await.is_some()).then_some(())
        })
        .await;
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new empty bucket, and the archive's settings for it (prefix
    /// `platform-a`, moto's test credentials, plain HTTP).
    pub async fn new_bucket(&self) -> ingest_writer::archive::S3Config {
        let bucket = format!("iot-archive-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(self.request("PUT", &format!("/{bucket}")).await, Some(200));
        ingest_writer::archive::S3Config {
            bucket,
            prefix: "platform-a".into(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            allow_http: true,
        }
    }

    /// One plain HTTP request (moto takes unsigned ones); the status.
    pub async fn request(&self, method: &str, path: &str) -> Option<u16> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        );
        s.write_all(head.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    }
}
