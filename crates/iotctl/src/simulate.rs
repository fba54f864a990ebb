//! `iotctl simulate`: a small fleet publishing readings over MQTT (QoS 1).

use std::time::{Duration, Instant};

use iot_proto::v1::CreateDeviceRequest;
use iot_proto::v1::device_registry_client::DeviceRegistryClient;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(clap::Args)]
pub struct Args {
    #[arg(
        long,
        env = "IOT_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    registry_url: String,
    #[arg(long, default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long, default_value_t = 11883)]
    mqtt_port: u16,
    #[arg(long, default_value = "sensors")]
    topic_prefix: String,
    /// Number of simulated devices (registered if missing).
    #[arg(long, default_value_t = 5)]
    devices: u32,
    /// Device ids are `{prefix}-{n}`.
    #[arg(long, default_value = "sim")]
    device_prefix: String,
    /// Readings per second, across the fleet.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
}

const SENSORS: [(&str, &str, f64, f64); 3] = [
    ("temperature", "C", 21.0, 4.0),
    ("humidity", "%", 45.0, 10.0),
    ("pressure", "hPa", 1013.0, 8.0),
];

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number"
    );
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    let mut registry = DeviceRegistryClient::connect(args.registry_url.clone()).await?;
    let ids: Vec<String> = (1..=args.devices)
        .map(|n| format!("{}-{n:04}", args.device_prefix))
        .collect();
    for id in &ids {
        let created = registry
            .create_device(CreateDeviceRequest {
                device_id: id.clone(),
                name: format!("Simulated {id}"),
                device_type: "multi_sensor".into(),
                location: Some("simulation".into()),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => println!("registered {id}"),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(s.into()),
        }
    }

    let mut opts = MqttOptions::new(
        format!("iotctl-sim-{}", std::process::id()),
        &args.mqtt_host,
        args.mqtt_port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (mut sent, mut acked) = (0u64, 0u64);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut tick = tokio::time::interval(interval);
    let started = Instant::now();
    let end = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    let mut step: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if end.is_some_and(|e| Instant::now() >= e) { break; }
                let device = &ids[(step as usize) % ids.len()];
                let (sensor, unit, base, spread) = SENSORS[(step as usize / ids.len()) % SENSORS.len()];
                let phase = (step as f64) / 20.0;
                let value = ((base + spread * phase.sin()) * 100.0).round() / 100.0;
                let payload = serde_json::json!({
                    "value": value,
                    "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "unit": unit,
                });
                let topic = format!("{}/{device}/{sensor}", args.topic_prefix);
                client.publish(topic, QoS::AtLeastOnce, false, payload.to_string()).await?;
                step += 1;
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => sent += 1,
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Wait a little for outstanding acknowledgements.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while acked < sent {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(Outgoing::Publish(_))) => sent += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    println!(
        "published {sent} readings from {} devices in {:.1}s; {acked} acknowledged (QoS 1)",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
