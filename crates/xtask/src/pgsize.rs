//! The local server's memory, sized the way the shipped compose file's
//! database image sizes its own at first start (`timescaledb-tune`): a
//! quarter of the machine's memory for shared buffers, three quarters as
//! the planner's estimate of the cache. PostgreSQL's own default (128 MB of
//! buffers) is sized for any machine at all; with it a registry of a
//! million devices and the day's raw indexes do not fit, and every batch
//! reads and writes pages through the kernel instead of the buffer pool.

use std::process::Command;
use std::time::Duration;

use crate::proc::{self, Result};

/// The settings for this machine, as `(name, value)`.
pub fn settings() -> Vec<(&'static str, String)> {
    let mb = memory_mb();
    vec![
        ("shared_buffers", format!("{}MB", (mb / 4).max(128))),
        (
            "effective_cache_size",
            format!("{}MB", (mb * 3 / 4).max(512)),
        ),
        ("wal_buffers", "16MB".to_owned()),
    ]
}

/// The settings as `postgres -c` arguments, for a cluster this set-up runs.
pub fn args() -> Vec<String> {
    settings()
        .into_iter()
        .flat_map(|(name, value)| ["-c".to_owned(), format!("{name}={value}")])
        .collect()
}

/// Sizes a server this set-up reuses: `ALTER SYSTEM`, then a restart with
/// `restart` (shared buffers are fixed while the server runs). A server
/// already sized at least as large is left alone.
pub fn ensure(admin_url: &str, restart: Option<String>) -> Result<()> {
    let want = settings();
    let psql = |q: &str| crate::pgtls::psql(admin_url, q);
    let buffers_mb: u64 =
        psql("SELECT setting::int8 * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'")?
            .parse()
            .map_err(|e| format!("postgres shared_buffers: {e}"))?;
    if buffers_mb >= memory_mb() / 4 * 9 / 10 {
        return Ok(());
    }
    for (name, value) in &want {
        psql(&format!("ALTER SYSTEM SET {name} = '{value}'"))?;
    }
    let Some(restart) = restart else {
        eprintln!(
            "postgres: set {want:?}; they take effect when the server on \
             127.0.0.1:{} restarts",
            crate::stack::PG_PORT
        );
        return Ok(());
    };
    proc::run(Command::new("sh").args(["-c", &restart]))?;
    proc::wait_port("postgres", crate::stack::PG_PORT, Duration::from_secs(60))?;
    // The port opens before the server accepts queries.
    for _ in 0..50 {
        if psql("SELECT 1").is_ok() {
            eprintln!("postgres: restarted with {want:?}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("postgres did not come back after sizing its memory (see its log)".into())
}

/// The machine's memory in MB (or its container's limit, if lower, as
/// `timescaledb-tune` reads it), or 1 GB if it cannot be read.
fn memory_mb() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1024, |kb| kb / 1024);
    // cgroup v2, then v1; "max" or an absurd v1 default means no limit.
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
    .map_or(u64::MAX, |bytes| bytes / (1024 * 1024));
    total.min(limit)
}
