//! `cargo xtask bench abuse`: one owner, or one anonymous client, tries to
//! make the platform slow for everyone, on the shipped limits. Each phase
//! runs one abuse while another owner keeps using the platform, and
//! measures what that owner sees (GraphQL p99, publish-to-row p99) against
//! an idle phase of the same run:
//! - an alias-amplified metrics query (refused by its cost, or served
//!   within the per-owner query limit);
//! - 10,000 idle WebSockets that never authenticate;
//! - a flood of 1 MB payloads on one device's topic;
//! - one owner creating 10,000 alert rules.
//!
//! Target: each abuse refused or bounded, and the other owner's p99s
//! within 2× of idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use iot_proto::Scope;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::procs::Service;
use crate::query::stats;
use crate::{Ctx, connect, fresh_db, fresh_topics, probe_latency, unique};

const PHASE: Duration = Duration::from_secs(15);
const VICTIM_KEY: &str = "abuse-bench-victim";
const ABUSER_KEY: &str = "abuse-bench-abuser";
/// The victim is the nil owner: the devices the benchmark creates without
/// an owner (its probes) are its own.
const VICTIM: Uuid = Uuid::nil();
const ABUSER: Uuid = Uuid::from_u128(0xab05_0000_0000_4000_8000_0000_0000_0001);
const WEBSOCKETS: usize = 10_000;
const RULES: usize = 10_000;

fn sha(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lets this process and the services it starts hold every socket of the
/// WebSocket phase (root may raise the hard limit), with util-linux's
/// `prlimit`. The soft limit on open files reached.
fn raise_open_files(want: u64) -> u64 {
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={want}:{want}"))
        .status();
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// A GraphQL caller with one API key.
#[derive(Clone)]
struct Caller {
    http: reqwest::Client,
    url: String,
    key: &'static str,
}

impl Caller {
    fn new(port: u16, key: &'static str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{port}/graphql"),
            key,
        }
    }

    /// The HTTP status and the answer.
    async fn post(&self, query: &str, variables: Value) -> (u16, Value) {
        let r = self
            .http
            .post(&self.url)
            .header("X-Api-Key", self.key)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// What the victim's dashboard asks every 50 ms until `until`: its
/// latencies (ms) and how many answers carried errors.
async fn victim(c: Caller, device: String, until: Instant) -> (Vec<f64>, usize) {
    const Q: &str = "query($d: ID!, $s: String!, $e: String!) {
        device(id: $d) { name status }
        devices(limit: 20) { id name }
        sensorMetrics(deviceId: $d, sensorName: \"temperature\", startTime: $s, endTime: $e, granularity: \"1m\") { time avg_value }
    }";
    let (mut ms, mut errors) = (Vec::new(), 0);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < until {
        tick.tick().await;
        let now = chrono::Utc::now();
        let vars = json!({"d": device, "s": (now - chrono::Duration::hours(1)).to_rfc3339(), "e": now.to_rfc3339()});
        let t = Instant::now();
        let (status, v) = c.post(Q, vars).await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if status != 200 || v.get("errors").is_some() {
            errors += 1;
        }
    }
    (ms, errors)
}

/// Counts of outcomes by name, shared by an abuse's tasks.
#[derive(Default, Clone)]
struct Tally(Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(what.into())
            .or_default() += 1;
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The outcome of one GraphQL answer: its first error code, or "answered".
fn outcome(status: u16, v: &Value) -> String {
    if status == 429 {
        return "RATE_LIMITED (429)".into();
    }
    match v["errors"][0]["extensions"]["code"].as_str() {
        Some(code) => code.to_owned(),
        None => "answered".into(),
    }
}

/// Aliased metrics queries from 4 loops: 13 months of 5-minute metrics
/// (over the cost limit) and 20 aliased years of hourly metrics (the most
/// root fields, within the cost limit: served, each field a query that
/// waits its owner's turn).
async fn alias_flood(c: Caller, device: String, until: Instant) -> String {
    let field = |i: usize, start: &str, end: &str, granularity: &str| {
        format!(
            "m{i}: sensorMetrics(deviceId: \"{device}\", sensorName: \"temperature\", startTime: \"{start}\", \
             endTime: \"{end}\", granularity: \"{granularity}\") {{ time avg_value }}"
        )
    };
    let now = chrono::Utc::now();
    let (month_ago, year_ago, now) = (
        (now - chrono::Duration::days(30)).to_rfc3339(),
        (now - chrono::Duration::days(365)).to_rfc3339(),
        now.to_rfc3339(),
    );
    let costly: String = (0..13)
        .map(|i| field(i, &month_ago, &now, "5m"))
        .collect::<Vec<_>>()
        .join(" ");
    let within: String = (0..20)
        .map(|i| field(i, &year_ago, &now, "1h"))
        .collect::<Vec<_>>()
        .join(" ");
    let tally = Tally::default();
    let loops = (0..4).map(|n| {
        let (c, tally) = (c.clone(), tally.clone());
        let q = format!("{{ {} }}", if n % 2 == 0 { &costly } else { &within });
        async move {
            while Instant::now() < until {
                let (status, v) = c.post(&q, json!({})).await;
                let got = outcome(status, &v);
                // It waits when told to (a client that does not is a
                // request flood, which the door's rate limit answers; on
                // one box that client's own CPU would skew the figures).
                if got.starts_with("RATE_LIMITED") {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tally.add(got);
            }
        }
    });
    futures::future::join_all(loops).await;
    tally.text()
}

/// WebSockets opened and never initialised, as the gateway ends them.
#[derive(Clone, Default)]
struct IdleSockets {
    opened: Arc<AtomicUsize>,
    closed_4408: Arc<AtomicUsize>,
    other: Arc<AtomicUsize>,
    open_secs: f64,
}

/// Opens `n` WebSockets (256 handshakes at a time) that never send
/// `connection_init`, each watched until the gateway closes it.
async fn open_idle_websockets(port: u16, n: usize) -> IdleSockets {
    use tokio_tungstenite::tungstenite::Message;
    let mut s = IdleSockets::default();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let s = s.clone();
            async move {
                let req = crate::procs::graphql_ws_request(port);
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
                    s.other.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                s.opened.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 4408 => {
                                s.closed_4408.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Some(Ok(_)) => {}
                            _ => {
                                s.other.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                });
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
    s.open_secs = t.elapsed().as_secs_f64();
    s
}

/// Waits (at most until `deadline`) for the gateway to end every socket;
/// what it saw.
async fn idle_websockets_ended(s: IdleSockets, n: usize, deadline: Instant) -> String {
    let ended = || s.closed_4408.load(Ordering::Relaxed) + s.other.load(Ordering::Relaxed);
    while ended() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    format!(
        "{} of {n} opened (in {:.1} s, before the phase); {} closed by the gateway with 4408 at the init timeout, {} otherwise ended",
        s.opened.load(Ordering::Relaxed),
        s.open_secs,
        s.closed_4408.load(Ordering::Relaxed),
        s.other.load(Ordering::Relaxed)
    )
}

/// Publishes 1 MB payloads QoS 1 on one device's topic as fast as the
/// broker lets it, reconnecting when refused; what happened.
async fn payload_flood(ctx_port: u16, topic: String, until: Instant) -> String {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(format!("abuse-{}", unique()), "127.0.0.1", ctx_port);
    let (user, password) = crate::procs::account("publisher");
    opts.set_credentials(user, password);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let (acked, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let events = {
        let (acked, refused) = (acked.clone(), refused.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    let payload = vec![b'7'; 1 << 20];
    let mut sent = 0usize;
    while Instant::now() < until {
        if tokio::time::timeout(
            Duration::from_secs(1),
            client.publish(&topic, QoS::AtLeastOnce, false, payload.clone()),
        )
        .await
        .is_ok_and(|r| r.is_ok())
        {
            sent += 1;
        }
    }
    let _ = events.await;
    format!(
        "{sent} payloads of 1 MB sent; {} acknowledged by the broker, {} connections closed by it (max_packet_size)",
        acked.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    )
}

/// One owner creates `RULES` alert rules through the gRPC API, 8 at a
/// time; what it got.
async fn rule_flood(engine: String, until: Instant) -> String {
    let tally = Tally::default();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks = (0..8).map(|_| {
        let (engine, tally, next) = (engine.clone(), tally.clone(), next.clone());
        async move {
            let mut api = iot_proto::alerts_client(
                engine,
                Scope::Owner(ABUSER.to_string()),
                &iot_proto::GrpcTls::default(),
            )
            .await
            .unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= RULES || Instant::now() > until + PHASE {
                    return;
                }
                let rule = iot_proto::v1::Rule {
                    name: format!("flood_{i}"),
                    condition: "sensor_name == \"temperature\" AND value > 1000".into(),
                    severity: "warning".into(),
                    ..Default::default()
                };
                match api.create_rule(rule).await {
                    Ok(_) => tally.add("created"),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        tally.add("refused RESOURCE_EXHAUSTED (quota)");
                    }
                    Err(s) => tally.add(format!("{:?}", s.code())),
                }
            }
        }
    });
    futures::future::join_all(tasks).await;
    tally.text()
}

struct Row {
    phase: &'static str,
    outcome: String,
    graphql_p99: f64,
    graphql_errors: usize,
    row_p99: f64,
}

pub async fn run(ctx: &Ctx) {
    let files = raise_open_files(65_536);
    // The sockets' two ends are in two processes, each with this limit.
    let websockets = WEBSOCKETS.min(usize::try_from(files).unwrap_or(0).saturating_sub(1024));
    let url = fresh_db(ctx).await;
    let kafka = fresh_topics(ctx).await;
    let root = format!("abuse{}", unique());
    let registry = Service::registry(&url, ctx.mqtt_port);
    let writer = Service::writer(&url, &kafka, &format!("abuse-{}", unique()));
    let gateway = Service::gateway(&kafka, &root, ctx.mqtt_port, &registry.grpc_url());
    let engine = Service::alerts(&url, &kafka, &registry.grpc_url());
    let keys = format!(
        r#"[{{name="victim", sha256="{}", owner="{VICTIM}"}}, {{name="abuser", sha256="{}", owner="{ABUSER}"}}]"#,
        sha(VICTIM_KEY),
        sha(ABUSER_KEY)
    );
    let gql = Service::graphql_with(
        [&registry.grpc_url(), &writer.grpc_url(), &engine.grpc_url()],
        &keys,
        &[],
    );
    let (victim_c, abuser_c) = (
        Caller::new(gql.http_port, VICTIM_KEY),
        Caller::new(gql.http_port, ABUSER_KEY),
    );
    // Each side's device, with an hour of readings for the dashboards.
    let reg = loop {
        match iot_proto::registry_client(
            registry.grpc_url(),
            Scope::Admin,
            &iot_proto::GrpcTls::default(),
        )
        .await
        {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let device = |owner: Uuid| {
        let req = iot_proto::v1::CreateDeviceRequest {
            device_id: format!("abuse-{}", unique()),
            name: "abuse bench".into(),
            device_type: "sensor".into(),
            owner_id: if owner.is_nil() {
                String::new()
            } else {
                owner.to_string()
            },
            ..Default::default()
        };
        let mut reg = reg.clone();
        async move { reg.create_device(req).await.unwrap().into_inner() }
    };
    let (mine, theirs) = (device(VICTIM).await, device(ABUSER).await);
    let db = connect(&url).await;
    {
        let now = chrono::Utc::now();
        for d in [&mine, &theirs] {
            let id = Uuid::parse_str(&d.id).unwrap();
            for m in 0..60 {
                db.execute(
                    "INSERT INTO sensor_readings (time, device_id, sensor_name, value) VALUES ($1, $2, 'temperature', $3)",
                    &[&(now - chrono::Duration::minutes(m)), &id, &rust_decimal::Decimal::from(20 + m % 5)],
                )
                .await
                .unwrap();
            }
        }
    }
    while victim_c.post("{ __typename }", json!({})).await.0 != 200 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "abuse benchmark: {PHASE:?} a phase; the victim's dashboard every 50 ms and a probe reading every 20 ms"
    );

    let registry_url = registry.grpc_url();
    let mut rows = Vec::new();
    for phase in ["idle", "alias", "websockets", "payloads", "rules"] {
        // The sockets are opened first: the phase measures while they are
        // held and until the gateway has closed them.
        let sockets = if phase == "websockets" {
            Some(open_idle_websockets(gql.http_port, websockets).await)
        } else {
            None
        };
        let until = Instant::now() + PHASE;
        let seen = victim(victim_c.clone(), mine.id.clone(), until);
        let probe = probe_latency(ctx, &root, &registry_url, &db, PHASE);
        let abuse = async {
            match phase {
                "alias" => alias_flood(abuser_c.clone(), theirs.id.clone(), until).await,
                "websockets" => {
                    let s = sockets.clone().unwrap_or_default();
                    idle_websockets_ended(s, websockets, until + PHASE).await
                }
                "payloads" => {
                    let topic = format!("{root}/sensors/{}/temperature", theirs.device_id);
                    payload_flood(ctx.mqtt_port, topic, until).await
                }
                "rules" => rule_flood(engine.grpc_url(), until).await,
                _ => "nothing".into(),
            }
        };
        let ((ms, errors), (_, row_p99), outcome) = tokio::join!(seen, probe, abuse);
        let graphql_p99 = stats(ms).p99;
        println!(
            "{phase:<11} GraphQL p99 {graphql_p99:.1} ms ({errors} with errors), publish-to-row p99 {row_p99:.1} ms; {outcome}"
        );
        rows.push(Row {
            phase,
            outcome,
            graphql_p99,
            graphql_errors: errors,
            row_p99,
        });
    }
    let gql_rss = gql.peak_rss_kib() / 1024;
    println!("graphql-gateway peak RSS {gql_rss} MiB");
    drop((gql, engine, gateway, writer, registry));

    let idle = (rows[0].graphql_p99, rows[0].row_p99);
    let mut table = Vec::new();
    let mut all_met = true;
    for r in &rows {
        let (g, p) = (r.graphql_p99 / idle.0, r.row_p99 / idle.1);
        let met = r.graphql_errors == 0 && g <= 2.0 && p <= 2.0;
        all_met &= met;
        let verdict = if r.phase == "idle" {
            "baseline".to_owned()
        } else if met {
            "**met**".to_owned()
        } else {
            "**not met**".to_owned()
        };
        table.push(format!(
            "| {} | {} | {:.1} ms ({g:.2}×, {} errors) | {:.1} ms ({p:.2}×) | {verdict} |",
            r.phase, r.outcome, r.graphql_p99, r.graphql_errors, r.row_p99
        ));
    }
    println!(
        "target: every abuse refused or bounded, the other owner's p99s within 2x of idle: {}",
        if all_met { "met" } else { "NOT MET" }
    );
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let section = format!(
            "{}\n\nShipped limits; release builds, every process on one box. Each phase {} s: one abuse \
             while another owner's dashboard query runs every 50 ms and a probe reading is published \
             every 20 ms. {websockets} WebSockets (open files allowed: {files}); graphql-gateway peak \
             RSS over the run {gql_rss} MiB.\n\n\
             | phase | what the abuse got | other owner's GraphQL p99 (÷ idle) | publish-to-row p99 (÷ idle) | target: refused or bounded, ≤ 2× idle, no errors |\n\
             |---|---|---|---|---|\n{}\n",
            crate::report_header("Abuse", "cargo xtask bench abuse"),
            PHASE.as_secs(),
            table.join("\n")
        );
        crate::replace_report_section(&path, "## Abuse", &section);
    }
}
