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
    proc::run(Command::new("npm").args(["run", "build"]).current_dir(&dir))
}

/// node_modules is missing, or older than the lockfile.
fn stale(dir: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
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
