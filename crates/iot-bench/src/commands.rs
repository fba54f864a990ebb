//! `iot-bench commands`: the command round trip, from `SendCommand` to
//! `succeeded`, with 1,000 simulated devices answering (`iotctl`'s
//! responders: each device on a connection of its own, with its own broker
//! account, acknowledging receipt and answering `ok`).
//!
//! A release device-registry on a fresh database; two phases:
//! 1. one at a time: 200 commands, each sent after the previous one
//!    succeeded (the path's latency with nothing else going on);
//! 2. fleet: every device gets a command at once (sent 64 at a time), three
//!    rounds (3,000 commands): latency under a burst, and throughput.
//!
//! The round trip of a command is `finished_at - created_at` as the
//! registry stored them (PostgreSQL's clock at the insert and at the
//! answer's update); the phases also report the wall time the caller saw.
//! Figures go to `docs/benchmarks.md` (`IOT_BENCH_REPORT`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_proto::v1;
use tokio::sync::Semaphore;

use crate::procs::Service;

const DEVICES: usize = 1000;
const SERIAL: usize = 200;
const ROUNDS: usize = 3;
const IN_FLIGHT: usize = 64;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Round trips (ms) of the commands `ids` once all have ended; panics
/// unless every one succeeded.
async fn round_trips(db: &tokio_postgres::Client, ids: &[uuid::Uuid]) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM device_commands WHERE id = ANY($1) \
                 AND status IN ('queued', 'sent', 'delivered')",
                &[&ids],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} commands still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = db
        .query(
            "SELECT status, EXTRACT(EPOCH FROM finished_at - created_at)::float8 * 1000 \
             FROM device_commands WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    let mut ms: Vec<f64> = rows
        .iter()
        .map(|r| {
            let status: String = r.get(0);
            assert_eq!(status, "succeeded");
            r.get(1)
        })
        .collect();
    assert_eq!(ms.len(), ids.len());
    ms.sort_by(f64::total_cmp);
    ms
}

async fn send(c: &mut iot_proto::CommandsClient, device: &str, n: usize) -> uuid::Uuid {
    let sent = c
        .send_command(v1::SendCommandRequest {
            device_id: device.to_owned(),
            name: "set-interval".into(),
            payload_json: format!(r#"{{"interval": {n}}}"#),
            timeout_secs: 120,
        })
        .await
        .unwrap()
        .into_inner();
    uuid::Uuid::parse_str(&sent.id).unwrap()
}

pub async fn run(ctx: &crate::Ctx) {
    let root = format!("b{}", crate::unique());
    let url = crate::fresh_db(ctx).await;
    let db = crate::connect(&url).await;
    let registry = Service::registry_with(
        &url,
        ctx.mqtt_port,
        vec![
            ("BROKER__COMMANDS_ROOT", format!("{root}/commands")),
            ("BROKER__STATE_ROOT", format!("{root}/state")),
        ],
    );
    let grpc = registry.grpc_url();
    let tls = iot_proto::GrpcTls::default();
    let mut devices = None;
    for _ in 0..100 {
        if let Ok(c) = iot_proto::registry_client(grpc.clone(), iot_proto::Scope::Admin, &tls).await
            && c.clone()
                .list_devices(v1::ListDevicesRequest::default())
                .await
                .is_ok()
        {
            devices = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let devices = devices.expect("device-registry answers");
    let mut commands = iot_proto::commands_client(grpc, iot_proto::Scope::Admin, &tls)
        .await
        .unwrap();

    // The fleet, 8 registrations at a time (each one an account at the
    // broker).
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(8));
    let mut made = tokio::task::JoinSet::new();
    for n in 0..DEVICES {
        let (gate, mut c, root) = (gate.clone(), devices.clone(), root.clone());
        made.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let d = c
                .create_device(v1::CreateDeviceRequest {
                    device_id: format!("{root}-dev-{n:04}"),
                    name: format!("bench {n}"),
                    device_type: "valve".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let creds = d.credentials.unwrap();
            (creds.username, creds.password)
        });
    }
    let mut accounts = made.join_all().await;
    accounts.sort();
    println!(
        "command round trip: {DEVICES} devices registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let broker = iotctl::responder::Broker {
        host: "127.0.0.1".into(),
        port: ctx.mqtt_port,
        // The local stack's plain listener.
        tls: Default::default(),
        commands_root: format!("{root}/commands"),
    };
    let names: Vec<String> = accounts.iter().map(|(u, _)| u.clone()).collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (responders, answered) = iotctl::responder::start(&broker, accounts, stopped)
        .await
        .unwrap();
    println!("{} responders subscribed", names.len());

    // Phase 1: one at a time.
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..SERIAL {
        let id = send(&mut commands, &names[n % names.len()], n).await;
        ids.push(id);
        round_trips(&db, &[id]).await;
    }
    let serial_wall = started.elapsed().as_secs_f64();
    let serial = round_trips(&db, &ids).await;
    let (s50, s99) = (percentile(&serial, 0.5), percentile(&serial, 0.99));
    println!(
        "one at a time: {SERIAL} commands, round trip p50 {s50:.1} ms, p99 {s99:.1} ms \
         (caller's wall time {:.1} ms per command, polling included)",
        serial_wall * 1000.0 / SERIAL as f64
    );

    // Phase 2: the whole fleet at once, three rounds.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut sent = tokio::task::JoinSet::new();
    for round in 0..ROUNDS {
        for (i, name) in names.iter().enumerate() {
            let (gate, mut c, name) = (gate.clone(), commands.clone(), name.clone());
            sent.spawn(async move {
                let _p = gate.acquire().await.unwrap();
                send(&mut c, &name, round * DEVICES + i).await
            });
        }
    }
    let fleet_ids = sent.join_all().await;
    let fleet = round_trips(&db, &fleet_ids).await;
    let fleet_wall = started.elapsed().as_secs_f64();
    let (f50, f99) = (percentile(&fleet, 0.5), percentile(&fleet, 0.99));
    let rate = fleet_ids.len() as f64 / fleet_wall;
    println!(
        "fleet: {} commands to {DEVICES} devices ({IN_FLIGHT} sends in flight), round trip \
         p50 {f50:.1} ms, p99 {f99:.1} ms; all succeeded in {fleet_wall:.1} s ({rate:.0} commands/s)",
        fleet_ids.len()
    );
    let _ = stop.send(true);
    responders.join_all().await;
    let errors = answered.errors.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "responders answered {} commands, {errors} connection or publish errors",
        answered.commands.load(std::sync::atomic::Ordering::Relaxed)
    );
    registry.terminate();

    if let Ok(path) = std::env::var("IOT_BENCH_REPORT") {
        let heading = "## Command round trip";
        let body = format!(
            "{}\n\nFrom `SendCommand` to `succeeded` as device-registry stored them \
             (`finished_at - created_at`: the insert, the publish at QoS 1 with the broker's \
             PUBACK, the device's receipt and its `ok` answer, each stored), with {DEVICES} \
             simulated devices on connections of their own (`iotctl::responder`, MQTT 5), \
             one release device-registry and the local Mosquitto and PostgreSQL on this machine.\n\n\
             | phase | commands | p50 | p99 | throughput |\n|---|---|---|---|---|\n\
             | one at a time | {SERIAL} | {s50:.1} ms | {s99:.1} ms | |\n\
             | whole fleet at once, {ROUNDS} rounds, {IN_FLIGHT} sends in flight | {} | {f50:.1} ms | {f99:.1} ms | {rate:.0} commands/s |\n",
            crate::report_header(
                heading.trim_start_matches("## "),
                "cargo xtask bench commands"
            ),
            fleet_ids.len(),
        );
        crate::replace_report_section(&path, heading, &body);
    }
}
