//! The web console (`console/`, served by graphql-gateway at `/console/`)
//! in a real browser: Playwright drives Debian's Chromium through
//! `console/test/browser.mjs` against a platform started here, with two
//! owners' devices, readings and an alert raised over MQTT while the page
//! is open, and a device on the broker that answers the commands the page
//! sends and reports the desired state it gets. `cargo xtask console`
//! builds what this needs (and `cargo xtask test` does it before building
//! the gateway).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use iot_testkit as kit;
use iot_testkit::Platform;
use serde_json::{Value, json};
use sha2::Digest as _;

const WAIT: Duration = Duration::from_secs(30);

fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a GraphQL operation as the holder of `key`; its `data`.
async fn gql(addr: std::net::SocketAddr, key: &str, query: &str, variables: Value) -> Value {
    let body = json!({"query": query, "variables": variables}).to_string();
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/graphql"))
        .header("Content-Type", "application/json")
        .header("X-Api-Key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert!(v.get("errors").is_none(), "{v}");
    v["data"].clone()
}

/// Whether the broker accepts an MQTT 5 session as `user`.
async fn mqtt_login(user: &str, password: &str) -> Result<(), String> {
    use rumqttc::v5::{AsyncClient, Event, mqttbytes::v5::Packet};
    let mut opts = kit::mqtt5_options(format!("console-{}", kit::unique()));
    opts.set_credentials(user, password);
    let (client, mut events) = AsyncClient::new(opts, 16);
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no CONNACK".into()));
    let _ = client.disconnect().await;
    r
}

const CREATE: &str = "mutation($d: String!, $name: String!, $t: JSON) {
  createDevice(deviceId: $d, name: $name, deviceType: \"temperature_sensor\", location: \"Plant 1\", alertThreshold: $t) { id device_id credentials { username password } }
}";

/// The body a device answering [`answering_device`] gives a command.
fn answer_body(command: &Value) -> Value {
    if command["name"] == "fail" {
        json!({"status": "error", "body": {"reason": "asked to fail"}})
    } else {
        json!({"status": "ok", "body": {"done": command["name"], "payload": command["payload"]}})
    }
}

/// A device's MQTT 5 session on the broker, as docs/mqtt-devices.md tells
/// devices to behave: it acknowledges each command (`received`), then
/// answers it ([`answer_body`]) on its response topic, and reports each
/// desired state it gets as its state. Subscribed before this returns, so
/// that no command the page sends is missed.
async fn answering_device(root: &str, user: &str, password: &str) -> tokio::task::JoinHandle<()> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::{AsyncClient, Event};
    let mut opts = kit::mqtt5_options(format!("console-dev-{}", kit::unique()));
    opts.set_credentials(user, password);
    let (client, mut events) = AsyncClient::new(opts, 16);
    let commands = format!("{root}/commands/{user}/");
    let desired = format!("{root}/state/{user}/desired");
    let reported = format!("{root}/state/{user}/reported");
    for filter in [format!("{commands}+"), desired.clone()] {
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    tokio::time::timeout(WAIT, async {
        let mut granted = 0;
        while granted < 2 {
            if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.unwrap() {
                assert!(
                    matches!(ack.return_codes[0], SubscribeReasonCode::Success(_)),
                    "the broker refused the device's subscription: {ack:?}"
                );
                granted += 1;
            }
        }
    })
    .await
    .expect("SUBACKs");
    tokio::spawn(async move {
        loop {
            let p = match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => p,
                Ok(_) => continue,
                // rumqttc reconnects on the next poll.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let body: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            let mut out = Vec::new();
            if topic == desired {
                if body["state"].is_object() {
                    out.push((reported.clone(), body["state"].to_string()));
                }
            } else if topic.starts_with(&commands) {
                let result = format!("{topic}/result");
                out.push((result.clone(), json!({"status": "received"}).to_string()));
                out.push((result, answer_body(&body).to_string()));
            }
            for (topic, payload) in out {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_works_in_a_real_browser() {
    let console = repo().join("console");
    assert!(
        console.join("node_modules/playwright-core").is_dir(),
        "console/node_modules is missing: run `cargo xtask console` (npm ci and the build in console/)"
    );
    let chromium =
        std::env::var("IOT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `cargo xtask test` installs Debian's chromium (apt-get install chromium chromium-driver)"
    );

    let p = Platform::start().await;
    // alert-engine stops alone when the script asks, to show a backend down.
    let engine_stop = p.shutdown.child_token();
    let engine = p
        .start_alert_engine_until(engine_stop.clone(), |_| {})
        .await;
    let jwt_secret = format!(
        "console-{}-{}",
        kit::unique(),
        uuid::Uuid::new_v4().simple()
    );
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (key_a, key_b) = (
        format!("console-a-{}", kit::unique()),
        format!("console-b-{}", kit::unique()),
    );
    let g = p
        .start_graphql(&engine, |c| {
            c.auth.api_keys = vec![
                graphql_gateway::ApiKey {
                    name: "console-a".into(),
                    sha256: sha256(&key_a),
                    owner: a.to_string(),
                },
                graphql_gateway::ApiKey {
                    name: "console-b".into(),
                    sha256: sha256(&key_b),
                    owner: b.to_string(),
                },
            ];
            c.auth.jwt = Some(graphql_gateway::JwtConfig {
                hs256_secret: Some(jwt_secret.clone()),
                audience: Some("iot-console-test".into()),
                ..Default::default()
            });
        })
        .await;
    let jwt_a = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "console-user", "owner": a.to_string(), "aud": "iot-console-test",
            "exp": (Utc::now() + TimeDelta::minutes(10)).timestamp()}),
        &jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes()),
    )
    .unwrap();
    let addr = g.http_addr;

    // The console is in the binary: its page, with a policy that allows
    // nothing from elsewhere.
    let res = reqwest::get(format!("http://{addr}/console/"))
        .await
        .unwrap();
    let status = res.status();
    let csp = res
        .headers()
        .get("content-security-policy")
        .map(|v| v.to_str().unwrap().to_owned());
    let page = res.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<div id=\"app\">"), "{page}");
    assert!(csp.unwrap().starts_with("default-src 'self'"));

    // Owner A: a boiler (at most 30 degrees) with an hour of readings, and
    // three more devices (the valve answers commands); owner B: one device.
    let u = kit::unique();
    let mut devices_a = Vec::new();
    for (name, t) in [
        ("boiler", json!({"temperature": {"max": 30}})),
        ("fan", Value::Null),
        ("pump", Value::Null),
        ("valve", Value::Null),
    ] {
        let d = gql(
            addr,
            &key_a,
            CREATE,
            json!({"d": format!("con-{u}-{name}"), "name": name, "t": t}),
        )
        .await;
        devices_a.push(d["createDevice"].clone());
    }
    let d = gql(
        addr,
        &key_b,
        CREATE,
        json!({"d": format!("con-{u}-b-only"), "name": "B's", "t": null}),
    )
    .await;
    let device_b = d["createDevice"].clone();
    let boiler = devices_a[0].clone();
    let boiler_id = boiler["id"].as_str().unwrap().to_owned();
    let now = Utc::now();
    let readings: Vec<Value> = (0..30)
        .map(|i| {
            json!({
                "sensorName": "temperature",
                "value": 20.0 + f64::from(i % 7) + 0.25,
                "unit": "C",
                "timestamp": (now - TimeDelta::seconds(50 * 60 - i64::from(i) * 90)).to_rfc3339(),
            })
        })
        .collect();
    let r = gql(
        addr,
        &key_a,
        "mutation($d: ID!, $r: [ReadingInput!]!) { recordReadings(deviceId: $d, readings: $r) { accepted rejected { reason } } }",
        json!({"d": boiler_id, "r": readings}),
    )
    .await;
    assert_eq!(r["recordReadings"]["accepted"], 30, "{r}");
    kit::eventually("the readings are queryable", WAIT, || {
        let (key, id) = (key_a.clone(), boiler_id.clone());
        async move {
            let d = gql(
                addr,
                &key,
                "query($d: ID!, $s: String!, $e: String!) { sensorMetrics(deviceId: $d, sensorName: \"temperature\", startTime: $s, endTime: $e, granularity: \"1m\") { reading_count } }",
                json!({"d": id, "s": (Utc::now() - TimeDelta::hours(1)).to_rfc3339(), "e": Utc::now().to_rfc3339()}),
            )
            .await;
            let n: i64 = d["sensorMetrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["reading_count"].as_i64().unwrap())
                .sum();
            (n == 30).then_some(())
        }
    })
    .await;

    let valve = &devices_a[3]["credentials"];
    let valve_session = answering_device(
        &p.root,
        valve["username"].as_str().unwrap(),
        valve["password"].as_str().unwrap(),
    )
    .await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let mut child = Command::new("node")
        .arg("test/browser.mjs")
        .current_dir(&console)
        .env("CONSOLE_URL", format!("http://{addr}/console/"))
        .env("CONSOLE_KEY_A", &key_a)
        .env("CONSOLE_KEY_B", &key_b)
        .env("CONSOLE_JWT_A", &jwt_a)
        .env(
            "CONSOLE_DEVICES_A",
            Value::Array(devices_a.clone()).to_string(),
        )
        .env("CONSOLE_DEVICE_B", device_b.to_string())
        .env("CONSOLE_SCREENSHOTS", &shots)
        .env("CONSOLE_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (Node.js 20 is part of the set-up)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // The script's lines, read on a thread of their own.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut alert_id = None;
    let (mut acknowledged, mut of_b, mut rotated) = (None, None, None);
    let (mut commanded, mut state) = (None, None);
    let mut engine = Some(engine);
    let mut published = false;
    let mut passed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.recv()).await {
        println!("browser: {line}");
        if line == "PUBLISH" {
            // The boiler over its threshold of 30; the fan's first reading.
            kit::publish_all(&[
                (
                    format!("{}/con-{u}-boiler/temperature", p.prefix),
                    br#"{"value": 35.5}"#.to_vec(),
                ),
                (
                    format!("{}/con-{u}-fan/temperature", p.prefix),
                    br#"{"value": 21.0}"#.to_vec(),
                ),
            ])
            .await;
            published = true;
            writeln!(stdin, "PUBLISHED").unwrap();
        } else if let Some(id) = line.strip_prefix("ALERT ") {
            // Checked now, while alert-engine is up: the state the page
            // set, as the API tells it, and nothing of it for owner B.
            let q = "query($d: ID) { alerts(deviceId: $d) { id state acknowledged } }";
            acknowledged = Some(gql(addr, &key_a, q, json!({"d": boiler_id})).await);
            of_b = Some(
                gql(
                    addr,
                    &key_b,
                    "{ alerts { id } devices { device_id } }",
                    json!({}),
                )
                .await,
            );
            alert_id = Some(id.to_owned());
        } else if let Some(new) = line.strip_prefix("PASSWORD ") {
            // The page's new password is the pump's account now; the one
            // createDevice issued is not.
            let user = format!("con-{u}-pump");
            let old = devices_a[2]["credentials"]["password"].as_str().unwrap();
            rotated = Some((mqtt_login(&user, new).await, mqtt_login(&user, old).await));
        } else if let Some(id) = line.strip_prefix("COMMAND ") {
            // The command the page showed succeeded, as the API tells it.
            let q = "query($id: ID!) { command(id: $id) { id name payload status result } }";
            commanded = Some(gql(addr, &key_a, q, json!({"id": id})).await);
        } else if line.starts_with("STATE ") {
            let q =
                "query($d: ID!) { deviceState(deviceId: $d) { desired desired_version reported } }";
            state = Some(gql(addr, &key_a, q, json!({"d": devices_a[3]["id"]})).await);
        } else if line == "STOP_ALERTS" {
            engine_stop.cancel();
            if let Some(e) = engine.take() {
                tokio::time::timeout(WAIT, e.wait())
                    .await
                    .expect("alert-engine stops")
                    .unwrap();
            }
            writeln!(stdin, "STOPPED").unwrap();
        } else if line == "console browser checks passed" {
            passed = true;
        }
    }
    drop(stdin);
    if tokio::time::Instant::now() >= deadline {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    valve_session.abort();
    println!("screenshots in {}", shots.display());
    assert!(
        status.success() && passed,
        "the browser checks failed ({status}); see the output above"
    );
    assert!(published);

    let (new, old) = rotated.expect("the script shows a rotated password");
    assert_eq!(new, Ok(()), "the new password logs in");
    assert!(old.is_err(), "the old password is refused");
    // The acknowledgement made in the page is the API's state.
    let alert_id = alert_id.expect("the script names the alert it acknowledged");
    let d = acknowledged.unwrap();
    let alert = d["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == alert_id.as_str())
        .unwrap_or_else(|| panic!("alert {alert_id} in {d}"))
        .clone();
    assert_eq!(alert["state"], "acknowledged", "{alert}");
    assert_eq!(alert["acknowledged"], true);
    // The command sent from the page: answered by the device, and the
    // answer is the API's result.
    let d = commanded.expect("the script names the command it sent");
    let c = &d["command"];
    assert_eq!(c["status"], "succeeded", "{d}");
    assert_eq!(c["name"], "open-valve");
    assert_eq!(c["payload"], json!({"position": 40}));
    assert_eq!(c["result"], answer_body(c)["body"], "{d}");
    // The desired state the page set last, over the one set behind its
    // back (version 2), and the device reporting it.
    let d = state.expect("the script says when the desired state is set");
    let s = &d["deviceState"];
    assert_eq!(s["desired_version"], 3, "{d}");
    assert_eq!(s["desired"], json!({"position": 60, "mode": "eco"}), "{d}");
    assert_eq!(s["reported"], s["desired"], "{d}");
    // Owner B sees none of it through the API either.
    let d = of_b.unwrap();
    assert_eq!(d["alerts"], json!([]), "{d}");
    assert_eq!(
        d["devices"],
        json!([{"device_id": format!("con-{u}-b-only")}])
    );
    p.stop().await;
}
