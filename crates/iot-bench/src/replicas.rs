//! `iot-bench replicas`: horizontal scaling. Two mqtt-gateways, two
//! ingest-writers and two alert-engines (release builds) share one fleet
//! on a readings topic of 12 partitions:
//! - the gateways split the devices as shipped (`split = "hashed"`), each
//!   told only its `mqtt.replica` of `mqtt.replicas = 2` and given a
//!   client id of its own (its persistent session);
//! - both writers are in one consumer group, and so are both engines, so
//!   that Kafka gives each member half the partitions.
//!
//! Phases: 200 devices registered; `IOT_BENCH_ROWS` (default 200,000)
//! single readings published QoS 1 through the platform publisher account;
//! waited for until all are stored and evaluated. Then the checks: rows in
//! `sensor_readings` equal the readings published, with no two rows of one
//! key (stored exactly once); both engines' `iot_alerts_readings_evaluated_total`
//! add up to the readings published (evaluated once); and each replica did
//! at least a quarter of its kind's work (the split), from each replica's
//! own admin metrics. Peak RSS and CPU seconds are per replica too. The
//! figures go to the "## Replicas" section of `IOT_BENCH_REPORT`.

use std::time::{Duration, Instant};

use crate::procs::{self, Service};
use crate::{Ctx, connect, fresh_db, replace_report_section, report_header, stored, unique};

const DEVICES: u32 = 200;
const PARTITIONS: i32 = 12;
const REPLICAS: u32 = 2;
/// Least share of its kind's work each replica must do.
const MIN_SHARE: f64 = 0.25;

/// The partitions a consumer reports lag for: the ones it holds (the
/// gauge is reset on every rebalance and filled from librdkafka's
/// statistics, every 5 s).
fn lag_partitions(metrics: &str) -> Vec<u32> {
    let mut v: Vec<u32> = metrics
        .lines()
        .filter(|l| l.starts_with("iot_kafka_consumer_lag{"))
        .filter_map(|l| {
            let rest = &l[l.find("partition=\"")? + "partition=\"".len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One replica's figures at the end of the run.
struct Replica {
    kind: &'static str,
    index: usize,
    /// Readings forwarded, rows stored or readings evaluated.
    work: f64,
    /// Partitions held (consumers only) and which, where the lag gauge
    /// shows them.
    partitions: Option<(f64, Vec<u32>)>,
    rss_kib: u64,
    cpu_secs: f64,
    /// What else the replica's metrics say (others' messages acknowledged
    /// unprocessed, duplicates ignored).
    note: String,
}

/// Sum of series `name` over the services on `ports`.
async fn sum_over(ports: &[u16], name: &str, labels: &str) -> f64 {
    let mut total = 0.0;
    for port in ports {
        total += procs::metric_sum(&procs::admin_metrics(*port).await, name, labels);
    }
    total
}

pub async fn run(ctx: &Ctx) {
    let db_url = fresh_db(ctx).await;
    let kafka = iot_kafka::KafkaConfig {
        brokers: ctx.brokers.clone(),
        readings_topic: format!("bench.readings.{}", unique()),
        dead_letter_topic: format!("bench.dlq.{}", unique()),
        partitions: PARTITIONS,
        ..Default::default()
    };
    crate::make_topics(&kafka).await;
    let root = format!("bench{}", unique());
    let n = ctx.rows as u64;
    println!(
        "replicas benchmark: {REPLICAS} gateways, {REPLICAS} writers, {REPLICAS} alert-engines; \
         {PARTITIONS} partitions; {DEVICES} devices; {n} single readings QoS 1"
    );

    let registry = Service::registry(&db_url, ctx.mqtt_port);
    let group = format!("bench-replicas-{}", unique());
    let writers: Vec<Service> = (0..REPLICAS)
        .map(|_| Service::writer(&db_url, &kafka, &group))
        .collect();
    // One consumer group for both: `Service::alerts` names it after the
    // topic.
    let engines: Vec<Service> = (0..REPLICAS)
        .map(|_| Service::alerts(&db_url, &kafka, &registry.grpc_url()))
        .collect();
    let gateways: Vec<Service> = (0..REPLICAS)
        .map(|i| {
            Service::gateway_with(
                &kafka,
                &root,
                ctx.mqtt_port,
                &registry.grpc_url(),
                vec![
                    // A persistent session of its own: two under one
                    // client id would take each other's over.
                    ("MQTT__CLIENT_ID", format!("{root}-gw-{i}")),
                    // The shipped split mode (hashed) needs only these.
                    ("MQTT__REPLICA", i.to_string()),
                    ("MQTT__REPLICAS", REPLICAS.to_string()),
                ],
            )
        })
        .collect();
    let writer_ports: Vec<u16> = writers.iter().map(|s| s.admin_port).collect();
    let engine_ports: Vec<u16> = engines.iter().map(|s| s.admin_port).collect();
    let gateway_ports: Vec<u16> = gateways.iter().map(|g| g.admin_port).collect();

    // Gateways are ready once subscribed: their sessions exist, so the
    // broker keeps every message for each of them from then on.
    for port in &gateway_ports {
        procs::wait_ready(*port, Duration::from_secs(60)).await;
    }
    let settled = async |kind: &str, ports: &[u16]| {
        crate::wait_assigned(kind, ports, PARTITIONS, Duration::from_secs(120)).await
    };
    let writers_settled = settled("writers", &writer_ports).await;
    let engines_settled = settled("alert-engines", &engine_ports).await;

    let sim = iotctl::simulate::Args {
        devices: DEVICES,
        device_prefix: "rep".into(),
        count: n,
        ..crate::simulator(ctx, &registry.grpc_url(), &root)
    };
    // The registry may still be starting.
    let start = Instant::now();
    while let Err(e) = iotctl::simulate::register(&sim).await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "cannot register the fleet: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let cpu_before: Vec<f64> = gateways
        .iter()
        .map(Service::cpu_seconds)
        .chain(writers.iter().map(Service::cpu_seconds))
        .chain(engines.iter().map(Service::cpu_seconds))
        .collect();
    let t0 = Instant::now();
    let summary = iotctl::simulate::simulate(sim).await.unwrap();
    let published = summary.readings;
    println!(
        "  published {published} readings in {:.1} s ({:.0}/s): {} acknowledged, {} errors",
        summary.elapsed.as_secs_f64(),
        summary.rate(),
        summary.acked,
        summary.errors
    );

    // Waits for the rows and the evaluations, each until it reaches the
    // readings published or stops moving for 60 s (then the run reports
    // what it has instead of giving up).
    let db = connect(&db_url).await;
    let mut last = (0i64, 0.0f64, Instant::now());
    let (mut stored_at, mut evaluated_at) = (None::<Duration>, None::<Duration>);
    loop {
        let rows = stored(&db).await;
        let evaluated = sum_over(&engine_ports, "iot_alerts_readings_evaluated_total", "").await;
        if stored_at.is_none() && rows >= published as i64 {
            stored_at = Some(t0.elapsed());
        }
        if evaluated_at.is_none() && evaluated >= published as f64 {
            evaluated_at = Some(t0.elapsed());
        }
        if stored_at.is_some() && evaluated_at.is_some() {
            break;
        }
        if (rows, evaluated) != (last.0, last.1) {
            last = (rows, evaluated, Instant::now());
        } else if last.2.elapsed() > Duration::from_secs(60) {
            println!("  no progress for 60 s: {rows} stored, {evaluated:.0} evaluated");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    // Late redeliveries would show as more evaluations or duplicate
    // attempts: give them a moment to appear before reading the figures.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let row: tokio_postgres::Row = db
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, sensor_name, time)) FROM sensor_readings",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));

    let mut replicas = Vec::new();
    let mut next_cpu = cpu_before.iter();
    for (i, g) in gateways.iter().enumerate() {
        let m = procs::admin_metrics(g.admin_port).await;
        let rejected = procs::metric_sum(&m, "iot_gateway_readings_rejected_total", "");
        replicas.push(Replica {
            kind: "mqtt-gateway",
            index: i,
            work: procs::metric_sum(&m, "iot_gateway_readings_accepted_total", "source=\"mqtt\""),
            partitions: None,
            rss_kib: g.peak_rss_kib(),
            cpu_secs: g.cpu_seconds() - next_cpu.next().unwrap(),
            note: format!(
                "{:.0} others' messages acknowledged unprocessed, {rejected:.0} rejected",
                procs::metric_sum(&m, "iot_gateway_mqtt_other_replicas_messages_total", "")
            ),
        });
    }
    let consumers = [
        ("ingest-writer", &writers, "iot_writer_rows_written_total"),
        (
            "alert-engine",
            &engines,
            "iot_alerts_readings_evaluated_total",
        ),
    ];
    for (kind, services, work) in consumers {
        for (i, s) in services.iter().enumerate() {
            let m = procs::admin_metrics(s.admin_port).await;
            let note = if kind == "ingest-writer" {
                format!(
                    "{:.0} duplicates ignored",
                    procs::metric_sum(&m, "iot_writer_duplicates_ignored_total", "")
                )
            } else {
                String::new()
            };
            replicas.push(Replica {
                kind,
                index: i,
                work: procs::metric_sum(&m, work, ""),
                partitions: Some((
                    procs::metric_sum(&m, "iot_kafka_assigned_partitions", ""),
                    lag_partitions(&m),
                )),
                rss_kib: s.peak_rss_kib(),
                cpu_secs: s.cpu_seconds() - next_cpu.next().unwrap(),
                note,
            });
        }
    }

    let total = |kind: &str| -> f64 {
        replicas
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.work)
            .sum()
    };
    let share = |r: &Replica| r.work / total(r.kind).max(1.0);
    let evaluated = total("alert-engine");
    let exactly_once = rows == published as i64 && distinct == rows;
    let evaluated_once = evaluated == published as f64;
    let split = replicas.iter().all(|r| share(r) >= MIN_SHARE);

    println!(
        "  stored: {rows} rows ({distinct} distinct keys) of {published} published, all after {}",
        stored_at.map_or("(not all)".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    println!(
        "  evaluated: {evaluated:.0} of {published}, all after {}",
        evaluated_at.map_or("(not all)".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    println!(
        "{:<16} {:>10} {:>6} {:>16} {:>8} {:>6}  notes",
        "replica", "work", "share", "partitions", "RSS MiB", "CPU s"
    );
    let partitions_text = |r: &Replica| {
        r.partitions.as_ref().map_or("-".into(), |(n, ids)| {
            if ids.is_empty() {
                format!("{n:.0}")
            } else {
                format!(
                    "{n:.0} ({})",
                    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                )
            }
        })
    };
    for r in &replicas {
        println!(
            "{:<16} {:>10.0} {:>5.1}% {:>16} {:>8} {:>6.1}  {}",
            format!("{} {}", r.kind, r.index),
            r.work,
            100.0 * share(r),
            partitions_text(r),
            r.rss_kib / 1024,
            r.cpu_secs,
            r.note
        );
    }
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    println!(
        "stored exactly once: {}; evaluated once: {}; split (each ≥ 25%): {}",
        met(exactly_once),
        met(evaluated_once),
        met(split)
    );

    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let work_name = |kind: &str| match kind {
            "mqtt-gateway" => "readings forwarded to Kafka",
            "ingest-writer" => "rows stored",
            _ => "readings evaluated",
        };
        let mut section = format!(
            "{}\n\n{REPLICAS} mqtt-gateways (`split = \"hashed\"`, replica 0 and 1 of 2), \
             {REPLICAS} ingest-writers in one consumer group and {REPLICAS} alert-engines in \
             another, on a readings topic of {PARTITIONS} partitions; {DEVICES} devices × 3 \
             sensors published {published} single readings QoS 1 ({:.0} readings/s \
             acknowledged by the broker; all stored and evaluated after {:.1} s). \
             Consumers settled before publishing: writers {}, alert-engines {}. Figures \
             per replica from its own admin metrics; CPU seconds over the run.\n\n\
             | replica | work | share | partitions held | peak RSS MiB | CPU s | notes |\n\
             |---|---|---|---|---|---|---|\n",
            report_header("Replicas", "cargo xtask bench replicas"),
            summary.rate(),
            took.as_secs_f64(),
            if writers_settled { "yes" } else { "no" },
            if engines_settled { "yes" } else { "no" },
        );
        for r in &replicas {
            section.push_str(&format!(
                "| {} {} | {:.0} {} | {:.1}% | {} | {} | {:.1} | {} |\n",
                r.kind,
                r.index,
                r.work,
                work_name(r.kind),
                100.0 * share(r),
                partitions_text(r),
                r.rss_kib / 1024,
                r.cpu_secs,
                r.note
            ));
        }
        section.push_str(&format!(
            "\n| check | figure | target |\n|---|---|---|\n\
             | rows in `sensor_readings` (distinct keys) vs readings published | \
             {rows} ({distinct}) of {published} | stored exactly once: {} |\n\
             | readings evaluated, both alert-engines | {evaluated:.0} of {published} | \
             evaluated once: {} |\n\
             | least share of its kind's work, any replica | {:.1}% | \
             split: each replica did ≥ 25% of its kind's work: {} |\n",
            met(exactly_once),
            met(evaluated_once),
            100.0 * replicas.iter().map(share).fold(f64::INFINITY, f64::min),
            met(split),
        ));
        replace_report_section(&path, "## Replicas", &section);
    }
    drop(gateways);
    drop(engines);
    drop(writers);
    drop(registry);
}
