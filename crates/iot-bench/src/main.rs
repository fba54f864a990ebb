//! `iot-bench query`: see `query.rs`; `graphql`: `graphql.rs`; `alerts`:
//! `alerts.rs`; `export`: `export.rs`; `commands`: `commands.rs`.
//!
//! `iot-bench ingest`: the ingest path's throughput, latency and memory, each
//! as a ratio to the raw limit measured in the same run on the same machine.
//!
//! Run through `cargo xtask bench ingest`, which builds release binaries and
//! starts the stack. Phases:
//! 1. raw limit: binary `COPY` of N rows straight into `sensor_readings`;
//! 2. writer: ingest-writer draining a pre-filled Kafka topic of N readings;
//! 3. end to end: `iotctl simulate` at full speed over MQTT (QoS 1) to rows,
//!    single-reading messages and 50-reading batches;
//! 4. latency: publish-to-row p50/p99 for probe readings while the fleet
//!    publishes at half the measured single-message rate;
//! 5. peak RSS (VmHWM) of every service process;
//! 6. TLS: the end-to-end throughput phases with TLS on every link against
//!    plain links, each run on a freshly started broker of its own
//!    (`links.rs`), as a ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod alerts;
mod ceiling;
mod commands;
mod export;
mod faults;
mod graphql;
mod history;
mod late;
mod links;
mod procs;
mod query;
mod replicas;
mod scale;
mod subscriptions;

use std::time::{Duration, Instant};

use futures::pin_mut;
use procs::Service;
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn unique() -> String {
    Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// The heading and provenance line of a benchmark's section in
/// `docs/benchmarks.md`: machine, date and commit of this run.
fn report_header(title: &str, command: &str) -> String {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let (started, stolen_then) = *RUN_START.get_or_init(|| (Instant::now(), stolen_cpu_seconds()));
    let stolen = stolen_share(stolen_then, started.elapsed());
    format!(
        "## {title}\n\n`{command}`, written by the program. Date {}; commit {}; machine: {}, {} cores, {} GiB; CPU stolen by the host over the run: {:.0}% of the cores.",
        sh("date -u +%F"),
        sh("git rev-parse --short HEAD"),
        sh("uname -sm"),
        sh("nproc"),
        sh("free -g | awk '/Mem:/ {print $2}'"),
        100.0 * stolen,
    )
}

/// Replaces the section that starts with `heading` (up to the next `## `)
/// in the Markdown file at `path` with `body`, or appends it.
fn replace_report_section(path: &str, heading: &str, body: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let out = match text.find(&format!("{heading}\n")) {
        Some(start) => {
            let rest = &text[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(text.len(), |i| start + heading.len() + i + 1);
            format!("{}{}\n\n{}", &text[..start], body.trim_end(), &text[end..])
        }
        None => format!("{}\n\n{}\n", text.trim_end(), body.trim_end()),
    };
    if let Err(e) = std::fs::write(path, out) {
        eprintln!("cannot write {path}: {e}");
    }
}

#[derive(Clone)]
struct Ctx {
    admin_db: String,
    brokers: String,
    mqtt_port: u16,
    rows: usize,
    /// The storage backend of the databases [`fresh_db`] makes.
    backend: iot_db::BackendChoice,
}

async fn fresh_db(ctx: &Ctx) -> String {
    let base = ctx.admin_db.rsplit_once('/').unwrap().0;
    let name = format!("iot_bench_{}", unique());
    let url = format!("{base}/{name}");
    iot_db::ensure_database(&url).await.unwrap();
    CREATED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(name);
    iot_db::migrate(&url, ctx.backend).await.unwrap();
    url
}

/// What a kept benchmark database holds, as its loader recorded it in
/// `platform_info` under `key`: `None` for a database made now, one that
/// recorded nothing, or when the run asks for a reload
/// (`IOT_BENCH_RELOAD=1`).
async fn kept_data(url: &str, key: &str) -> Option<String> {
    if std::env::var("IOT_BENCH_RELOAD").is_ok_and(|v| v == "1")
        || !iot_db::ensure_database(url)
            .await
            .is_ok_and(|created| !created)
    {
        return None;
    }
    connect(url)
        .await
        .query_opt("SELECT value FROM platform_info WHERE key = $1", &[&key])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Records in `platform_info` under `key` what a loaded benchmark database
/// holds, for [`kept_data`] in the next run.
async fn record_kept_data(db: &tokio_postgres::Client, key: &str, value: &str) {
    db.execute(
        "INSERT INTO platform_info (key, value) VALUES ($1, $2)",
        &[&key, &value],
    )
    .await
    .unwrap();
}

/// Database `name` at `url` made afresh (whatever it held dropped) and
/// migrated with `backend`.
async fn remade_database(
    ctx: &Ctx,
    name: &str,
    url: &str,
    backend: iot_db::BackendChoice,
) -> iot_db::MigrationReport {
    connect(&ctx.admin_db)
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    iot_db::ensure_database(url).await.unwrap();
    iot_db::migrate(url, backend).await.unwrap()
}

/// Has database `name`, one a benchmark reuses when it is there (a year of
/// readings, a million devices), dropped when the program ends unless
/// the run was told to keep it (`--keep`): repeated runs must not fill
/// the disk.
fn drop_unless_kept(name: &str) {
    if std::env::args().any(|a| a == "--keep") {
        println!("keeping database {name} for the next run (--keep)");
        return;
    }
    CREATED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(name.to_owned());
}

/// The databases [`fresh_db`] made, dropped when the program ends.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Drops what [`fresh_db`] made (services of a phase may still hold
/// connections: FORCE).
async fn drop_fresh_dbs(admin_db: &str) {
    let names = std::mem::take(
        &mut *CREATED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let admin = connect(admin_db).await;
    for name in names {
        if let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
        {
            eprintln!("cannot drop benchmark database {name}: {e}");
        }
    }
}

/// Readings and dead-letter topics of this phase's own, created.
async fn fresh_topics(ctx: &Ctx) -> iot_kafka::KafkaConfig {
    let kafka = iot_kafka::KafkaConfig {
        brokers: ctx.brokers.clone(),
        readings_topic: format!("bench.readings.{}", unique()),
        dead_letter_topic: format!("bench.dlq.{}", unique()),
        ..Default::default()
    };
    make_topics(&kafka).await;
    kafka
}

/// The topic the alert-engines of a benchmark on `kafka` publish alerts to.
fn alerts_topic(kafka: &iot_kafka::KafkaConfig) -> String {
    format!("{}.alerts", kafka.readings_topic)
}

/// Creates `kafka`'s topics, deleted when the program ends (with the
/// alerts topic an alert-engine on them makes).
async fn make_topics(kafka: &iot_kafka::KafkaConfig) {
    kafka.ensure_topics().await.unwrap();
    TOPICS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(kafka.clone());
}

/// The topics [`make_topics`] made, deleted when the program ends: the
/// local broker keeps every topic's records in memory, and a broker
/// holding earlier runs' millions of records costs several times as much
/// per record.
static TOPICS: std::sync::Mutex<Vec<iot_kafka::KafkaConfig>> = std::sync::Mutex::new(Vec::new());

async fn delete_made_topics() {
    let made = std::mem::take(
        &mut *TOPICS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for kafka in made {
        delete_topics_of(&kafka).await;
    }
}

/// Deletes `kafka`'s topics now instead of when the program ends.
async fn drop_topics(kafka: &iot_kafka::KafkaConfig) {
    TOPICS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|k| k.readings_topic != kafka.readings_topic);
    delete_topics_of(kafka).await;
}

/// Waits until every consumer of `ports` holds partitions and together
/// they hold all of them: publishing into a group still rebalancing would
/// move partitions (and redeliver records) in the middle of the run.
pub(crate) async fn wait_assigned(
    kind: &str,
    ports: &[u16],
    partitions: i32,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    loop {
        let mut held = Vec::new();
        for port in ports {
            let m = crate::procs::admin_get(*port, "/metrics")
                .await
                .map(|(_, b)| b);
            held.push(m.map_or(0.0, |m| {
                crate::procs::metric_sum(&m, "iot_kafka_assigned_partitions", "")
            }));
        }
        if held.iter().all(|h| *h > 0.0) && held.iter().sum::<f64>() == f64::from(partitions) {
            println!(
                "  {kind}: partitions held {}",
                held.iter()
                    .map(|h| format!("{h:.0}"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            );
            return true;
        }
        if start.elapsed() > limit {
            println!("  {kind}: partitions held {held:?} after {limit:?}; going on");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn delete_topics_of(kafka: &iot_kafka::KafkaConfig) {
    let alerts = alerts_topic(kafka);
    let topics = [
        kafka.readings_topic.as_str(),
        kafka.dead_letter_topic.as_str(),
        alerts.as_str(),
    ];
    if let Err(e) = iot_kafka::delete_topics(kafka, &topics).await {
        eprintln!("cannot delete benchmark topics {topics:?}: {e}");
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM sensor_readings", &[])
        .await
        .unwrap()
        .get(0)
}

/// Readings the writers have stored: the sum of `ingest_counts`, which
/// they keep in the same transaction as the rows. A small table, unlike
/// `count(*)` over `sensor_readings`, whose scans would load the very
/// database being measured.
async fn stored(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT COALESCE(sum(readings), 0)::int8 FROM ingest_counts",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the writers have stored `n` readings; returns when that
/// happened (polled every 50 ms).
async fn wait_rows(db: &tokio_postgres::Client, n: i64, limit: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if stored(db).await >= n {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {n} rows (have {})",
            stored(db).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `n` rows, or until none has come for `stall`: answers when
/// the last row came and how many there are. A run that loses rows ends
/// with a count to report, not a panic.
async fn wait_rows_while_coming(
    db: &tokio_postgres::Client,
    n: i64,
    stall: Duration,
) -> (Instant, i64) {
    let mut have = stored(db).await;
    let mut last = Instant::now();
    while have < n && last.elapsed() < stall {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stored(db).await;
        if now > have {
            (have, last) = (now, Instant::now());
        }
    }
    (last, have)
}

/// The same rows every phase writes: 100 devices, 3 sensors, 1 s apart.
fn rows(n: usize) -> Vec<(chrono::DateTime<chrono::Utc>, Uuid, String, Decimal)> {
    let devices: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
    (0..n)
        .map(|i| {
            (
                t0 + chrono::Duration::milliseconds((i / 300) as i64 * 1000 + (i % 300) as i64),
                devices[i % 100],
                ["temperature", "humidity", "pressure"][(i / 100) % 3].to_owned(),
                Decimal::new((i % 100_000) as i64, 2),
            )
        })
        .collect()
}

/// Binary `COPY` of rows straight into `sensor_readings` (time, device,
/// sensor, value), 5,000 rows a statement.
async fn copy_in<R>(
    db: &tokio_postgres::Client,
    rows: &[R],
    fields: impl Fn(&R) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4],
) {
    for chunk in rows.chunks(5000) {
        let sink = db
            .copy_in("COPY sensor_readings (time, device_id, sensor_name, value) FROM STDIN BINARY")
            .await
            .unwrap();
        let w = BinaryCopyInWriter::new(
            sink,
            &[Type::TIMESTAMPTZ, Type::UUID, Type::VARCHAR, Type::NUMERIC],
        );
        pin_mut!(w);
        for r in chunk {
            w.as_mut().write(&fields(r)).await.unwrap();
        }
        w.finish().await.unwrap();
    }
}

async fn raw_copy(ctx: &Ctx) -> f64 {
    let db = fresh_db(ctx).await;
    let client = connect(&db).await;
    let data = rows(ctx.rows);
    let start = Instant::now();
    let cpu = CpuShares::start(&[]);
    copy_in(&client, &data, |(t, d, s, v)| [t, d, s, v]).await;
    let took = start.elapsed();
    cpu.print_per_reading("raw phase", took, ctx.rows as u64);
    let secs = took.as_secs_f64();
    assert_eq!(count(&client).await, ctx.rows as i64);
    ctx.rows as f64 / secs
}

async fn writer_drain(ctx: &Ctx) -> (f64, u64) {
    let db = fresh_db(ctx).await;
    let kafka = fresh_topics(ctx).await;
    let producer = kafka.producer("bench").unwrap();
    for chunk in rows(ctx.rows).chunks(2000) {
        let sends = chunk.iter().map(|(t, d, s, v)| {
            let reading = iot_domain::Reading {
                device_uuid: *d,
                device_id: d.to_string(),
                sensor_name: s.clone(),
                value: *v,
                time: *t,
                unit: None,
                quality: None,
                received_at: *t,
            };
            let bytes = iot_proto::reading::encode(&reading, "bench");
            let key = iot_proto::reading::key(&reading);
            let producer = &producer;
            let topic = &kafka.readings_topic;
            async move {
                producer
                    .send(
                        iot_kafka::rdkafka::producer::FutureRecord::to(topic)
                            .key(&key)
                            .payload(&bytes),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        futures::future::join_all(sends).await;
    }
    let client = connect(&db).await;
    let writer = Service::writer(&db, &kafka, &format!("bench-{}", unique()));
    // Timed from the first stored row: the consumer group's join at start
    // (seconds, and the same for any amount of data) is not draining.
    wait_rows(&client, 1, Duration::from_secs(120)).await;
    let (start, first) = (Instant::now(), stored(&client).await);
    let cpu = CpuShares::start(&[("ingest-writer", &writer)]);
    let done = wait_rows(&client, ctx.rows as i64, Duration::from_secs(600)).await;
    cpu.print("writer phase", done - start);
    assert_eq!(count(&client).await, ctx.rows as i64);
    // How full the batches were and how much of the phase the database
    // writes took (the writer collects the next batch meanwhile).
    let m = procs::admin_metrics(writer.admin_port).await;
    let sample = |name: &str| procs::metric_sum(&m, name, "");
    let batches = sample("iot_writer_batch_rows_count");
    println!(
        "  writer phase batches: {batches:.0}, {:.0} rows each on average, writing {:.0}% of the time",
        sample("iot_writer_batch_rows_sum") / batches.max(1.0),
        100.0 * sample("iot_writer_batch_write_seconds_sum") / (done - start).as_secs_f64(),
    );
    let rss = writer.peak_rss_kib();
    drop(writer);
    (
        (ctx.rows as i64 - first) as f64 / (done - start).as_secs_f64(),
        rss,
    )
}

/// CPU used during a phase by services, by this program (the simulator
/// runs in it) and by the infrastructure (all processes of PostgreSQL,
/// Tansu and Mosquitto), as shares of one core: on a 2-core machine they
/// compete for 200%.
struct CpuShares<'a> {
    services: Vec<(&'static str, &'a Service, f64)>,
    own: f64,
    infra: Vec<(&'static str, std::collections::HashMap<u32, f64>)>,
    /// The machine's stolen CPU seconds at the start.
    stolen: f64,
}

/// When the program started, and the machine's stolen CPU seconds then.
static RUN_START: std::sync::OnceLock<(Instant, f64)> = std::sync::OnceLock::new();

/// CPU seconds the hypervisor gave to others while this machine's cores
/// wanted them (`steal` in `/proc/stat`): on a shared host it slows every
/// process, and a run with much of it is slower than the code is.
fn stolen_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().find(|l| l.starts_with("cpu "))?;
            cpu.split_whitespace().nth(8)?.parse::<f64>().ok()
        })
        // USER_HZ, which Linux fixes at 100 for /proc/stat.
        .map_or(0.0, |ticks| ticks / 100.0)
}

/// The share of the machine's cores stolen over the `took` since
/// [`stolen_cpu_seconds`] read `then`.
fn stolen_share(then: f64, took: Duration) -> f64 {
    (stolen_cpu_seconds() - then) / (took.as_secs_f64() * cores())
}

/// The machine's cores.
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

const INFRA: [&str; 3] = ["postgres", "tansu", "mosquitto"];

impl<'a> CpuShares<'a> {
    fn start(services: &[(&'static str, &'a Service)]) -> Self {
        Self {
            services: services
                .iter()
                .map(|(n, s)| (*n, *s, s.cpu_seconds()))
                .collect(),
            own: procs::own_cpu_seconds(),
            infra: INFRA.map(|c| (c, procs::cpu_by_command(c))).to_vec(),
            stolen: stolen_cpu_seconds(),
        }
    }

    /// CPU seconds used since the start, by name.
    fn used(&self) -> Vec<(&'static str, f64)> {
        let mut used: Vec<(&'static str, f64)> = self
            .services
            .iter()
            .map(|(n, s, t)| (*n, s.cpu_seconds() - t))
            .collect();
        used.push(("bench", procs::own_cpu_seconds() - self.own));
        for (c, before) in &self.infra {
            used.push((c, procs::cpu_between(before, &procs::cpu_by_command(c))));
        }
        used
    }

    fn print(&self, phase: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let parts: Vec<String> = self
            .used()
            .iter()
            .map(|(n, t)| format!("{n} {:.0}%", 100.0 * t / secs))
            .collect();
        let stolen = stolen_share(self.stolen, took);
        println!(
            "  {phase} CPU: {}; stolen by the host: {:.0}% of the cores",
            parts.join(", "),
            100.0 * stolen
        );
    }

    /// [`Self::print`], then the CPU each reading of `readings` cost and the
    /// rate that cost allows on this machine's cores with nothing idle: a
    /// phase near that bound is limited by CPU, not by waiting. Answers the
    /// µs per reading by process.
    fn print_per_reading(&self, phase: &str, took: Duration, readings: u64) -> PerReading {
        self.print(phase, took);
        let per_reading: PerReading = self
            .used()
            .iter()
            .map(|(n, t)| (*n, 1e6 * t / readings.max(1) as f64))
            .collect();
        let total: f64 = per_reading.iter().map(|(_, us)| us).sum();
        let parts: Vec<String> = per_reading
            .iter()
            .map(|(n, us)| format!("{n} {us:.1}"))
            .collect();
        let cores = cores();
        println!(
            "  {phase} CPU µs per reading: {} = {total:.1} in all: at most {:.0} readings/s on {cores} cores",
            parts.join(" + "),
            cores * 1e6 / total
        );
        per_reading
    }
}

/// CPU µs per reading by process (`bench` is this program: the simulator,
/// and the ceiling's subscriber).
type PerReading = Vec<(&'static str, f64)>;

type Samples = std::sync::Arc<std::sync::Mutex<(u64, std::collections::HashMap<String, u64>)>>;

struct ActiveStatements {
    samples: Samples,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl ActiveStatements {
    async fn start(admin_url: &str, database: &str) -> Self {
        let db = connect(admin_url).await;
        let samples = Samples::default();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (into, database) = (samples.clone(), database.to_owned());
        tokio::spawn(async move {
            let stmt = db
                .prepare(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60)
                     FROM pg_stat_activity
                     WHERE state = 'active' AND datname = $1 AND pid <> pg_backend_pid()",
                )
                .await
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let Ok(rows) = db.query(&stmt, &[&database]).await else {
                    break;
                };
                let mut s = into.lock().unwrap();
                s.0 += 1;
                for r in rows {
                    *s.1.entry(r.get::<_, String>(0)).or_default() += 1;
                }
            }
        });
        Self { samples, stop }
    }

    /// Prints the `top` statements of the phase by share of samples.
    fn print(self, phase: &str, top: usize) {
        let _ = self.stop.send(());
        let (n, by) = std::mem::take(&mut *self.samples.lock().unwrap());
        let mut by: Vec<(String, u64)> = by.into_iter().collect();
        by.sort_by_key(|b| std::cmp::Reverse(b.1));
        let parts: Vec<String> = by
            .iter()
            .take(top)
            .map(|(q, k)| format!("{:.0}% {q}", 100.0 * *k as f64 / n.max(1) as f64))
            .collect();
        println!("  {phase} database busy with: {}", parts.join(" | "));
    }
}

struct E2e {
    single: f64,
    batch: f64,
    /// Publish-to-row latency (when measured): p50 and p99 in ms at a
    /// rate in readings/s.
    latency: Option<(f64, f64, f64)>,
    /// The broker's ceiling (when measured): QoS 1 single readings per
    /// second from the same simulator to a plain subscriber.
    ceiling: Option<f64>,
    rss: Vec<(&'static str, u64)>,
    /// What each reading cost each process, by phase.
    cpu: Vec<(&'static str, PerReading)>,
}

/// The end-to-end phases on `links` (the stack's plain links, or TLS on
/// every link with a broker of the run's own); the broker's ceiling and
/// the latency phase only when `latency`.
async fn end_to_end(ctx: &Ctx, links: &links::Links, latency: bool) -> E2e {
    println!("end to end, {} links:", links.name);
    let db = fresh_db(ctx).await;
    let client = connect(&db).await;
    let kafka = links.kafka(iot_kafka::KafkaConfig {
        readings_topic: format!("bench.readings.{}", unique()),
        dead_letter_topic: format!("bench.dlq.{}", unique()),
        ..Default::default()
    });
    if kafka.brokers == ctx.brokers {
        make_topics(&kafka).await;
    } else {
        // The TLS links' broker is the run's own: it goes with its topics.
        kafka.ensure_topics().await.unwrap();
    }
    let root = format!("bench{}", unique());
    let service_db = links.db(&db);
    let registry = Service::registry_with(
        &service_db,
        links.mqtt_port,
        links.vars("device-registry", Some("BROKER")),
    );
    let writer = Service::writer_with(
        &service_db,
        &kafka,
        &format!("bench-{}", unique()),
        links.vars("ingest-writer", None),
    );
    let gateway = Service::gateway_with(
        &kafka,
        &root,
        links.mqtt_port,
        &registry.grpc_url(),
        links.vars("mqtt-gateway", Some("MQTT")),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let sim = |form: iotctl::simulate::Form, count: u64, rate: f64, prefix: &str| {
        links.simulator(iotctl::simulate::Args {
            device_prefix: prefix.to_owned(),
            rate,
            form,
            batch_size: 50,
            count,
            ..simulator(ctx, &registry.grpc_url(), &root)
        })
    };
    // Register the fleet first so that registration is not timed.
    iotctl::simulate::register(&sim(iotctl::simulate::Form::Single, 0, 1.0, "dev"))
        .await
        .unwrap();

    let n = (ctx.rows / 2) as u64;
    let ceiling = if latency {
        let mut args = sim(iotctl::simulate::Form::Single, n, 0.0, "dev");
        args.topic_prefix = format!("{root}-ceiling/sensors");
        Some(ceiling::measure(links.mqtt_port, args).await)
    } else {
        None
    };
    let (ceiling, ceiling_cpu) = ceiling.unzip();
    let mut cpu_by_phase: Vec<_> = ceiling_cpu
        .map(|c| ("broker ceiling", c))
        .into_iter()
        .collect();
    let services = [
        ("mqtt-gateway", &gateway),
        ("ingest-writer", &writer),
        ("device-registry", &registry),
    ];
    let start = Instant::now();
    let cpu = CpuShares::start(&services);
    let batches = WriterBatches::start(&writer).await;
    let accepted = procs::gateway_accepted(&gateway).await;
    let s = iotctl::simulate::simulate(sim(iotctl::simulate::Form::Single, n, 0.0, "dev"))
        .await
        .unwrap();
    let done = wait_rows(&client, s.readings as i64, Duration::from_secs(900)).await;
    publish_vs_store("single-reading phase", &s, done - start);
    copies("single-reading phase", &gateway, accepted, s.readings).await;
    cpu_by_phase.push((
        "1 reading per message",
        cpu.print_per_reading("single-reading phase", done - start, s.readings),
    ));
    batches.print("single-reading phase", done - start).await;
    let single = s.readings as f64 / (done - start).as_secs_f64();

    let before = stored(&client).await;
    let start = Instant::now();
    let cpu = CpuShares::start(&services);
    let batches = WriterBatches::start(&writer).await;
    let accepted = procs::gateway_accepted(&gateway).await;
    let s = iotctl::simulate::simulate(sim(iotctl::simulate::Form::Batch, n * 2, 0.0, "dev"))
        .await
        .unwrap();
    let done = wait_rows(
        &client,
        before + s.readings as i64,
        Duration::from_secs(900),
    )
    .await;
    publish_vs_store("50-reading phase", &s, done - start);
    copies("50-reading phase", &gateway, accepted, s.readings).await;
    cpu_by_phase.push((
        "50 readings per message",
        cpu.print_per_reading("50-reading phase", done - start, s.readings),
    ));
    batches.print("50-reading phase", done - start).await;
    let batch = s.readings as f64 / (done - start).as_secs_f64();

    // Latency below saturation: the fleet at half the single-message rate,
    // plus a probe device publishing every 20 ms.
    let latency = if latency {
        let latency_rate = (single / 2.0).max(100.0);
        let load = tokio::spawn(iotctl::simulate::simulate(sim(
            iotctl::simulate::Form::Single,
            (latency_rate * 15.0) as u64,
            latency_rate,
            "dev",
        )));
        let (p50_ms, p99_ms) = probe_latency(
            ctx,
            &root,
            &registry.grpc_url(),
            &client,
            Duration::from_secs(10),
        )
        .await;
        load.await.unwrap().unwrap();
        Some((p50_ms, p99_ms, latency_rate))
    } else {
        None
    };

    // What the services' database connections were (the benchmark's own
    // row counting is the one plain connection of a TLS run).
    let ssl: Vec<bool> = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!(
        "  services' database connections: {} of {} over TLS",
        ssl.iter().filter(|s| **s).count(),
        ssl.len()
    );

    let rss = vec![
        ("device-registry", registry.peak_rss_kib()),
        ("ingest-writer", writer.peak_rss_kib()),
        ("mqtt-gateway", gateway.peak_rss_kib()),
    ];
    E2e {
        single,
        batch,
        latency,
        ceiling,
        rss,
        cpu: cpu_by_phase,
    }
}

/// The end-to-end throughput with TLS on every link against plain links,
/// each variant's median over rounds (`IOT_BENCH_TLS_ROUNDS`, default 5)
/// of one run each, alternating which runs first. Every run has a freshly
/// started broker of its own behind a relay in this process (TLS or not),
/// so that the two differ only in encryption.
struct TlsComparison {
    /// Single-reading and 50-reading throughput, readings/s.
    plain: (f64, f64),
    tls: (f64, f64),
    rounds: usize,
}

async fn tls_comparison(ctx: &Ctx) -> TlsComparison {
    let rounds: usize = env("IOT_BENCH_TLS_ROUNDS", "5").parse().unwrap();
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_tls in order {
            let links = if with_tls {
                links::Links::tls().await
            } else {
                links::Links::plain(ctx).await
            };
            let e = end_to_end(ctx, &links, false).await;
            println!(
                "  round {} {}: 1 reading/message {:.0} readings/s, 50 readings/message {:.0} readings/s",
                round + 1,
                links.name,
                e.single,
                e.batch
            );
            drop(links);
            if with_tls { &mut tls } else { &mut plain }.push((e.single, e.batch));
        }
    }
    let median = |runs: &[(f64, f64)]| {
        let of = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        };
        (of(|r| r.0), of(|r| r.1))
    };
    TlsComparison {
        plain: median(&plain),
        tls: median(&tls),
        rounds: rounds.max(1),
    }
}

/// When the simulator had every publish acknowledged (by the broker, which
/// then queues them for the gateway's session) and when the last row was
/// stored: how far the gateway, Kafka and the writer trail the publishers.
fn publish_vs_store(phase: &str, s: &iotctl::simulate::Summary, stored: Duration) {
    println!(
        "  {phase}: all acknowledged after {:.2} s ({:.0} readings/s), all stored after {:.2} s",
        s.elapsed.as_secs_f64(),
        s.rate(),
        stored.as_secs_f64()
    );
}

/// What the gateway took in a phase next to what was published: a reading
/// it accepts more than once (a copy the broker sent again) costs the
/// whole path again.
async fn copies(phase: &str, gateway: &Service, accepted_before: u64, published: u64) {
    println!(
        "  {phase}: the gateway accepted {} readings of {published} published",
        procs::gateway_accepted(gateway).await - accepted_before,
    );
}

/// The writer's batches during a phase: how many, and how full (the
/// database's cost per reading falls as batches grow).
struct WriterBatches {
    port: u16,
    before: String,
}

impl WriterBatches {
    async fn start(writer: &Service) -> Self {
        Self {
            port: writer.admin_port,
            before: procs::admin_metrics(writer.admin_port).await,
        }
    }

    /// Also how much of the phase (`took`) went into database writes.
    async fn print(&self, phase: &str, took: Duration) {
        let now = procs::admin_metrics(self.port).await;
        let since = |name: &str| {
            procs::metric_sum(&now, name, "") - procs::metric_sum(&self.before, name, "")
        };
        let batches = since("iot_writer_batch_rows_count");
        println!(
            "  {phase} batches: {batches:.0}, {:.0} rows each on average, writing {:.0}% of the time",
            since("iot_writer_batch_rows_sum") / batches.max(1.0),
            100.0 * since("iot_writer_batch_write_seconds_sum") / took.as_secs_f64(),
        );
    }
}

/// The simulator on the bench's stack: 100 devices of 3 sensors, QoS 1,
/// single readings at full speed, quiet; phases change what they need.
fn simulator(ctx: &Ctx, registry_url: &str, root: &str) -> iotctl::simulate::Args {
    iotctl::simulate::Args {
        registry_url: registry_url.to_owned(),
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: ctx.mqtt_port,
        mqtt_username: Some(procs::account("publisher").0),
        mqtt_password: Some(procs::account("publisher").1),
        mqtt_tls: Default::default(),
        grpc_tls: Default::default(),
        topic_prefix: format!("{root}/sensors"),
        batch_prefix: format!("{root}/batches"),
        senml_prefix: format!("{root}/senml"),
        devices: 100,
        sensors: 3,
        device_prefix: "dev".into(),
        rate: 0.0,
        rate_per_device: None,
        qos: 1,
        form: iotctl::simulate::Form::Single,
        batch_size: 50,
        duration: 0,
        count: 0,
        spike_ratio: 0.0,
        connections: 4,
        max_in_flight: 1000,
        quiet: true,
        answer_commands: false,
        registered: false,
        commands_root: "commands".into(),
    }
}

/// Publishes a probe reading every 20 ms and measures publish-to-row time.
async fn probe_latency(
    ctx: &Ctx,
    root: &str,
    registry: &str,
    db: &tokio_postgres::Client,
    run: Duration,
) -> (f64, f64) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let mut reg = iot_proto::registry_client(
        registry.to_owned(),
        iot_proto::Scope::Admin,
        &iot_proto::GrpcTls::default(),
    )
    .await
    .unwrap();
    let probe = reg
        .create_device(iot_proto::v1::CreateDeviceRequest {
            device_id: format!("probe-{}", unique()),
            name: "latency probe".into(),
            device_type: "probe".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let probe_uuid = Uuid::parse_str(&probe.id).unwrap();
    let mut opts = MqttOptions::new(format!("probe-{}", unique()), "127.0.0.1", ctx.mqtt_port);
    let (user, password) = procs::account("publisher");
    opts.set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut sent: Vec<Instant> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    let mut seen = 0usize;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while start.elapsed() < run || seen < sent.len() {
        tick.tick().await;
        if start.elapsed() < run {
            let i = sent.len();
            let payload = format!(
                r#"{{"value": {i}, "timestamp": "{}"}}"#,
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
            sent.push(Instant::now());
            client
                .publish(
                    format!("{root}/sensors/{}/probe", probe.device_id),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
        let rows = db
            .query(
                "SELECT value FROM sensor_readings WHERE device_id = $1 AND sensor_name = 'probe'",
                &[&probe_uuid],
            )
            .await
            .unwrap();
        let now = Instant::now();
        if rows.len() > seen {
            let mut values: Vec<usize> = rows
                .iter()
                .map(|r| {
                    r.get::<_, Decimal>(0)
                        .normalize()
                        .to_string()
                        .parse()
                        .unwrap()
                })
                .collect();
            values.sort_unstable();
            for v in &values[seen..] {
                latencies.push((now - sent[*v]).as_secs_f64() * 1000.0);
            }
            seen = values.len();
        }
        assert!(
            start.elapsed() < run + Duration::from_secs(60),
            "probe readings did not all arrive"
        );
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.5), pct(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    RUN_START.get_or_init(|| (Instant::now(), stolen_cpu_seconds()));
    let admin_db = env(
        "IOT_BENCH_DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    );
    let result = run().await;
    drop_fresh_dbs(&admin_db).await;
    delete_made_topics().await;
    result
}

async fn run() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    let ctx = Ctx {
        admin_db: env(
            "IOT_BENCH_DATABASE_URL",
            "postgres://postgres:postgres@127.0.0.1:5432/postgres",
        ),
        brokers: env("IOT_BENCH_KAFKA", "127.0.0.1:19092"),
        mqtt_port: env("IOT_BENCH_MQTT_PORT", "11883").parse()?,
        // The ingest phases measure throughput: they last long enough for
        // the last reading's way from publish to row (a writer batch and a
        // commit) to be a small part of them.
        rows: env(
            "IOT_BENCH_ROWS",
            if what == "ingest" {
                "1000000"
            } else {
                "200000"
            },
        )
        .parse()?,
        backend: iot_db::BackendChoice::Auto,
    };
    match what.as_str() {
        "ingest" => ingest(&ctx).await,
        "faults" => {
            let short = std::env::args().any(|a| a == "--short");
            anyhow::ensure!(
                faults::run(&ctx, short).await,
                "the fault suite lost or duplicated readings"
            );
        }
        "query" => query::run(&ctx).await,
        "graphql" => graphql::run(&ctx).await,
        "alerts" => alerts::run(&ctx).await,
        "late" => late::run(&ctx).await,
        "abuse" => abuse::run(&ctx).await,
        "export" => export::run(&ctx).await,
        "commands" => commands::run(&ctx).await,
        "subscriptions" => subscriptions::run(&ctx).await,
        "scale" => scale::run(&ctx).await,
        "replicas" => replicas::run(&ctx).await,
        "history" => history::run(&ctx).await,
        _ => anyhow::bail!(
            "usage: iot-bench ingest|query|graphql|alerts|late|abuse|export|commands|subscriptions|scale|replicas|history|faults [--short] [--keep]"
        ),
    }
    Ok(())
}

/// `iot-bench ingest`: raw `COPY`, the writer draining Kafka, end to end
/// with the broker's ceiling and latency, and the TLS comparison.
/// The ingest figures of one storage backend.
struct IngestRun {
    backend: iot_db::Backend,
    raw: f64,
    writer: f64,
    writer_rss: u64,
    e: E2e,
}

impl IngestRun {
    async fn measure(ctx: &Ctx, backend: iot_db::Backend) -> Self {
        let ctx = &Ctx {
            backend: iot_db::BackendChoice::Force(backend),
            ..ctx.clone()
        };
        println!("backend {backend}:");
        // Raw `COPY` before and after the other phases, the faster the
        // baseline: a database that was slow once (a checkpoint, a cold
        // cache) does not flatter the ratios.
        let first = raw_copy(ctx).await;
        println!(
            "raw COPY into sensor_readings      {first:>10.0} rows/s (before the other phases)"
        );
        let (writer, writer_rss) = writer_drain(ctx).await;
        let e = end_to_end(ctx, &links::Links::stack(ctx), true).await;
        let again = raw_copy(ctx).await;
        let raw = first.max(again);
        println!("raw COPY into sensor_readings      {again:>10.0} rows/s (after them)");
        println!("raw COPY, the faster               {raw:>10.0} rows/s   1.00x (baseline)");
        println!(
            "ingest-writer draining Kafka       {writer:>10.0} rows/s   {:.2}x",
            writer / raw
        );
        let (p50_ms, p99_ms, latency_rate) = e.latency.unwrap();
        println!(
            "end to end, 1 reading/message      {:>10.0} readings/s {:.2}x",
            e.single,
            e.single / raw
        );
        println!(
            "broker ceiling, 1 reading/message  {:>10.0} readings/s; end to end is {:.2}x of it",
            e.ceiling.unwrap(),
            e.single / e.ceiling.unwrap()
        );
        println!(
            "end to end, 50 readings/message    {:>10.0} readings/s {:.2}x",
            e.batch,
            e.batch / raw
        );
        println!(
            "publish-to-row latency at {latency_rate:.0} readings/s: p50 {p50_ms:.1} ms, p99 {p99_ms:.1} ms"
        );
        println!(
            "peak RSS: ingest-writer (drain phase) {} MiB",
            writer_rss / 1024
        );
        for (name, kib) in &e.rss {
            println!("peak RSS: {name} {} MiB", kib / 1024);
        }
        Self {
            backend,
            raw,
            writer,
            writer_rss,
            e,
        }
    }

    fn peak_rss_mib(&self) -> u64 {
        self.e
            .rss
            .iter()
            .map(|(_, kib)| *kib)
            .chain([self.writer_rss])
            .max()
            .unwrap_or(0)
            / 1024
    }
}

/// The CPU each reading cost each process, by phase and backend: what
/// limits each figure, and the per-process costs `docs/capacity.md` sizes
/// replicas from.
fn cpu_table(runs: &[IngestRun]) -> String {
    const COLUMNS: [(&str, &str); 7] = [
        ("mqtt-gateway", "gateway"),
        ("ingest-writer", "writer"),
        ("device-registry", "registry"),
        ("bench", "simulator (and the ceiling's subscriber)"),
        ("postgres", "PostgreSQL"),
        ("tansu", "Tansu"),
        ("mosquitto", "Mosquitto"),
    ];
    let mut table = format!(
        "CPU µs per reading, by process (all of its threads or processes; \
         one reading per message is one message):\n\n| phase | backend | {} | all |\n|---|---|{}---|\n",
        COLUMNS.map(|(_, title)| title).join(" | "),
        "---:|".repeat(COLUMNS.len())
    );
    for r in runs {
        for (phase, per_reading) in &r.e.cpu {
            let cell = |process: &str| {
                per_reading
                    .iter()
                    .find(|(n, _)| *n == process)
                    .map_or(String::new(), |(_, us)| format!("{us:.1}"))
            };
            let all: f64 = per_reading.iter().map(|(_, us)| us).sum();
            table += &format!(
                "| {phase} | {} | {} | {all:.1} |\n",
                r.backend,
                COLUMNS.map(|(process, _)| cell(process)).join(" | ")
            );
        }
    }
    table
}

/// The backends this server runs: plain PostgreSQL always, TimescaleDB
/// when the extension is installed and preloaded.
async fn usable_backends(ctx: &Ctx) -> Vec<iot_db::Backend> {
    let db = connect(&ctx.admin_db).await;
    let mut out = vec![iot_db::Backend::Postgres];
    if iot_db::migrate::timescaledb_usable(&db).await.unwrap() {
        out.push(iot_db::Backend::TimescaleDb);
    }
    out
}

async fn ingest(ctx: &Ctx) {
    println!("ingest benchmark, {} rows per phase", ctx.rows);
    let mut runs = Vec::new();
    for backend in usable_backends(ctx).await {
        runs.push(IngestRun::measure(ctx, backend).await);
    }
    let t = tls_comparison(ctx).await;
    println!(
        "TLS on every link, 1 reading/message   plain {:.0} / TLS {:.0} readings/s   {:.2}x",
        t.plain.0,
        t.tls.0,
        t.tls.0 / t.plain.0
    );
    println!(
        "TLS on every link, 50 readings/message plain {:.0} / TLS {:.0} readings/s   {:.2}x",
        t.plain.1,
        t.tls.1,
        t.tls.1 / t.plain.1
    );
    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
        // One column per backend; a target is met when every backend meets it.
        let row = |phase: &str, target: &str, cell: &dyn Fn(&IngestRun) -> (String, bool)| {
            let cells: Vec<(String, bool)> = runs.iter().map(cell).collect();
            let verdict = if target.is_empty() {
                String::new()
            } else {
                format!("{target}: {}", met(cells.iter().all(|(_, ok)| *ok)))
            };
            format!(
                "| {phase} | {} | {verdict} |\n",
                cells
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        let mut table = format!(
            "| phase | {} | target |\n|---|{}---|\n",
            runs.iter()
                .map(|r| r.backend.to_string())
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(runs.len())
        );
        table += &row(
            "raw `COPY` into `sensor_readings` (baseline: the faster of a run before and one after the other phases)",
            "",
            &|r| (format!("{:.0} rows/s", r.raw), true),
        );
        table += &row("ingest-writer draining Kafka", "≥ 0.70×", &|r| {
            (
                format!("{:.2}×", r.writer / r.raw),
                r.writer / r.raw >= 0.70,
            )
        });
        table += &row(
            "end to end, 1 reading per message (QoS 1)",
            "≥ 25 000/s",
            &|r| {
                (
                    format!("{:.0} readings/s", r.e.single),
                    r.e.single >= 25_000.0,
                )
            },
        );
        table += &row(
            "broker ceiling: the same simulator's QoS 1 single readings to a plain \
             subscriber, no platform",
            "",
            &|r| (format!("{:.0} readings/s", r.e.ceiling.unwrap()), true),
        );
        table += &row(
            "end to end, 1 reading per message ÷ broker ceiling",
            "≥ 0.70×",
            &|r| {
                let x = r.e.single / r.e.ceiling.unwrap();
                (format!("{x:.2}×"), x >= 0.70)
            },
        );
        table += &row(
            "end to end, 50 readings per message ÷ raw `COPY`",
            "≥ 0.80×",
            &|r| {
                (
                    format!("{:.2}×", r.e.batch / r.raw),
                    r.e.batch / r.raw >= 0.80,
                )
            },
        );
        table += &row("publish-to-row p50 / p99", "p99 ≤ 1 s", &|r| {
            let (p50, p99, rate) = r.e.latency.unwrap();
            (
                format!("{p50:.0} / {p99:.0} ms at {rate:.0} readings/s"),
                p99 <= 1000.0,
            )
        });
        table += &row(
            "peak RSS MiB (writer draining, registry, writer, gateway)",
            "< 100",
            &|r| {
                let each = std::iter::once(r.writer_rss)
                    .chain(r.e.rss.iter().map(|(_, kib)| *kib))
                    .map(|kib| (kib / 1024).to_string())
                    .collect::<Vec<_>>()
                    .join(" / ");
                (each, r.peak_rss_mib() < 100)
            },
        );
        let section = format!(
            "{}\n\n{} rows per phase, on each storage backend the server runs (in turn, \
             each phase with a database of its own); every process on one box, against a \
             freshly started Tansu (memory storage). Ratios are against the raw `COPY` of \
             the same backend in the same run. On TimescaleDB `sensor_readings` is a \
             hypertable with compression; the rollups are the writer's tables on both \
             ([storage.md](storage.md)).\n\n{table}",
            report_header("Ingest", "cargo xtask bench ingest"),
            ctx.rows,
        );
        let section = format!(
            "{section}\n| with TLS, on {} (what `auto` chooses) | figure | target |\n|---|---|---|\n\
             | end to end with TLS on every link ÷ plain, 1 reading per message \
             (plain {:.0} / TLS {:.0} readings/s) | {:.2}× | ≥ 0.85×: {} |\n\
             | end to end with TLS on every link ÷ plain, 50 readings per message \
             (plain {:.0} / TLS {:.0} readings/s) | {:.2}× | ≥ 0.85×: {} |\n\n\
             TLS comparison: {} rounds of a plain and a TLS run, alternating which goes \
             first; figures are each variant's median. Each run has a freshly started Tansu \
             of its own (memory storage) behind a relay in the benchmark process: plain TCP \
             for the plain run, a rustls TLS terminator for the TLS run (Tansu cannot serve \
             TLS itself). With TLS, MQTT: the gateway, the registry's admin session and the \
             simulator on Mosquitto's TLS listener (TLS 1.2, the local CA); PostgreSQL: \
             the services' `sslmode=verify-full`; gRPC: mTLS with a certificate per \
             service from a CA made for the run, the benchmark calling as `iotctl`; \
             Kafka: `security.protocol=ssl` to the terminator. The benchmark's own \
             row counting stays on a plain PostgreSQL connection.\n",
            runs.last()
                .map(|r| r.backend.to_string())
                .unwrap_or_default(),
            t.plain.0,
            t.tls.0,
            t.tls.0 / t.plain.0,
            met(t.tls.0 / t.plain.0 >= 0.85),
            t.plain.1,
            t.tls.1,
            t.tls.1 / t.plain.1,
            met(t.tls.1 / t.plain.1 >= 0.85),
            t.rounds,
        );
        let section = format!("{section}\n{}", cpu_table(&runs));
        replace_report_section(&path, "## Ingest", &section);
    }
}
