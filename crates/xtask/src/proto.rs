//! `cargo xtask proto-check` (also a step of `cargo xtask test`): the API in
//! `proto/` against buf's rules.
//! - `buf lint`: the STANDARD rules, less the exceptions `proto/buf.yaml`
//!   explains.
//! - `buf breaking`: no change that breaks the wire (and JSON) encoding or
//!   removes an RPC or service, compared with the last released API, an
//!   image committed in `proto/releases/` (see `proto/README.md`).
//!
//! buf is pinned and installed with npm (the `@bufbuild/buf` package ships
//! its binary) into the cache directory on first use.

use std::path::PathBuf;
use std::process::Command;

use crate::paths;
use crate::proc;
use crate::proc::Result;

const BUF_VERSION: &str = "1.75.0";
/// The last released API: what `buf breaking` compares with. Cut a new one
/// when a release ships (proto/README.md).
const RELEASE_IMAGE: &str = "proto/releases/iot-v1-0.1.0.binpb";

fn buf_dir() -> PathBuf {
    paths::cache_dir().join("buf")
}

/// The pinned buf; installed when missing.
fn ensure_buf() -> Result<PathBuf> {
    let dir = buf_dir();
    let bin = dir.join("node_modules/@bufbuild/buf/bin/buf");
    let stamp = dir.join("installed.txt");
    let want = format!("@bufbuild/buf@{BUF_VERSION}");
    if bin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    println!("installing {want} into {}", dir.display());
    proc::npm_install(&dir, "@bufbuild/buf", BUF_VERSION)?;
    // The binary comes in an optional, per-platform package; npm skips one
    // it cannot install without failing, so ask buf itself.
    proc::require_output(&bin, &["--version"], BUF_VERSION)?;
    std::fs::write(&stamp, want).map_err(|e| e.to_string())?;
    Ok(bin)
}

pub fn check() -> Result<()> {
    let buf = ensure_buf()?;
    let repo = paths::repo();
    // Paths relative to the repository, so that buf names files as
    // proto/iot/v1/...
    let buf_cmd = || {
        let mut c = Command::new(&buf);
        c.current_dir(&repo);
        c
    };
    proc::run(buf_cmd().args(["lint", "proto"]))
        .map_err(|e| format!("{e}\nbuf lint: see the problems above and proto/buf.yaml"))?;
    println!("proto: buf lint passed (STANDARD, with proto/buf.yaml's exceptions)");
    proc::run(buf_cmd().args(["breaking", "proto", "--against", RELEASE_IMAGE])).map_err(|e| {
        format!(
            "{e}\nbuf breaking: the changes above break clients of the released API \
             ({RELEASE_IMAGE}); see proto/README.md"
        )
    })?;
    println!("proto: buf breaking passed against {RELEASE_IMAGE}");
    Ok(())
}
