//! Where things live: the repository, the run folder (logs, pids, state of
//! what we started) and the cache outside the clone (Tansu, build output).

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// `$IOT_RUN_DIR`, default `<repo>/.run`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("IOT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".run"))
}

/// `$IOT_CACHE_DIR`, default `~/.cache/iot-platform`: survives clones.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IOT_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/iot-platform")
}

/// Build output shared by every clone on this machine, unless the caller
/// chose one.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("target"))
}

pub fn tansu_bin() -> PathBuf {
    cache_dir().join("tansu/bin/tansu")
}

/// Our own PostgreSQL cluster, used only when none listens on 5432. It lives
/// outside the run folder because the `postgres` user must own it.
pub fn pg_data() -> PathBuf {
    PathBuf::from("/var/lib/iot-platform/postgres")
}
