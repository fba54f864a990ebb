//! `cargo xtask deploy-check` (also a step of `cargo xtask test`): what can
//! be checked of the deployment files without Docker or a cluster.
//! - The Helm chart (`k8s/charts/iot-platform`) passes `helm lint --strict`
//!   with its default values and with `values-production.yaml`; both are
//!   rendered with `helm template` and `deploy/check/validate_chart.py`
//!   validates every object strictly against the Kubernetes schemas
//!   (kubernetes-validate; the CRD kinds it has no schema for get structural
//!   checks) and checks Pod Security "restricted", autoscaled workloads
//!   without `replicas`, the migration hook, the monitoring toggles, the
//!   metric names and that the chart README documents every value.
//! - The values schema refuses a bad value (a string for replicas).
//! - docker-compose.yml is validated against the Compose specification's
//!   JSON schema (`deploy/check/validate_compose.py`).
//!
//! The Python tools are pinned and installed into a venv in the cache
//! directory on first use; so is helm (helm.rs).

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
const CHART: &str = "k8s/charts/iot-platform";
/// The renderings checked: name, extra values file, whether the monitoring
/// objects are on.
const CASES: [(&str, Option<&str>, bool); 2] = [
    ("default", None, false),
    ("production", Some("values-production.yaml"), true),
];

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

/// pyarrow for the tests that read ingest-writer's archive files as data
/// engineers' tools do; moto's S3 server for the archive's S3 store test.
const DATA_PACKAGES: [&str; 2] = ["pyarrow==26.0.1", "moto[server]==5.2.6"];

/// The Python of a venv holding [`DATA_PACKAGES`]; created when missing.
pub fn ensure_data_python() -> Result<PathBuf> {
    let venv = paths::cache_dir().join("venv-data");
    let stamp = venv.join("installed.txt");
    let want = DATA_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        println!("installing {} into {}", want, venv.display());
        if proc::run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).is_err() {
            crate::stack::apt_install(&["python3", "python3-venv"])?;
            proc::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        proc::run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(DATA_PACKAGES),
        )?;
        std::fs::write(&stamp, want).map_err(|e| e.to_string())?;
    }
    Ok(venv.join("bin/python"))
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
    let helm = crate::helm::ensure_helm(&venv.join("bin/python"))?;
    let repo = paths::repo();
    let chart = repo.join(CHART);
    let out_dir = paths::target_dir().join("deploy-check");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let mut rendered = Vec::new();
    for (case, values, monitoring) in CASES {
        let values_args = || -> Vec<PathBuf> {
            values
                .map(|v| vec![PathBuf::from("--values"), chart.join(v)])
                .unwrap_or_default()
        };
        proc::run(
            Command::new(&helm)
                .args(["lint", "--strict", "--quiet"])
                .arg(&chart)
                .args(values_args()),
        )?;
        let out = Command::new(&helm)
            .args(["template", "iot", "--namespace", "iot-platform"])
            .arg(&chart)
            .args(values_args())
            .output()
            .map_err(|e| format!("helm template: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "helm template {CHART} ({case} values): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let file = out_dir.join(format!("chart-{case}.yaml"));
        std::fs::write(&file, &out.stdout).map_err(|e| e.to_string())?;
        let mut arg = file.into_os_string();
        arg.push(if monitoring { "=on" } else { "=off" });
        rendered.push(arg);
        println!("{CHART}: helm lint --strict passed ({case} values)");
    }
    proc::run(
        Command::new(venv.join("bin/python"))
            .arg(repo.join("deploy/check/validate_chart.py"))
            .arg(&chart)
            .args(&rendered),
    )?;
    // The schema is what stops a bad value; make sure it does.
    let bad = Command::new(&helm)
        .args(["template", "iot"])
        .arg(&chart)
        .args(["--set", "deviceRegistry.replicas=two"])
        .output()
        .map_err(|e| format!("helm template: {e}"))?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    if bad.status.success() || !stderr.contains("/deviceRegistry/replicas") {
        return Err(format!(
            "values.schema.json let deviceRegistry.replicas=two through: {stderr}"
        ));
    }
    println!("{CHART}: values.schema.json refuses deviceRegistry.replicas=two");
    let schema = compose_schema(&venv)?;
    proc::run(
        Command::new(venv.join("bin/python"))
            .arg(repo.join("deploy/check/validate_compose.py"))
            .arg(&schema)
            .arg(repo.join("docker-compose.yml")),
    )?;
    Ok(())
}
