//! Per-owner quotas and a taken device_id, as a GraphQL caller meets them
//! on the real stack: each quota answers `QUOTA_EXCEEDED` naming itself and
//! its value, one owner's quota leaves another's alone, and a device_id
//! another owner holds is answered exactly as one the caller holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_testkit as kit;
use iot_testkit::Platform;
use serde_json::{Value, json};
use sha2::Digest;

fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A GraphQL caller with an API key.
struct Caller {
    url: String,
    key: &'static str,
    http: reqwest::Client,
}

impl Caller {
    async fn run(&self, query: &str, variables: Value) -> Value {
        let r = self
            .http
            .post(&self.url)
            .header("X-Api-Key", self.key)
            .header("Content-Type", "application/json")
            .body(json!({"query": query, "variables": variables}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }

    /// The only error of a query that must fail.
    async fn error(&self, query: &str, variables: Value) -> Value {
        let v = self.run(query, variables).await;
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(errors.len(), 1, "{v}");
        errors[0].clone()
    }

    async fn create_device(&self, device_id: &str) -> Value {
        self.run(CREATE_DEVICE, json!({"id": device_id, "days": null}))
            .await
    }
}

const CREATE_DEVICE: &str = "mutation($id: String!, $days: Int) {
  createDevice(deviceId: $id, name: \"Boiler\", deviceType: \"temperature_sensor\",
               config: {dataRetentionDays: $days}) { id device_id }
}";
const CREATE_RULE: &str = "mutation($name: String!) {
  createAlertRule(rule: {name: $name, condition: \"value > 30\", severity: \"warning\"}) { id }
}";
const CREATE_WEBHOOK: &str =
    "mutation { createAlertWebhook(url: \"https://hooks.example.com/iot\") { id } }";

#[tokio::test]
async fn quotas_and_taken_device_ids_through_graphql() {
    let p = Platform::start().await;
    // A registry with small limits beside the platform's, on its database.
    let mut registry = p.registry_config();
    registry.limits.devices_per_owner = 2;
    registry.limits.max_retention_days = 400;
    let registry = device_registry::start(registry, p.shutdown.clone())
        .await
        .unwrap();
    let alerts = p
        .start_alert_engine(|c| {
            c.limits.rules_per_owner = 1;
            c.limits.webhooks_per_owner = 1;
        })
        .await;
    let (owner_a, owner_b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let g = p
        .start_graphql(&alerts, |c| {
            c.registry_url = format!("http://{}", registry.grpc_addr);
            c.auth.api_keys = [("a", owner_a), ("b", owner_b)]
                .into_iter()
                .map(|(name, owner)| graphql_gateway::ApiKey {
                    name: name.into(),
                    sha256: sha256(&format!("key-{name}")),
                    owner: owner.to_string(),
                })
                .collect();
        })
        .await;
    let url = format!("http://{}/graphql", g.http_addr);
    let caller = |key| Caller {
        url: url.clone(),
        key,
        http: reqwest::Client::new(),
    };
    let (a, b) = (caller("key-a"), caller("key-b"));

    // A taken device_id: the same answer whoever holds it.
    let first = format!("q-{}", kit::unique());
    let made = a.create_device(&first).await;
    assert!(made.get("errors").is_none(), "{made}");
    let device_uuid = made["data"]["createDevice"]["id"].as_str().unwrap();
    let theirs = b
        .error(CREATE_DEVICE, json!({"id": first, "days": null}))
        .await;
    let mine = a
        .error(CREATE_DEVICE, json!({"id": first, "days": null}))
        .await;
    assert_eq!(theirs["extensions"]["code"], "ALREADY_EXISTS", "{theirs}");
    assert_eq!(
        theirs["message"],
        format!("device_id: {first:?} is not available")
    );
    assert_eq!(
        (&theirs["message"], &theirs["extensions"]),
        (&mine["message"], &mine["extensions"])
    );
    for secret in [device_uuid.to_owned(), owner_a.to_string()] {
        assert!(!theirs.to_string().contains(&secret), "{theirs}");
    }

    // Retention past the registry's maximum names the field.
    let e = a
        .error(
            CREATE_DEVICE,
            json!({"id": format!("q-{}", kit::unique()), "days": 401}),
        )
        .await;
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{e}");
    assert_eq!(
        e["extensions"]["fields"][0]["field"],
        "config.data_retention_days"
    );

    // Devices: A's second is the last; B's quota is B's own.
    let second = a.create_device(&format!("q-{}", kit::unique())).await;
    assert!(second.get("errors").is_none(), "{second}");
    let e = a
        .error(
            CREATE_DEVICE,
            json!({"id": format!("q-{}", kit::unique()), "days": null}),
        )
        .await;
    assert_eq!(e["extensions"]["code"], "QUOTA_EXCEEDED", "{e}");
    assert_eq!(e["extensions"]["quota"], "devices_per_owner");
    assert_eq!(e["extensions"]["limit"], 2);
    assert_eq!(e["extensions"]["service"], "device-registry");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("limits.devices_per_owner is 2"),
        "{e}"
    );
    let other = b.create_device(&format!("q-{}", kit::unique())).await;
    assert!(other.get("errors").is_none(), "{other}");

    // Rules and webhooks: one each.
    let ok = a.run(CREATE_RULE, json!({"name": "hot"})).await;
    assert!(ok.get("errors").is_none(), "{ok}");
    let e = a.error(CREATE_RULE, json!({"name": "hotter"})).await;
    assert_eq!(
        (&e["extensions"]["code"], &e["extensions"]["quota"]),
        (&json!("QUOTA_EXCEEDED"), &json!("rules_per_owner")),
        "{e}"
    );
    assert_eq!(e["extensions"]["limit"], 1);
    let ok = a.run(CREATE_WEBHOOK, json!({})).await;
    assert!(ok.get("errors").is_none(), "{ok}");
    let e = a.error(CREATE_WEBHOOK, json!({})).await;
    assert_eq!(
        (&e["extensions"]["code"], &e["extensions"]["quota"]),
        (&json!("QUOTA_EXCEEDED"), &json!("webhooks_per_owner")),
        "{e}"
    );
    let ok = b.run(CREATE_RULE, json!({"name": "hot"})).await;
    assert!(ok.get("errors").is_none(), "{ok}");
    let ok = b.run(CREATE_WEBHOOK, json!({})).await;
    assert!(ok.get("errors").is_none(), "{ok}");
    p.stop().await;
}
