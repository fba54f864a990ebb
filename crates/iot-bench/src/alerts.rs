//! `iot-bench alerts`: alert latency, from a reading published over MQTT
//! to its alert change arriving on alert-engine's `SubscribeAlerts` gRPC
//! stream, with 10,000 rules across 1,000 owners loaded, while a simulated
//! fleet publishes at 0 (the baseline of this run), 1,000 and 10,000
//! readings/s.
//!
//! The stack is the real one, from release binaries: device-registry,
//! mqtt-gateway, ingest-writer (its database load is part of the machine's
//! load) and alert-engine, on the local PostgreSQL, Mosquitto and Tansu.
//!
//! Rules (platform-wide, so every device is subject to them):
//! - 900 bound to a sensor (`sensor_name == "temperature" AND value >
//!   5000 + i`, spread over the fleet's three sensors), every tenth with a
//!   duration and every seventh with a clear condition;
//! - 99 on any sensor (`value > 20000 + i AND quality != "simulated"`),
//!   which every reading is checked against;
//! - 1 probe rule, `sensor_name == "probe" AND value > 0`, clearing below 0;
//! - and 9 rules of each of 1,000 owners (9,000), shaped like the first
//!   900; the fleet's owner (the nil owner of devices an operator
//!   registers) is one of them, so its readings meet its own 9 and the
//!   1,000 platform rules, and the other owners' rules are there to show
//!   that they cost it nothing.
//!
//! The fleet's values stay far below every load threshold, so its readings
//! are evaluated and raise nothing. Probe devices publish single readings
//! that alternately raise and resolve the probe rule's alert (each is a
//! change on the stream); each probe device waits for its previous change
//! before publishing the next, so changes of one device never overlap.
//!
//! Last, catching up: alert-engine is stopped while the fleet publishes
//! 300,000 readings, then started again; the time until it has evaluated
//! them and its peak RSS on that backlog.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use iot_proto::Scope;
use iot_proto::v1;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use uuid::Uuid;

use crate::procs::{self, Service};
use crate::query::stats;
use crate::{Ctx, fresh_db, fresh_topics, unique};

/// Platform-wide rules.
const RULES: usize = 1000;
/// Owners with rules of their own, and rules each.
const OWNERS: usize = 1000;
const RULES_PER_OWNER: usize = 9;
const PROBES: usize = 20;
/// Probe readings per second (all probe devices together).
const PROBE_RATE: f64 = 20.0;
const FLEET: u32 = 100;
const PHASE: Duration = Duration::from_secs(20);
const WARM_UP: Duration = Duration::from_secs(5);

/// The 1,000 rules described above.
fn rules() -> Vec<v1::Rule> {
    let sensors = ["temperature", "humidity", "pressure"];
    let mut out: Vec<v1::Rule> = (0..900)
        .map(|i| v1::Rule {
            name: format!("load_{i}"),
            condition: format!(
                "sensor_name == \"{}\" AND value > {}",
                sensors[i % 3],
                5000 + i
            ),
            clear_condition: (i % 7 == 0).then(|| format!("value < {}", 4000 + i)),
            for_secs: if i % 10 == 0 { 60 } else { 0 },
            severity: "warning".into(),
            ..Default::default()
        })
        .collect();
    out.extend((0..99).map(|i| v1::Rule {
        name: format!("any_{i}"),
        condition: format!("value > {} AND quality != \"simulated\"", 20_000 + i),
        severity: "info".into(),
        ..Default::default()
    }));
    out.push(v1::Rule {
        name: "probe".into(),
        condition: "sensor_name == \"probe\" AND value > 0".into(),
        clear_condition: Some("value < 0".into()),
        severity: "critical".into(),
        ..Default::default()
    });
    assert_eq!(out.len(), RULES);
    out
}

struct Phase {
    rate: f64,
    latencies: Vec<f64>,
    missing: usize,
    evaluated_per_sec: f64,
}

pub async fn run(ctx: &Ctx) {
    let db = fresh_db(ctx).await;
    let kafka = fresh_topics(ctx).await;
    let root = format!("bench{}", unique());
    let registry = Service::registry(&db, ctx.mqtt_port);
    let writer = Service::writer(&db, &kafka, &format!("bench-{}", unique()));
    let gateway = Service::gateway(&kafka, &root, ctx.mqtt_port, &registry.grpc_url());
    let engine = Service::alerts(&db, &kafka, &registry.grpc_url());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut api = iot_proto::alerts_client(
        engine.grpc_url(),
        Scope::Admin,
        &iot_proto::GrpcTls::default(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    for rule in rules() {
        api.create_rule(rule).await.unwrap();
    }
    create_owner_rules(&engine.grpc_url()).await;
    println!(
        "alerts benchmark: {} rules created in {:.1} s; fleet of {FLEET} devices x 3 sensors; {PROBES} probe devices",
        RULES + OWNERS * RULES_PER_OWNER,
        started.elapsed().as_secs_f64()
    );

    let sim = |rate: f64, duration: u64| iotctl::simulate::Args {
        devices: FLEET,
        device_prefix: "fleet".into(),
        rate,
        form: iotctl::simulate::Form::Batch,
        batch_size: 10,
        duration,
        ..crate::simulator(ctx, &registry.grpc_url(), &root)
    };
    iotctl::simulate::register(&sim(1.0, 1)).await.unwrap();
    let probes = Probes::start(ctx, &root, &registry.grpc_url(), &engine.grpc_url()).await;

    let mut phases = Vec::new();
    let mut probes = probes;
    for rate in [0.0, 1000.0, 10_000.0] {
        let load = (rate > 0.0).then(|| {
            let secs = (WARM_UP + PHASE).as_secs() + 2;
            tokio::spawn(iotctl::simulate::simulate(sim(rate, secs)))
        });
        tokio::time::sleep(WARM_UP).await;
        let before = evaluated(engine.admin_port).await;
        let cpu_before = [&gateway, &engine, &writer].map(|s| s.cpu_seconds());
        let t = Instant::now();
        // Where a backlog builds up, sampled every second: the gateway's
        // unacknowledged MQTT messages and each consumer group's lag.
        let ports = [gateway.admin_port, engine.admin_port, writer.admin_port];
        let sampler = tokio::spawn(async move {
            let mut peak = [0.0f64; 3];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let series = [
                    "iot_gateway_mqtt_in_flight_messages",
                    "iot_kafka_consumer_lag",
                    "iot_kafka_consumer_lag",
                ];
                for (i, (port, name)) in ports.iter().zip(series).enumerate() {
                    peak[i] = peak[i].max(sum_of(*port, name).await);
                }
                if t.elapsed() > PHASE {
                    return peak;
                }
            }
        });
        let (latencies, missing) = probes.measure(PHASE).await;
        let peak = sampler.await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let cpu = [&gateway, &engine, &writer].map(|s| s.cpu_seconds());
        let busy = |i: usize| (cpu[i] - cpu_before[i]) / secs * 100.0;
        println!(
            "  fleet at {rate:.0}/s, peaks: gateway in-flight MQTT messages {:.0}, alert-engine lag {:.0} records, writer lag {:.0} records; CPU: gateway {:.0}%, alert-engine {:.0}%, writer {:.0}% of one core",
            peak[0],
            peak[1],
            peak[2],
            busy(0),
            busy(1),
            busy(2)
        );
        let evaluated_per_sec =
            (evaluated(engine.admin_port).await - before) / t.elapsed().as_secs_f64();
        if let Some(load) = load {
            let s = load.await.unwrap().unwrap();
            println!(
                "  fleet at {rate:.0}/s: {} readings sent, {} acknowledged",
                s.readings, s.acked
            );
        }
        phases.push(Phase {
            rate,
            latencies,
            missing,
            evaluated_per_sec,
        });
        // Let the engine drain before the next phase.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let base = stats(phases[0].latencies.clone());
    let mut rows = Vec::new();
    println!(
        "{:>24} | {:>8} | {:>9} | {:>9} | {:>9} | {:>11} | {:>13}",
        "fleet readings/s", "changes", "p50 ms", "p99 ms", "max ms", "p99 ÷ idle", "evaluated/s"
    );
    for p in &phases {
        let s = stats(p.latencies.clone());
        let max = p.latencies.iter().copied().fold(0.0, f64::max);
        rows.push(format!(
            "| p50 / p99, fleet at {} | {:.1} / {:.1} ms ({:.0} evaluated/s){} | {} |",
            if p.rate == 0.0 {
                "rest (baseline)".to_owned()
            } else {
                format!("{:.0} readings/s", p.rate)
            },
            s.p50,
            s.p99,
            p.evaluated_per_sec,
            if p.missing > 0 {
                format!(", {} changes never arrived", p.missing)
            } else {
                String::new()
            },
            if p.rate >= 10_000.0 {
                if s.p99 <= 500.0 && p.missing == 0 {
                    "p99 ≤ 500 ms: **met**"
                } else {
                    "p99 ≤ 500 ms: **not met**"
                }
            } else {
                ""
            }
        ));
        println!(
            "{:>24} | {:>8} | {:>9.1} | {:>9.1} | {:>9.1} | {:>10.2}x | {:>13.0}{}",
            if p.rate == 0.0 {
                "0 (baseline)".to_owned()
            } else {
                format!("{:.0}", p.rate)
            },
            p.latencies.len(),
            s.p50,
            s.p99,
            max,
            s.p99 / base.p99,
            p.evaluated_per_sec,
            if p.missing > 0 {
                format!("  ({} changes never arrived)", p.missing)
            } else {
                String::new()
            }
        );
    }
    let at_10k = stats(phases[2].latencies.clone());
    println!(
        "target p99 <= 500 ms at 10,000 readings/s with {} rules: {}",
        RULES + OWNERS * RULES_PER_OWNER,
        if at_10k.p99 <= 500.0 && phases[2].missing == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "peak RSS: alert-engine {} MiB, mqtt-gateway {} MiB, device-registry {} MiB",
        engine.peak_rss_kib() / 1024,
        gateway.peak_rss_kib() / 1024,
        registry.peak_rss_kib() / 1024
    );
    rows.push(format!(
        "| peak RSS of alert-engine during the phases | {} MiB | |",
        engine.peak_rss_kib() / 1024
    ));

    // Catching up: the engine is stopped (SIGTERM: it leaves its consumer
    // group) while the fleet publishes `CATCH_UP` readings at full speed,
    // then starts again in the same group, on that backlog.
    drop(probes);
    engine.terminate();
    let client = crate::connect(&db).await;
    let before = crate::stored(&client).await;
    let s = iotctl::simulate::simulate(iotctl::simulate::Args {
        count: CATCH_UP,
        ..sim(0.0, 0)
    })
    .await
    .unwrap();
    crate::wait_rows(
        &client,
        before + s.readings as i64,
        Duration::from_secs(300),
    )
    .await;
    let engine = Service::alerts(&db, &kafka, &registry.grpc_url());
    let t = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Its admin endpoint answers once it has started.
        let up = tokio::net::TcpStream::connect(("127.0.0.1", engine.admin_port))
            .await
            .is_ok();
        if up && evaluated(engine.admin_port).await >= s.readings as f64 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "alert-engine did not catch up"
        );
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "catch-up: {} readings published while alert-engine was down, evaluated {secs:.1} s after it started again ({:.0}/s, start-up included); its peak RSS {} MiB",
        s.readings,
        s.readings as f64 / secs,
        engine.peak_rss_kib() / 1024
    );
    rows.push(format!(
        "| catching up on {} readings after a restart | {secs:.1} s ({:.0} readings/s), peak RSS {} MiB | |",
        s.readings,
        s.readings as f64 / secs,
        engine.peak_rss_kib() / 1024
    ));
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let section = format!(
            "{}\n\n{RULES} platform-wide rules and {RULES_PER_OWNER} of each of {OWNERS} \
             owners ({} in all; the fleet's owner is one of them); a fleet of {FLEET} \
             devices × 3 sensors in \
             batches of 10; delay from a probe reading published over MQTT to its alert \
             change on `SubscribeAlerts`, each phase {} s.\n\n\
             | measure | figure | target |\n|---|---|---|\n{}\n",
            crate::report_header("Alert latency", "cargo xtask bench alerts"),
            RULES + OWNERS * RULES_PER_OWNER,
            PHASE.as_secs(),
            rows.join("\n")
        );
        crate::replace_report_section(&path, "## Alert latency", &section);
    }
}

/// `RULES_PER_OWNER` rules for each of `OWNERS` owners, each created by
/// its owner: the nil owner (the fleet's) and others.
async fn create_owner_rules(url: &str) {
    let owners = std::iter::once(Uuid::nil()).chain((1..OWNERS).map(|_| Uuid::new_v4()));
    futures::stream::iter(owners)
        .for_each_concurrent(8, |owner| async move {
            let mut api = iot_proto::alerts_client(
                url.to_owned(),
                Scope::Owner(owner.to_string()),
                &iot_proto::GrpcTls::default(),
            )
            .await
            .unwrap();
            let sensors = ["temperature", "humidity", "pressure"];
            for i in 0..RULES_PER_OWNER {
                api.create_rule(v1::Rule {
                    name: format!("owner_{i}"),
                    condition: format!(
                        "sensor_name == \"{}\" AND value > {}",
                        sensors[i % 3],
                        6000 + i
                    ),
                    severity: "warning".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        })
        .await;
}

/// Readings published while alert-engine is down, for the catch-up phase.
const CATCH_UP: u64 = 300_000;

/// The engine's `iot_alerts_readings_evaluated_total`.
async fn evaluated(port: u16) -> f64 {
    sum_of(port, "iot_alerts_readings_evaluated_total").await
}

/// The sum of every series of metric `name` a service serves.
async fn sum_of(port: u16, name: &str) -> f64 {
    crate::procs::metric_sum(&crate::procs::admin_metrics(port).await, name, "")
}

/// Probe devices, an MQTT client to publish their readings and a
/// subscription to the engine's alert stream.
struct Probes {
    devices: Vec<(Uuid, String)>,
    /// Whether each probe's alert is open.
    open: Vec<bool>,
    mqtt: AsyncClient,
    topic_prefix: String,
    /// (device, "raised"/"resolved", arrival) from the stream.
    events: tokio::sync::mpsc::UnboundedReceiver<(Uuid, String, Instant)>,
    value: u64,
}

impl Probes {
    async fn start(ctx: &Ctx, root: &str, registry: &str, engine: &str) -> Self {
        let mut reg = iot_proto::registry_client(
            registry.to_owned(),
            Scope::Admin,
            &iot_proto::GrpcTls::default(),
        )
        .await
        .unwrap();
        let mut devices = Vec::new();
        for i in 0..PROBES {
            let d = reg
                .create_device(v1::CreateDeviceRequest {
                    device_id: format!("probe{i}-{}", unique()),
                    name: "alert latency probe".into(),
                    device_type: "probe".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            devices.push((Uuid::parse_str(&d.id).unwrap(), d.device_id));
        }
        let mut opts = MqttOptions::new(format!("probe-{}", unique()), "127.0.0.1", ctx.mqtt_port);
        let (user, password) = procs::account("publisher");
        opts.set_credentials(user, password);
        let (mqtt, mut eventloop) = AsyncClient::new(opts, 100);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

        let mut alerts = iot_proto::alerts_client(
            engine.to_owned(),
            Scope::Admin,
            &iot_proto::GrpcTls::default(),
        )
        .await
        .unwrap();
        let mut stream = alerts
            .subscribe_alerts(v1::SubscribeAlertsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(e)) = stream.next().await {
                let at = Instant::now();
                if let Some(a) = e.alert
                    && let Ok(d) = Uuid::parse_str(&a.device_uuid)
                {
                    let _ = tx.send((d, e.kind, at));
                }
            }
        });
        Self {
            open: vec![false; devices.len()],
            devices,
            mqtt,
            topic_prefix: format!("{root}/sensors"),
            events,
            value: 0,
        }
    }

    /// Publishes probe readings for `run` at `PROBE_RATE`, each flipping
    /// its device's alert; returns the latencies in ms and how many changes
    /// did not arrive within 10 s.
    async fn measure(&mut self, run: Duration) -> (Vec<f64>, usize) {
        let mut pending: HashMap<usize, (Instant, &'static str)> = HashMap::new();
        let mut latencies = Vec::new();
        let mut missing = 0;
        let index: HashMap<Uuid, usize> = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, (u, _))| (*u, i))
            .collect();
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / PROBE_RATE));
        let mut next = 0usize;
        loop {
            let publishing = start.elapsed() < run;
            if !publishing && pending.is_empty() {
                break;
            }
            tokio::select! {
                _ = tick.tick(), if publishing => {
                    // The next probe with no change in flight.
                    let Some(i) = (0..PROBES).map(|k| (next + k) % PROBES).find(|i| !pending.contains_key(i)) else {
                        continue;
                    };
                    next = i + 1;
                    self.value += 1;
                    let (v, want) = if self.open[i] {
                        (-(self.value as f64), "resolved")
                    } else {
                        (self.value as f64, "raised")
                    };
                    let payload = format!(
                        r#"{{"value": {v}, "timestamp": "{}"}}"#,
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    );
                    pending.insert(i, (Instant::now(), want));
                    self.mqtt
                        .publish(
                            format!("{}/{}/probe", self.topic_prefix, self.devices[i].1),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .unwrap();
                }
                e = self.events.recv() => {
                    let (device, kind, at) = e.expect("alert stream ended");
                    let Some(&i) = index.get(&device) else { continue };
                    if let Some((sent, want)) = pending.get(&i).copied()
                        && kind == want
                    {
                        pending.remove(&i);
                        self.open[i] = want == "raised";
                        latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            // A change that has not arrived in 10 s is counted missing and
            // its probe resynchronised with the database's view later.
            pending.retain(|i, (sent, _)| {
                let lost = sent.elapsed() > Duration::from_secs(10);
                if lost {
                    missing += 1;
                    // Unknown state: publish "raised" next; a raise of an
                    // open alert is no change, so flip it to make sure.
                    self.open[*i] = !self.open[*i];
                }
                !lost
            });
        }
        (latencies, missing)
    }
}
