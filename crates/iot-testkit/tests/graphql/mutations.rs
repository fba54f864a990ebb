//! Alert rules and webhooks, managed through GraphQL by their owner.

use serde_json::{Value, json};

use crate::support::*;

/// Rules in the rule language: created for the caller's owner, a bad
/// condition refused saying where, listed for their owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_are_written_in_the_rule_language_and_kept_per_owner() {
    let s = Stack::start().await;
    let (a, b, t) = (s.a(), s.b(), &s.t);
    let rule = a
        .data(
            "mutation { createAlertRule(rule: {name: \"low_battery\", condition: \"sensor_name == 'battery' AND value < 20\", severity: \"critical\"}) { id name owner_id enabled } }",
            json!({}),
        )
        .await["createAlertRule"]
        .clone();
    assert_eq!(rule["owner_id"], t.a.to_string());
    assert_eq!(rule["enabled"], true);
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    let bad = a
        .run(
            "mutation { createAlertRule(rule: {name: \"x\", condition: \"value >\", severity: \"info\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("condition: column 8"),
        "{bad}"
    );
    // The backend's google.rpc.BadRequest field violation reaches the client.
    assert_eq!(
        bad["errors"][0]["extensions"]["fields"][0]["field"], "condition",
        "{bad}"
    );
    let listed = a.data("{ alertRules { id } }", json!({})).await;
    assert_eq!(listed["alertRules"][0]["id"], rule_id.as_str());
    assert_eq!(
        b.data("{ alertRules { id } }", json!({})).await["alertRules"],
        json!([])
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhooks_secret_is_shown_once_and_the_webhook_to_its_owner_only() {
    let s = Stack::start().await;
    let (a, b) = (s.a(), s.b());
    // A webhook for A's alerts: its secret is shown once.
    let hook = a
        .data(
            "mutation { createAlertWebhook(url: \"https://hooks.example/iot\", minSeverity: \"critical\") { id secret min_severity } }",
            json!({}),
        )
        .await["createAlertWebhook"]
        .clone();
    assert_eq!(hook["secret"].as_str().unwrap().len(), 64);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let hooks = a
        .data("{ alertWebhooks { id secret pending } }", json!({}))
        .await;
    assert_eq!(hooks["alertWebhooks"][0]["secret"], Value::Null);
    assert_eq!(
        b.data("{ alertWebhooks { id } }", json!({})).await["alertWebhooks"],
        json!([])
    );
    assert_eq!(hooks["alertWebhooks"][0]["id"], hook_id.as_str());
    s.stop().await;
}

/// updateAlertWebhook: the owner changes its webhook's URL and severity
/// (the secret stays unless rotated, and a rotated one is shown once); a
/// bad URL is refused with the field in `extensions.fields`; another
/// owner gets NOT_FOUND and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_is_updated_by_its_owner_only_and_checked_field_by_field() {
    let s = Stack::start().await;
    let (a, b) = (s.a(), s.b());
    let hook_id = a
        .data(
            "mutation { createAlertWebhook(url: \"https://hooks.example/iot\", minSeverity: \"critical\") { id } }",
            json!({}),
        )
        .await["createAlertWebhook"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    const UPDATE: &str = "mutation($id: ID!, $url: String!, $min: String!, $rotate: Boolean!) {
        updateAlertWebhook(id: $id, url: $url, minSeverity: $min, rotateSecret: $rotate) { id url min_severity secret } }";
    let vars = |url: &str, min: &str, rotate: bool| json!({"id": hook_id, "url": url, "min": min, "rotate": rotate});

    let bad = a.run(UPDATE, vars("not a url", "loud", false)).await;
    let e = &bad["errors"][0];
    assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{bad}");
    let fields: Vec<&str> = e["extensions"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["url", "min_severity"], "{bad}");
    assert!(
        e["extensions"]["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not an http(s) URL"),
        "{bad}"
    );

    let stolen = b
        .run(UPDATE, vars("https://hooks.example/b", "info", true))
        .await;
    assert_eq!(
        stolen["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{stolen}"
    );

    let kept = a
        .data(
            UPDATE,
            vars("https://hooks.example/moved", "warning", false),
        )
        .await["updateAlertWebhook"]
        .clone();
    assert_eq!(
        kept,
        json!({"id": hook_id, "url": "https://hooks.example/moved", "min_severity": "warning", "secret": null})
    );
    let rotated = a
        .data(UPDATE, vars("https://hooks.example/moved", "warning", true))
        .await["updateAlertWebhook"]
        .clone();
    assert_eq!(rotated["secret"].as_str().unwrap().len(), 64);
    let listed = a
        .data(
            "{ alertWebhooks { id url min_severity secret } }",
            json!({}),
        )
        .await;
    assert_eq!(
        listed["alertWebhooks"],
        json!([{"id": hook_id, "url": "https://hooks.example/moved", "min_severity": "warning", "secret": null}])
    );
    s.stop().await;
}
