//! docker-compose.yml and the Helm chart (k8s/charts/iot-platform) are not
//! run on our machines (no Docker, no cluster), so this checks what can be
//! checked here: every environment variable they give a service is a
//! setting that service's config accepts (its loader refuses unknown keys
//! and reports invalid values), every file compose mounts exists, and
//! compose publishes only the public ports on every interface. The chart
//! is rendered with the pinned helm that `cargo xtask deploy-check`
//! installs (which also validates the rendered objects themselves).

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
    let examples = example_env();
    // The example values are placeholders the services refuse; an
    // operator's own values (stand-ins here) pass.
    let secrets: BTreeMap<String, String> = examples
        .keys()
        .map(|k| {
            let v = match k.as_str() {
                "GRAPHQL_API_KEY_SHA256" => "a".repeat(64),
                "GRAPHQL_JWT_AUDIENCE" => "iot-platform".into(),
                _ => format!("own-{}-{}", k.to_lowercase(), "x".repeat(32)),
            };
            (k.clone(), v)
        })
        .collect();
    let mut checked = 0;
    let mut refused = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        // Only GraphQL and MQTT over TLS are published on every interface.
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:") || ["8080:8080", "8883:8883"].contains(&port),
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
        let env_with = |values: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            svc["environment"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                    };
                    (k.as_str().unwrap().to_owned(), interpolate(&v, values))
                })
                .filter(|(k, _)| k.starts_with(&prefix(service)))
                .collect()
        };
        let env = env_with(&secrets);
        assert!(!env.is_empty(), "{name}: no {} settings", prefix(service));
        load(service, &env).unwrap_or_else(|e| panic!("compose service {name}: {e}"));
        checked += 1;
        // With example.env as it ships, every service that takes one of
        // its secrets refuses to start.
        if let Err(e) = load(service, &env_with(&examples)) {
            assert!(
                e.contains("placeholder") || e.contains("local development key"),
                "{name}: {e}"
            );
            refused += 1;
        }
    }
    assert_eq!(checked, 5, "all five services are in compose");
    assert_eq!(
        refused, 5,
        "every service refuses example.env's placeholders"
    );
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

/// The pinned helm `cargo xtask deploy-check` installs.
fn helm() -> PathBuf {
    if let Some(h) = std::env::var_os("IOT_HELM") {
        return PathBuf::from(h);
    }
    let cache = std::env::var_os("IOT_CACHE_DIR").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/iot-platform")
        },
        PathBuf::from,
    );
    cache.join("helm/bin/helm")
}

/// The objects `helm template` renders with the chart's values and
/// `values` (a file in the chart's folder).
fn render(values: Option<&str>) -> Vec<Value> {
    let chart = repo().join("k8s/charts/iot-platform");
    let helm = helm();
    assert!(
        helm.exists(),
        "no helm at {}: run `cargo xtask deploy-check` once (it installs the pinned helm)",
        helm.display()
    );
    let mut cmd = std::process::Command::new(&helm);
    cmd.args(["template", "iot", "--namespace", "iot-platform"])
        .arg(&chart);
    if let Some(v) = values {
        cmd.arg("--values").arg(chart.join(v));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn chart_gives_each_service_settings_it_accepts() {
    for values in [None, Some("values-production.yaml")] {
        let docs = render(values);
        let envs = chart_envs(&docs);
        assert_eq!(
            envs.keys().cloned().collect::<Vec<_>>(),
            [
                "alert-engine",
                "device-registry",
                "graphql-gateway",
                "ingest-writer",
                "mqtt-gateway"
            ],
            "{values:?}"
        );
        for (service, env) in &envs {
            load(service, env).unwrap_or_else(|e| panic!("chart {values:?} {service}: {e}"));
        }
        // Every object carries the labels the NetworkPolicies and the
        // ServiceMonitor select on.
        for d in &docs {
            assert_eq!(
                d["metadata"]["labels"]["app.kubernetes.io/part-of"], "iot-platform",
                "{values:?}: {:?} {:?}",
                d["kind"], d["metadata"]["name"]
            );
        }
        // mqtt-gateway's replica count and the replicas setting agree.
        let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
        assert_eq!(
            envs["mqtt-gateway"]["MQTT_GATEWAY__MQTT__REPLICAS"],
            sts["spec"]["replicas"].as_u64().unwrap().to_string()
        );
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(count("Deployment"), 4, "{values:?}");
        assert_eq!(count("StatefulSet"), 1, "{values:?}");
        assert_eq!(count("PodDisruptionBudget"), 5, "{values:?}");
        assert_eq!(count("Job"), 1, "{values:?}");
        assert_eq!(
            count("HorizontalPodAutoscaler") + count("ScaledObject"),
            4,
            "{values:?}: every Deployment is autoscaled"
        );
    }
}

/// What the production example sets reaches the services' configs: Kafka
/// security through the pass-through properties (the SASL credentials
/// expanded from the Secret), the topics' replication, TLS in the
/// database URL.
#[test]
fn chart_production_settings_reach_the_configs() {
    let envs = chart_envs(&render(Some("values-production.yaml")));
    // figment's Jail fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    let loaded = |service: &str| {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in &envs[service] {
                jail.set_env(k, v);
            }
            out = Some(match service {
                "ingest-writer" => {
                    let c = ingest_writer::Config::load(None).unwrap();
                    (c.kafka, c.database_url)
                }
                "alert-engine" => {
                    let c = alert_engine::Config::load(None).unwrap();
                    (c.kafka, c.database_url)
                }
                other => panic!("{other}"),
            });
            Ok(())
        });
        out.unwrap()
    };
    for service in ["ingest-writer", "alert-engine"] {
        let (kafka, database_url) = loaded(service);
        assert_eq!(kafka.replication, 3, "{service}");
        assert_eq!(kafka.min_insync_replicas, Some(2), "{service}");
        assert_eq!(kafka.partitions, 12, "{service}");
        let p = &kafka.properties;
        assert_eq!(p["security.protocol"], "SASL_SSL", "{service}");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512", "{service}");
        assert_eq!(p["sasl.username"], "secret-iot-kafka-username", "{service}");
        assert_eq!(p["sasl.password"], "secret-iot-kafka-password", "{service}");
        assert!(
            database_url.ends_with("?sslmode=verify-full&sslrootcert=/etc/iot/postgresql/ca.crt")
                && database_url.contains(":secret-iot-database-password@"),
            "{service}: {database_url}"
        );
    }
}

/// Each service's environment in the rendered chart, keyed by service,
/// holding its own settings (`<PREFIX>__...`). Values from Secrets are
/// stand-ins `secret-<name>-<key>`; `$(VAR)` is expanded as the kubelet
/// does, from the variables defined before it.
fn chart_envs(docs: &[Value]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let service = c["command"][0].as_str().unwrap().to_owned();
            let mut defined: BTreeMap<String, String> = BTreeMap::new();
            for e in c["env"].as_sequence().unwrap() {
                let name = e["name"].as_str().unwrap().to_owned();
                let from = &e["valueFrom"];
                let value = if let Some(v) = e["value"].as_str() {
                    expand(v, &defined)
                } else if from["secretKeyRef"].is_mapping() {
                    let r = &from["secretKeyRef"];
                    format!(
                        "secret-{}-{}",
                        r["name"].as_str().unwrap(),
                        r["key"].as_str().unwrap()
                    )
                } else if from["fieldRef"].is_mapping() {
                    // What the kubelet fills in: the pod's index for the
                    // StatefulSet's ordinal label, else its name.
                    let path = from["fieldRef"]["fieldPath"].as_str().unwrap();
                    if path.contains("pod-index") {
                        "0".to_owned()
                    } else {
                        format!("{service}-0")
                    }
                } else {
                    panic!("{service}: {name} has neither a value nor a known valueFrom");
                };
                assert!(
                    defined.insert(name.clone(), value).is_none(),
                    "{service}: {name} is set twice"
                );
            }
            let own: BTreeMap<String, String> = defined
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix(&service)))
                .collect();
            assert!(
                !own.is_empty(),
                "{service}: no {} settings",
                prefix(&service)
            );
            all.insert(service, own);
        }
    }
    all
}

/// The kubelet's `$(VAR)` expansion: a variable defined earlier in the
/// list, else left as it is; `$$` is `$`.
fn expand(v: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = rest.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some(value) = defined.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}
