//! `cargo xtask deploy-check` (also a step of `cargo xtask test`): what can
//! be checked of the deployment files without Docker or a cluster.
//! - Both k8s overlays are rendered with `kubectl kustomize` and every
//!   object is validated, strictly (unknown fields fail), against the
//!   Kubernetes schemas with kubernetes-validate.
//! - docker-compose.yml is validated against the Compose specification's
//!   JSON schema (`deploy/check/validate_compose.py`).
//!
//! The Python tools are pinned and installed into a venv in the cache
//! directory on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;
use crate::proc;
use crate::proc::Result;

const PACKAGES: [&str; 3] = [
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "PyYAML==6.0.4",
];
/// Carries the Compose specification's schema (compose/config/compose_spec.json).
const COMPOSE_WHEEL: &str = "docker-compose==1.29.2";
const OVERLAYS: [&str; 2] = ["dev", "prod"];

fn venv() -> PathBuf {
    paths::cache_dir().join("venv")
}

/// The venv with the pinned tools; created when missing.
fn ensure_tools() -> Result<PathBuf> {
    let venv = venv();
    let stamp = venv.join("installed.txt");
    let want = PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        println!("installing {} into {}", PACKAGES.join(", "), venv.display());
        if !proc::have("python3") {
            crate::stack::apt_install(&["python3", "python3-venv"])?;
        }
        if proc::run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).is_err() {
            // Debian's python3 keeps venv in a package of its own.
            crate::stack::apt_install(&["python3-venv"])?;
            proc::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        proc::run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(PACKAGES),
        )?;
        std::fs::write(&stamp, want).map_err(|e| e.to_string())?;
    }
    Ok(venv)
}

/// The Compose specification's JSON schema, extracted once from the
/// docker-compose wheel.
fn compose_schema(venv: &Path) -> Result<PathBuf> {
    let schema = venv.join("compose_spec.json");
    if !schema.exists() {
        let wheels = venv.join("wheels");
        proc::run(
            Command::new(venv.join("bin/pip"))
                .args([
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--disable-pip-version-check",
                ])
                .arg(COMPOSE_WHEEL)
                .arg("-d")
                .arg(&wheels),
        )?;
        proc::run(Command::new(venv.join("bin/python")).args([
            "-c",
            "import glob, sys, zipfile\n\
             w = glob.glob(sys.argv[1] + '/docker_compose-*.whl')[0]\n\
             open(sys.argv[2], 'wb').write(zipfile.ZipFile(w).read('compose/config/compose_spec.json'))",
        ]).arg(&wheels).arg(&schema))?;
    }
    Ok(schema)
}

pub fn check() -> Result<()> {
    let venv = ensure_tools()?;
    let repo = paths::repo();
    let out_dir = paths::target_dir().join("deploy-check");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    for overlay in OVERLAYS {
        let rendered = Command::new("kubectl")
            .arg("kustomize")
            .arg(repo.join("k8s/overlays").join(overlay))
            .output()
            .map_err(|e| format!("kubectl kustomize (is kubectl installed?): {e}"))?;
        if !rendered.status.success() {
            return Err(format!(
                "kubectl kustomize k8s/overlays/{overlay}: {}",
                String::from_utf8_lossy(&rendered.stderr)
            ));
        }
        let file = out_dir.join(format!("k8s-{overlay}.yaml"));
        std::fs::write(&file, &rendered.stdout).map_err(|e| e.to_string())?;
        proc::run(
            Command::new(venv.join("bin/kubernetes-validate"))
                .args(["--strict", "--quiet"])
                .arg(&file),
        )?;
        let objects = String::from_utf8_lossy(&rendered.stdout)
            .lines()
            .filter(|l| l.starts_with("kind: "))
            .count();
        println!("k8s/overlays/{overlay}: {objects} objects valid (kubernetes-validate --strict)");
    }
    let schema = compose_schema(&venv)?;
    proc::run(
        Command::new(venv.join("bin/python"))
            .arg(repo.join("deploy/check/validate_compose.py"))
            .arg(&schema)
            .arg(repo.join("docker-compose.yml")),
    )?;
    Ok(())
}
