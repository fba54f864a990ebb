//! The seed's example rules as templates: enabled in one call, they raise
//! what the seed says.

use std::time::Duration;

use iot_testkit as kit;
use serde_json::{Value, json};

use crate::support::*;

const ENABLE: &str = "mutation { enableRuleTemplates { name condition severity message enabled } }";

const RECORD_SENSOR: &str = "mutation($d: ID!, $s: String!, $v: Float!) {
  recordReading(deviceId: $d, sensorName: $s, value: $v) { value }
}";

/// Records `value` of `sensor` until an open alert of `alert_type` shows
/// on the device (rules reach the engine within seconds); that alert.
async fn raised(c: &Client, id: &str, sensor: &str, value: f64, alert_type: &str) -> Value {
    kit::eventually(alert_type, WAIT, || {
        let (c, id) = (c.clone(), id.to_owned());
        async move {
            c.data(RECORD_SENSOR, json!({"d": id, "s": sensor, "v": value}))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let d = c
                .data(
                    "query($id: ID!) { device(id: $id) { alerts { alert_type severity message value } } }",
                    json!({"id": id}),
                )
                .await;
            d["device"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["alert_type"] == alert_type)
                .cloned()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seeds_rule_templates_raise_what_the_seed_says() {
    let s = Stack::start().await;
    let a = s.a();
    let rules = a.data(ENABLE, json!({})).await["enableRuleTemplates"].clone();
    let names: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["high_temp", "low_battery"], "{rules}");
    assert_eq!(rules[0]["severity"], "critical");
    assert_eq!(rules[1]["severity"], "warning");
    // Enabling again changes nothing: the same rules.
    let again = a.data(ENABLE, json!({})).await["enableRuleTemplates"].clone();
    assert_eq!(again, rules);
    // B has none of A's rules.
    let b_rules = s.b().data("{ alertRules { name } }", json!({})).await;
    assert_eq!(b_rules["alertRules"], json!([]), "{b_rules}");

    let id = create_device(&a, &format!("tpl_{}", kit::unique()), Value::Null).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // At 100 nothing: above 100 is the seed's condition.
    a.data(
        RECORD_SENSOR,
        json!({"d": id, "s": "temperature", "v": 100.0}),
    )
    .await;
    let hot = raised(&a, &id, "temperature", 101.0, "high_temp").await;
    assert_eq!(hot["severity"], "critical", "{hot}");
    assert_eq!(hot["message"], "High temperature detected", "{hot}");
    assert_eq!(hot["value"], 101.0);
    let low = raised(&a, &id, "battery_level", 9.0, "low_battery").await;
    assert_eq!(low["severity"], "warning", "{low}");
    assert_eq!(low["message"], "Battery level low", "{low}");
    // Only the templates' own alerts: nothing for the temperature of 100.
    let d = a
        .data(
            "query($id: ID!) { device(id: $id) { alerts { alert_type value } } }",
            json!({"id": id}),
        )
        .await;
    assert!(
        d["device"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["value"] != 100.0),
        "{d}"
    );
    s.stop().await;
}
