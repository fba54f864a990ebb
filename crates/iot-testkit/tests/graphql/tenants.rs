//! Tenant isolation at every entry point: another owner sees, changes and
//! hears nothing of a tenant's devices, alerts, rules and webhooks; and
//! what the gateway remembers of a tenant's devices stays that tenant's.

use chrono::{TimeDelta, Utc};
use iot_testkit as kit;
use serde_json::{Value, json};

use crate::support::*;

/// Query variables for device `d`'s readings of the last minute and its
/// hourly metrics of the last day.
fn telemetry_vars(d: &str) -> (Value, Value) {
    let now = Utc::now();
    let readings = json!({
        "deviceId": d,
        "sensorName": "temperature",
        "startTime": (now - TimeDelta::minutes(1)).to_rfc3339(),
        "endTime": now.to_rfc3339(),
    });
    let trend = json!({
        "deviceId": d,
        "startTime": (now - TimeDelta::days(1)).to_rfc3339(),
        "endTime": now.to_rfc3339(),
    });
    (readings, trend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_tenant_sees_changes_and_hears_nothing_of_a_tenants_data() {
    let s = Stack::start().await;
    let (a, b) = (s.a(), s.b());
    // A's device, with an open alert, a rule and a webhook.
    let device_id = format!("device_123_{}", kit::unique());
    let id = device_with_max_30(&a, &device_id).await;
    let alerts = raise_alert(&a, &id).await;
    let alert_id = alerts[0]["id"].as_str().unwrap().to_owned();
    let rule_id = a
        .data(
            "mutation { createAlertRule(rule: {name: \"low_battery\", condition: \"sensor_name == 'battery' AND value < 20\", severity: \"critical\"}) { id } }",
            json!({}),
        )
        .await["createAlertRule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hook_id = a
        .data(
            "mutation { createAlertWebhook(url: \"https://hooks.example/iot\", minSeverity: \"critical\") { id } }",
            json!({}),
        )
        .await["createAlertWebhook"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Tenant B sees, changes and hears nothing of A's.
    let b_sees = b.data("{ devices { id } activeAlerts { id } deviceStatusSummary { total_devices critical_alerts_count } }", json!({})).await;
    assert_eq!(b_sees["devices"], json!([]));
    assert_eq!(b_sees["activeAlerts"], json!([]));
    assert_eq!(b_sees["deviceStatusSummary"]["total_devices"], 0);
    assert_eq!(
        b.data(DEVICE_DASHBOARD, json!({"deviceId": id})).await["device"],
        Value::Null
    );
    assert_eq!(
        b.data(DEVICE_DASHBOARD, json!({"deviceId": device_id}))
            .await["device"],
        Value::Null
    );
    assert_eq!(
        b.data("{ alertRules { id } }", json!({})).await["alertRules"],
        json!([])
    );
    assert_eq!(
        b.data("{ alertWebhooks { id } }", json!({})).await["alertWebhooks"],
        json!([])
    );
    // By the device's external id and by its UUID.
    let (vars, trend_vars) = telemetry_vars(&device_id);
    let (readings_by_uuid, trend_by_uuid) = telemetry_vars(&id);
    for (q, v) in [
        (GET_READINGS, vars.clone()),
        (TEMPERATURE_TREND, trend_vars.clone()),
        (GET_READINGS, readings_by_uuid),
        (TEMPERATURE_TREND, trend_by_uuid),
        (RECORD, json!({"deviceId": id, "v": 1})),
        (
            "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { id } }",
            json!({"id": alert_id}),
        ),
        (
            "mutation($id: ID!) { resolveAlert(alertId: $id) { id } }",
            json!({"id": alert_id}),
        ),
        (
            "mutation($id: ID!) { deleteDevice(id: $id) }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { updateDevice(id: $id, name: \"mine\") { id } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { updateDeviceConfig(id: $id, config: {readInterval: 5}) { read_interval } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { rotateDeviceCredentials(id: $id) { password } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { deleteAlertRule(id: $id) }",
            json!({"id": rule_id}),
        ),
        (
            "mutation($id: ID!) { updateAlertRule(id: $id, rule: {name: \"x\", condition: \"value > 1\", severity: \"info\"}) { id } }",
            json!({"id": rule_id}),
        ),
        (
            "mutation($id: ID!) { updateAlertWebhook(id: $id, url: \"https://hooks.example/b\", rotateSecret: true) { secret } }",
            json!({"id": hook_id}),
        ),
        (
            "mutation($id: ID!) { deleteAlertWebhook(id: $id) }",
            json!({"id": hook_id}),
        ),
        (
            "mutation($id: ID!) { revokeDeviceCredentials(id: $id) }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { recordReadings(deviceId: $id, readings: [{sensorName: \"temperature\", value: 1}]) { accepted } }",
            json!({"id": id}),
        ),
        ("{ alerts(state: open) { id } }", json!({})),
    ] {
        let got = b.run(q, v).await;
        let code = got["errors"][0]["extensions"]["code"].as_str();
        let empty = got["data"]["alerts"] == json!([]);
        assert!(
            code == Some("NOT_FOUND") || empty,
            "B reached A's data with {q}: {got}"
        );
    }
    // Nor can B subscribe to A's device.
    let mut sub = s
        .subscribe(
            "key-b",
            "subscription($d: ID) { alerts(deviceId: $d) { id } }",
            json!({"d": id}),
        )
        .await;
    let refused = sub.next().await;
    assert!(refused.to_string().contains("NOT_FOUND"), "{refused}");
    for q in [
        "subscription($d: ID!) { deviceStatus(deviceId: $d) { status } }",
        "subscription($d: ID!) { metrics(deviceId: $d) { avg_value } }",
    ] {
        let mut sub = s.subscribe("key-b", q, json!({"d": id})).await;
        let refused = sub.next().await;
        assert!(refused.to_string().contains("NOT_FOUND"), "{q}: {refused}");
    }
    s.stop().await;
}

/// A device, once found in its tenant's scope, is not looked up again
/// for that tenant's telemetry queries; once deleted, the gateway does
/// not answer for it from what it knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_device_is_looked_up_once_and_forgotten_when_deleted() {
    let s = Stack::start().await;
    let a = s.a();
    let created = create_device(&a, &format!("device_{}", kit::unique()), Value::Null).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (readings_by_uuid, trend_by_uuid) = telemetry_vars(&id);
    a.data(TEMPERATURE_TREND, trend_by_uuid.clone()).await;
    let checks = upstream_calls_of(s.g.admin_addr, "GetDevice").await;
    a.data(TEMPERATURE_TREND, trend_by_uuid.clone()).await;
    a.data(GET_READINGS, readings_by_uuid).await;
    assert_eq!(upstream_calls_of(s.g.admin_addr, "GetDevice").await, checks);

    a.data(
        "mutation($id: ID!) { deleteDevice(id: $id) }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(
        a.error_code(TEMPERATURE_TREND, trend_by_uuid).await,
        "NOT_FOUND"
    );
    s.stop().await;
}
