//! The web console (`console/`): its npm packages, its checks (TypeScript
//! and its GraphQL operations against the committed schema) and its build
//! into `console/dist`, which graphql-gateway embeds when it is built; and
//! the Chromium its browser test drives.

use std::path::Path;
use std::process::Command;

use crate::proc::{self, Result};
use crate::{paths, stack};

/// `cargo xtask console`: install the console's packages when the lockfile
/// changed, check it and build it.
pub fn build() -> Result<()> {
    if !proc::have("npm") {
        stack::apt_install(&["npm"])?;
    }
    let dir = paths::repo().join("console");
    if stale(&dir) {
        // `npm ci` reuses the download cache in ~/.npm; no package runs
        // install scripts (none needs one).
        proc::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(&dir),
        )?;
    }
    proc::run(Command::new("npm").args(["run", "check"]).current_dir(&dir))?;
    // A build rewrites dist, and so makes graphql-gateway (and all that
    // depends on it) build again: only when the sources changed.
    if built_after_sources(&dir) {
        eprintln!("console/dist is newer than the console's sources");
        return Ok(());
    }
    proc::run(Command::new("npm").args(["run", "build"]).current_dir(&dir))
}

/// console/dist/index.html is newer than every file the build reads
/// (src/, index.html, the configs, the lockfile).
fn built_after_sources(dir: &Path) -> bool {
    let Some(built) = modified(&dir.join("dist/index.html")) else {
        return false;
    };
    let mut sources = vec![
        dir.join("index.html"),
        dir.join("vite.config.ts"),
        dir.join("tsconfig.json"),
        dir.join("package-lock.json"),
    ];
    let mut dirs = vec![dir.join("src")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                sources.push(p);
            }
        }
    }
    sources
        .iter()
        .all(|p| modified(p).is_some_and(|m| m <= built))
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// node_modules is missing, or older than the lockfile.
fn stale(dir: &Path) -> bool {
    match (
        modified(&dir.join("node_modules/.package-lock.json")),
        modified(&dir.join("package-lock.json")),
    ) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

/// Debian's Chromium, which the console's browser test drives.
pub fn ensure_chromium() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() {
        return Ok(());
    }
    stack::apt_install(&["chromium", "chromium-driver"])
}
