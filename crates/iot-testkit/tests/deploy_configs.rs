//! docker-compose.yml and k8s/ are not run on our machines (no Docker, no
//! cluster), so this checks what can be checked here: every environment
//! variable they give a service is a setting that service's config accepts
//! (its loader refuses unknown keys and reports invalid values), every file
//! compose mounts exists, and compose publishes only the public ports on
//! every interface.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iot_runtime::ServiceConfig;
use serde::Deserialize as _;
use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut v = Value::deserialize(d).unwrap();
            v.apply_merge().unwrap();
            v
        })
        .collect()
}

/// Loads the service's config with exactly `env` set; the error names what
/// the service would refuse at start.
// figment's Jail fixes the closure's error type.
#[allow(clippy::result_large_err)]
fn load(service: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    let mut outcome = Ok(());
    figment::Jail::expect_with(|jail| {
        for (k, v) in env {
            jail.set_env(k, v);
        }
        let loaded = match service {
            "device-registry" => device_registry::Config::load(None).map(drop),
            "ingest-writer" => ingest_writer::Config::load(None).map(drop),
            "alert-engine" => alert_engine::Config::load(None).map(drop),
            "mqtt-gateway" => mqtt_gateway::Config::load(None).map(drop),
            "graphql-gateway" => graphql_gateway::Config::load(None).map(drop),
            other => panic!("unknown service {other}"),
        };
        outcome = loaded.map_err(|e| e.to_string());
        Ok(())
    });
    outcome
}

/// The variables of `deploy/compose/example.env`, the secrets compose
/// requires.
fn example_env() -> BTreeMap<String, String> {
    std::fs::read_to_string(repo().join("deploy/compose/example.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Compose's interpolation with the variables of `env` set: `${VAR:-d}`
/// is VAR or d, `${VAR:?message}` is VAR (which must be set: compose
/// refuses to start without it), `$$` is `$`.
fn interpolate(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(braced) = rest.strip_prefix("${") else {
            panic!("unbraced variable in {s:?}");
        };
        let end = braced.find('}').expect("closing }");
        let inner = &braced[..end];
        if let Some((var, default)) = inner.split_once(":-") {
            out.push_str(env.get(var).map_or(default, String::as_str));
        } else if let Some((var, _message)) = inner.split_once(":?") {
            let v = env
                .get(var)
                .unwrap_or_else(|| panic!("${{{var}:?}} is not in deploy/compose/example.env"));
            out.push_str(v);
        } else {
            out.push_str(env.get(inner).map_or("", String::as_str));
        }
        rest = &braced[end + 1..];
    }
    out.push_str(rest);
    out
}

fn prefix(service: &str) -> String {
    format!("{}__", service.to_uppercase().replace('-', "_"))
}

#[test]
fn compose_gives_each_service_settings_it_accepts() {
    let compose = yaml_docs(&repo().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_mapping().unwrap();
    let secrets = example_env();
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        // Only GraphQL and MQTT are published on every interface.
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:") || ["8080:8080", "1883:1883"].contains(&port),
                "{name} publishes {port} on every interface"
            );
        }
        // Every file or folder compose mounts from the repository exists.
        for vol in svc["volumes"].as_sequence().into_iter().flatten() {
            let vol = vol.as_str().unwrap();
            if let Some(local) = vol.strip_prefix("./") {
                let local = local.split(':').next().unwrap();
                assert!(repo().join(local).exists(), "{name} mounts missing {local}");
            }
        }
        let Some(cmd) = svc["command"].as_sequence().and_then(|c| c.first()) else {
            continue;
        };
        let service = cmd.as_str().unwrap();
        // The migration job and the observability stack are not ours.
        if ![
            "device-registry",
            "ingest-writer",
            "alert-engine",
            "mqtt-gateway",
            "graphql-gateway",
        ]
        .contains(&service)
        {
            continue;
        }
        let env: BTreeMap<String, String> = svc["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), interpolate(&v, &secrets))
            })
            .filter(|(k, _)| k.starts_with(&prefix(service)))
            .collect();
        assert!(!env.is_empty(), "{name}: no {} settings", prefix(service));
        load(service, &env).unwrap_or_else(|e| panic!("compose service {name}: {e}"));
        checked += 1;
    }
    assert_eq!(checked, 5, "all five services are in compose");
}

/// Compose refuses to start without its secrets: none has a default.
#[test]
fn compose_requires_its_secrets() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let secrets = example_env();
    assert!(!secrets.is_empty());
    for var in secrets.keys() {
        assert!(
            text.contains(&format!("${{{var}:?")),
            "{var} is not required (${{{var}:?...}}) in docker-compose.yml"
        );
        assert!(
            !text.contains(&format!("${{{var}:-")),
            "{var} has a default in docker-compose.yml"
        );
    }
    let empty = BTreeMap::new();
    assert_eq!(interpolate("a$$b-${X:-d}", &empty), "a$b-d");
}

/// The objects `kubectl kustomize` renders for an overlay.
fn kustomize(overlay: &str) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("k8s/overlays").join(overlay))
        .output()
        .expect("kubectl renders the k8s overlays (kubectl must be installed)");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn k8s_gives_each_service_settings_it_accepts() {
    for overlay in ["dev", "prod"] {
        let docs = kustomize(overlay);
        check_k8s(overlay, &docs);
        // Labels a ServiceMonitor and the NetworkPolicies select on.
        for d in docs.iter().filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "Service" | "PodDisruptionBudget")
            )
        }) {
            assert_eq!(
                d["metadata"]["labels"]["app.kubernetes.io/part-of"], "iot-platform",
                "{overlay}: {:?}",
                d["metadata"]["name"]
            );
        }
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for (kind, n) in [
            ("Deployment", 4),
            ("StatefulSet", 1),
            ("PodDisruptionBudget", 5),
            ("HorizontalPodAutoscaler", 4),
            ("Job", 1),
        ] {
            assert_eq!(
                kinds.iter().filter(|k| **k == kind).count(),
                n,
                "{overlay}: {kind}"
            );
        }
        assert!(kinds.contains(&"NetworkPolicy"), "{overlay}");
    }
}

/// Every Deployment's environment loads as its service's config. Values
/// from Secrets the overlay leaves to the operator (prod) are stand-ins.
fn check_k8s(overlay: &str, docs: &[Value]) {
    // ConfigMap and Secret values, by (name, key).
    let mut values: BTreeMap<(String, String), String> = BTreeMap::new();
    for d in docs {
        if matches!(d["kind"].as_str(), Some("ConfigMap" | "Secret")) {
            let name = d["metadata"]["name"].as_str().unwrap().to_owned();
            for field in ["data", "stringData"] {
                for (k, v) in d[field].as_mapping().into_iter().flatten() {
                    values.insert(
                        (name.clone(), k.as_str().unwrap().to_owned()),
                        v.as_str().unwrap().to_owned(),
                    );
                }
            }
        }
    }
    let mut checked = 0;
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let service = c["command"][0].as_str().unwrap();
            let mut env = BTreeMap::new();
            for e in c["env"].as_sequence().unwrap() {
                let name = e["name"].as_str().unwrap().to_owned();
                let value = if let Some(v) = e["value"].as_str() {
                    v.to_owned()
                } else {
                    let from = &e["valueFrom"];
                    let r = if from["configMapKeyRef"].is_mapping() {
                        &from["configMapKeyRef"]
                    } else {
                        &from["secretKeyRef"]
                    };
                    if from["fieldRef"].is_mapping() {
                        // What the kubelet fills in: the pod's index for
                        // the StatefulSet's ordinal label, else its name.
                        let path = from["fieldRef"]["fieldPath"].as_str().unwrap();
                        if path.contains("pod-index") {
                            "0".to_owned()
                        } else {
                            "pod-0".to_owned()
                        }
                    } else {
                        let key = (
                            r["name"].as_str().unwrap().to_owned(),
                            r["key"].as_str().unwrap().to_owned(),
                        );
                        match values.get(&key) {
                            Some(v) => v.clone(),
                            // An optional key the overlay leaves out: unset.
                            None if r["optional"].as_bool() == Some(true) => continue,
                            None if overlay == "prod" && from["secretKeyRef"].is_mapping() => {
                                if key.1 == "url" {
                                    "postgres://iot:secret@db.example.internal/iot".to_owned()
                                } else {
                                    "operator-secret".to_owned()
                                }
                            }
                            None => {
                                panic!("{overlay} {service}: {key:?} is in no ConfigMap or Secret")
                            }
                        }
                    }
                };
                if name.starts_with(&prefix(service)) {
                    env.insert(name, value);
                }
            }
            load(service, &env).unwrap_or_else(|e| panic!("k8s {overlay} {service}: {e}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 5, "all five services are in k8s {overlay}");
}
