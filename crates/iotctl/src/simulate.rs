//! `iotctl simulate`: a fleet of devices publishing realistic readings over
//! MQTT, for demos and load tests. Devices are registered first; each has
//! `--sensors` sensors whose values follow a sine curve plus noise, with
//! occasional out-of-range spikes (which the gateway must dead-letter).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use iot_proto::v1::CreateDeviceRequest;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// One reading per message on `{prefix}/{device}/{sensor}`.
    Single,
    /// `--batch-size` readings of one device per message on `{batch-prefix}/{device}`.
    Batch,
    /// A SenML pack of `--batch-size` records on `{senml-prefix}/{device}`.
    Senml,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[arg(
        long,
        env = "IOT_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub registry_url: String,
    #[command(flatten)]
    pub grpc_tls: crate::grpc_tls::GrpcTlsArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, default_value_t = 11883)]
    pub mqtt_port: u16,
    /// Broker account to publish with: a platform publisher account, since
    /// one connection publishes for several devices.
    #[arg(long, env = "IOT_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    #[arg(long, env = "IOT_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    #[command(flatten)]
    pub mqtt_tls: MqttTls,
    #[arg(long, default_value = "sensors")]
    pub topic_prefix: String,
    #[arg(long, default_value = "batches")]
    pub batch_prefix: String,
    #[arg(long, default_value = "senml")]
    pub senml_prefix: String,
    /// Number of simulated devices (registered if missing).
    #[arg(long, default_value_t = 5)]
    pub devices: u32,
    /// Sensors per device.
    #[arg(long, default_value_t = 3)]
    pub sensors: u32,
    /// Device ids are `{device-prefix}-{n}`.
    #[arg(long, default_value = "sim")]
    pub device_prefix: String,
    /// Total readings per second across the fleet (0: as fast as possible).
    #[arg(long, default_value_t = 10.0, conflicts_with = "rate_per_device")]
    pub rate: f64,
    /// Readings per second per device (instead of --rate).
    #[arg(long)]
    pub rate_per_device: Option<f64>,
    /// MQTT QoS: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    #[arg(long, value_enum, default_value_t = Form::Single)]
    pub form: Form,
    /// Readings per message for the batch and SenML forms.
    #[arg(long, default_value_t = 50)]
    pub batch_size: u32,
    /// Stop after this many seconds (0: no time limit).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// Stop after this many readings (0: no count limit).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Share of readings that are out-of-range spikes (rejected by the gateway).
    #[arg(long, default_value_t = 0.001)]
    pub spike_ratio: f64,
    /// MQTT connections to spread the fleet over.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// QoS 1 messages in flight per connection.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: u16,
    /// Do not print progress.
    #[arg(long)]
    pub quiet: bool,
    /// The devices also answer commands (each on a connection of its own,
    /// with its own broker account: their passwords are rotated to get
    /// one).
    #[arg(long)]
    pub answer_commands: bool,
    /// The fleet is registered already: publish without registering it
    /// first (a large fleet's registration is a thousand devices a call).
    #[arg(long, conflicts_with = "answer_commands")]
    pub registered: bool,
    /// device-registry's `broker.commands_root`.
    #[arg(long, default_value = "commands")]
    pub commands_root: String,
}

impl Args {
    /// The command line's settings: its defaults, with `args` (flags as
    /// `iotctl simulate` takes them) on top.
    pub fn from_flags<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Simulate {
            #[command(flatten)]
            args: Args,
        }
        let flags = std::iter::once(std::ffi::OsString::from("simulate"))
            .chain(args.into_iter().map(Into::into));
        Simulate::try_parse_from(flags).map(|s| s.args)
    }
}

/// TLS to the broker: on when a CA file is given.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MqttTls {
    /// Connect over TLS, trusting this CA (PEM) for the broker's
    /// certificate, which must name --mqtt-host; --mqtt-port is then the
    /// broker's TLS listener (8883; 18883 on the local stack).
    #[arg(long, env = "IOT_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<String>,
    /// A client certificate (PEM), for a broker that asks for one.
    #[arg(
        long,
        env = "IOT_MQTT_CERT_FILE",
        requires = "mqtt_key_file",
        requires = "mqtt_ca_file"
    )]
    pub mqtt_cert_file: Option<String>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "IOT_MQTT_KEY_FILE", requires = "mqtt_cert_file")]
    pub mqtt_key_file: Option<String>,
}

impl MqttTls {
    pub fn config(&self) -> iot_mqtt::TlsConfig {
        iot_mqtt::TlsConfig {
            enabled: self.mqtt_ca_file.is_some(),
            ca_file: self.mqtt_ca_file.clone(),
            cert_file: self.mqtt_cert_file.clone(),
            key_file: self.mqtt_key_file.clone(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub messages: u64,
    pub readings: u64,
    /// Publishes the broker accepted (QoS 1).
    pub acked: u64,
    /// Connection errors (a connection that breaks while acknowledgements
    /// are still due counts too).
    pub errors: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    readings: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

const SENSOR_KINDS: [(&str, &str, f64, f64); 6] = [
    ("temperature", "Cel", 21.0, 4.0),
    ("humidity", "%RH", 45.0, 10.0),
    ("pressure", "hPa", 1013.0, 8.0),
    ("co2", "ppm", 600.0, 150.0),
    ("battery", "%", 80.0, 15.0),
    ("vibration", "mm/s", 2.0, 1.5),
];

/// Small deterministic PRNG (xorshift64*), so runs need no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal noise (sum of uniforms).
    fn noise(&mut self) -> f64 {
        (0..4).map(|_| self.next()).sum::<f64>() - 2.0
    }
}

struct Series {
    device: String,
    sensor: String,
    unit: &'static str,
    base: f64,
    amp: f64,
    phase: f64,
    last: DateTime<Utc>,
}

impl Series {
    fn sample(
        &mut self,
        rng: &mut Rng,
        spike_ratio: f64,
        started: Instant,
    ) -> (f64, DateTime<Utc>) {
        let t = started.elapsed().as_secs_f64();
        let v = if rng.next() < spike_ratio {
            // Outside NUMERIC(10,4): the gateway dead-letters it.
            9_999_999.0
        } else {
            let raw = self.base
                + self.amp * (t / 60.0 * std::f64::consts::TAU + self.phase).sin()
                + self.amp * 0.05 * rng.noise();
            (raw * 100.0).round() / 100.0
        };
        // At least 1 ms apart per series, so no two readings share a key
        // (SenML times are read to the microsecond, but keep a margin).
        let now = Utc::now().max(self.last + chrono::Duration::milliseconds(1));
        self.last = now;
        (v, now)
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The simulated devices' ids: `{device-prefix}-{n}`.
fn device_ids(args: &Args) -> Vec<String> {
    (1..=args.devices)
        .map(|n| format!("{}-{n:04}", args.device_prefix))
        .collect()
}

/// Registers the fleet's devices (those missing) and returns their ids.
pub async fn register(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut registry = iot_proto::registry_client(
        args.registry_url.clone(),
        iot_proto::Scope::Admin,
        &args.grpc_tls.config(),
    )
    .await?;
    let ids = device_ids(args);
    // The bulk call, a thousand at a time: a fleet of a hundred thousand
    // is registered (or found registered) in a hundred calls.
    for chunk in ids.chunks(1000) {
        let devices = chunk
            .iter()
            .map(|id| CreateDeviceRequest {
                device_id: id.clone(),
                name: format!("Simulated {id}"),
                device_type: "multi_sensor".into(),
                location: Some("simulation".into()),
                ..Default::default()
            })
            .collect();
        let results = registry
            .create_devices(iot_proto::v1::CreateDevicesRequest {
                devices,
                issue_credentials: true,
            })
            .await?
            .into_inner()
            .results;
        if let Some(r) = results
            .iter()
            .find(|r| !r.error_code.is_empty() && r.error_code != "ALREADY_EXISTS")
        {
            anyhow::bail!("registering {}: {} {}", r.device_id, r.error_code, r.error);
        }
    }
    Ok(ids)
}

/// Starts a command responder for each of `ids` (their passwords rotated:
/// the registry keeps only hashes), until `stop` turns true.
pub async fn answer_commands(
    args: &Args,
    ids: &[String],
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinSet<()>, Arc<crate::responder::Answered>)> {
    let mut registry = iot_proto::registry_client(
        args.registry_url.clone(),
        iot_proto::Scope::Admin,
        &args.grpc_tls.config(),
    )
    .await?;
    let mut accounts = Vec::with_capacity(ids.len());
    for id in ids {
        let c = registry
            .rotate_credentials(iot_proto::v1::GetDeviceRequest { id: id.clone() })
            .await?
            .into_inner();
        accounts.push((c.username, c.password));
    }
    let broker = crate::responder::Broker {
        host: args.mqtt_host.clone(),
        port: args.mqtt_port,
        tls: args.mqtt_tls.config(),
        commands_root: args.commands_root.clone(),
    };
    crate::responder::start(&broker, accounts, stop).await
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let s = simulate(args).await?;
    println!(
        "sent {} messages ({} readings) in {:.1}s: {:.0} readings/s; {} acknowledged; {} errors",
        s.messages,
        s.readings,
        s.elapsed.as_secs_f64(),
        s.rate(),
        s.acked,
        s.errors
    );
    Ok(())
}

/// Runs the simulation and returns its summary.
pub async fn simulate(args: Args) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be a number >= 0"
    );
    anyhow::ensure!(
        args.rate_per_device
            .is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate-per-device must be positive"
    );
    anyhow::ensure!(
        args.devices > 0 && args.sensors > 0,
        "--devices and --sensors must be at least 1"
    );
    anyhow::ensure!(
        args.sensors as usize <= SENSOR_KINDS.len() * 100,
        "at most 600 sensors per device"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.batch_size),
        "--batch-size must be in 1..=10000"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.spike_ratio),
        "--spike-ratio must be in 0..=1"
    );
    // Unusable TLS files end the run before any device is registered.
    let link = iot_mqtt::Link::new(&args.mqtt_host, args.mqtt_port);
    let transport = args
        .mqtt_tls
        .config()
        .transport()
        .map_err(|e| link.error(&e))?;
    let ids = if args.registered {
        device_ids(&args)
    } else {
        register(&args).await?
    };
    // Held until the run ends: the responders stop when it is dropped.
    let (_answering, responders) = if args.answer_commands {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (set, _) = answer_commands(&args, &ids, stopped).await?;
        (Some(stop), Some(set))
    } else {
        (None, None)
    };
    let total_rate = args
        .rate_per_device
        .map_or(args.rate, |r| r * f64::from(args.devices));
    let connections = args.connections.clamp(1, args.devices);
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Devices given to the connections before this one: `--count` is
    // split in proportion, exactly (the shares add up to the count).
    let mut before = 0u64;
    for c in 0..connections {
        let devices: Vec<String> = ids
            .iter()
            .skip(c as usize)
            .step_by(connections as usize)
            .cloned()
            .collect();
        let args = args.clone();
        let transport = transport.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        let share = total_rate * devices.len() as f64 / ids.len() as f64;
        let n = ids.len() as u64;
        let through = before + devices.len() as u64;
        let count = (args.count > 0).then(|| args.count * through / n - args.count * before / n);
        before = through;
        tasks.push(tokio::spawn(async move {
            let run = Run {
                n: c,
                rate: share,
                count,
                started,
            };
            connection(run, &args, transport, devices, &counters, stop).await
        }));
    }
    let show = !args.quiet;
    let tty = std::io::stderr().is_terminal();
    let end = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    // The readings the run is to send, when it knows.
    let goal = (args.count > 0).then_some(args.count).or_else(|| {
        (args.duration > 0)
            .then_some((total_rate * args.duration as f64) as u64)
            .filter(|g| *g > 0)
    });
    // On a terminal, a progress bar; elsewhere (a log), a line now and then.
    let bar = (show && tty).then(|| progress_bar(goal));
    let mut tick = tokio::time::interval(Duration::from_millis(if tty { 500 } else { 5000 }));
    let mut last = (Instant::now(), 0u64);
    // Ends as soon as every connection is done (not at the next tick), so
    // the elapsed time and rate are exact.
    let mut all = std::pin::pin!(futures::future::join_all(tasks));
    let results = loop {
        tokio::select! {
            results = &mut all => break results,
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => stop.store(true, Ordering::Relaxed),
            () = async {
                match end {
                    Some(e) => tokio::time::sleep_until(e.into()).await,
                    None => std::future::pending().await,
                }
            }, if !stop.load(Ordering::Relaxed) => stop.store(true, Ordering::Relaxed),
        }
        if show {
            let readings = counters.readings.load(Ordering::Relaxed);
            let rate = (readings - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), readings);
            let status = format!(
                "{} acked, {} errors, {:.0}/s",
                counters.acked.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
                rate
            );
            match &bar {
                Some(bar) => {
                    // A goal from --duration is an estimate: past it, the
                    // bar stays full and the count goes on.
                    if bar.length().is_some_and(|l| readings > l) {
                        bar.set_length(readings);
                    }
                    bar.set_position(readings);
                    bar.set_message(status);
                }
                None => {
                    let done = goal.map_or(String::new(), |g| {
                        format!("{:.0}% ", (readings as f64 / g as f64).min(1.0) * 100.0)
                    });
                    eprintln!("{done}{readings} readings, {status}");
                }
            }
        }
    };
    let elapsed = started.elapsed();
    if let Some(bar) = bar {
        bar.finish();
    }
    for r in results {
        r??;
    }
    drop(_answering);
    if let Some(mut set) = responders {
        while set.join_next().await.is_some() {}
    }
    Ok(Summary {
        messages: counters.messages.load(Ordering::Relaxed),
        readings: counters.readings.load(Ordering::Relaxed),
        acked: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed,
    })
}

/// The terminal's progress bar: readings sent out of `goal` (a counter
/// when there is none), then the status message.
fn progress_bar(goal: Option<u64>) -> indicatif::ProgressBar {
    let (bar, template) = match goal {
        Some(g) => (
            indicatif::ProgressBar::new(g),
            "[{bar:30}] {pos} readings, {msg}",
        ),
        None => (indicatif::ProgressBar::no_length(), "{pos} readings, {msg}"),
    };
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#.");
    bar.with_style(style)
}

/// One connection's share of the run.
struct Run {
    /// Its number.
    n: u32,
    /// Readings per second.
    rate: f64,
    /// Readings to send, if the run has a count.
    count: Option<u64>,
    started: Instant,
}

/// Publishes for `devices` over one connection. A TLS handshake that fails
/// before the connection was ever up ends the run with an error naming the
/// broker: a certificate the client does not trust stays untrusted.
async fn connection(
    run: Run,
    args: &Args,
    transport: rumqttc::Transport,
    devices: Vec<String>,
    counters: &Counters,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let Run {
        n,
        rate,
        count,
        started,
    } = run;
    let link = iot_mqtt::Link::new(&args.mqtt_host, args.mqtt_port);
    let mut opts = MqttOptions::new(
        format!("iotctl-sim-{}-{n}", std::process::id()),
        &args.mqtt_host,
        args.mqtt_port,
    );
    opts.set_transport(transport);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(args.max_in_flight.max(1))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = &args.mqtt_username {
        opts.set_credentials(user, args.mqtt_password.as_deref().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, usize::from(args.max_in_flight).max(16));
    // `EventLoop::poll` is not cancel-safe (dropped while writing, the
    // publishes it took are lost and their acknowledgements awaited
    // forever), so it runs in a task of its own, never dropped mid-call.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let ev = eventloop.poll().await;
            let failed = ev.is_err();
            if events_tx.send(ev).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(n) + 1).wrapping_mul(0x1234_5678_9abc));
    let mut series: Vec<Series> = devices
        .iter()
        .flat_map(|d| {
            (0..args.sensors).map(move |s| {
                let (kind, unit, base, amp) = SENSOR_KINDS[s as usize % SENSOR_KINDS.len()];
                let sensor = if (s as usize) < SENSOR_KINDS.len() {
                    kind.to_owned()
                } else {
                    format!("{kind}_{s}")
                };
                (d.clone(), sensor, unit, base, amp)
            })
        })
        .map(|(device, sensor, unit, base, amp)| Series {
            device,
            sensor,
            unit,
            base,
            amp,
            phase: 0.0,
            last: DateTime::<Utc>::MIN_UTC,
        })
        .collect();
    for s in &mut series {
        s.phase = rng.next() * std::f64::consts::TAU;
    }
    let per_msg = match args.form {
        Form::Single => 1,
        Form::Batch | Form::Senml => args.batch_size as u64,
    };
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut budget = 0.0f64;
    let mut next_series = 0usize;
    let mut readings = 0u64;
    let mut pending: Option<(String, Vec<u8>, u64)> = None;
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut connected = false;
    loop {
        let done = stop.load(Ordering::Relaxed) || count.is_some_and(|c| readings >= c);
        if done && pending.is_none() {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if !done => {
                budget += if rate > 0.0 { rate / 100.0 } else { f64::INFINITY };
                while budget >= per_msg as f64 || (rate == 0.0 && budget.is_infinite()) {
                    if pending.is_none() {
                        let want = count.map_or(per_msg, |c| per_msg.min(c - readings));
                        if want == 0 { break; }
                        pending = Some(message(args, &mut series, &mut next_series, want, &mut rng, started));
                    }
                    let Some((topic, payload, n)) = pending.take() else { break };
                    match client.try_publish(topic.clone(), qos, false, payload.clone()) {
                        Ok(()) => {
                            budget -= n as f64;
                            readings += n;
                            counters.messages.fetch_add(1, Ordering::Relaxed);
                            counters.readings.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(_) => {
                            // The request queue is full: keep it for the next tick.
                            pending = Some((topic, payload, n));
                            break;
                        }
                    }
                }
                if rate == 0.0 { budget = 0.0; }
            }
            Some(ev) = events.recv() => match ev {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => sent += 1,
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                Ok(_) => {}
                Err(e @ rumqttc::ConnectionError::Tls(_)) if !connected => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    driver.abort();
                    return Err(link.error(&e).into());
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !args.quiet {
                        eprintln!("\nmqtt connection {n}: {}; reconnecting", link.error(&e));
                    }
                }
            },
        }
    }
    // Wait for outstanding acknowledgements (QoS 1).
    let wait = async {
        while qos == QoS::AtLeastOnce && acked < sent.max(counters_for(&readings, per_msg)) {
            let Some(ev) = events.recv().await else { break };
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => sent += 1,
                Ok(_) => {}
                Err(e) => {
                    // What is still unacknowledged stays so.
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !args.quiet {
                        eprintln!("\nmqtt connection {n}: {}", link.error(&e));
                    }
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
    let _ = client.disconnect().await;
    // The event loop sends the DISCONNECT, then ends at the closed
    // connection's error.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = events.recv().await {}
    })
    .await;
    driver.abort();
    Ok(())
}

/// Messages published so far, from the readings count.
fn counters_for(readings: &u64, per_msg: u64) -> u64 {
    readings.div_ceil(per_msg)
}

/// Builds the next message of `n` readings, round-robin over the series.
fn message(
    args: &Args,
    series: &mut [Series],
    next: &mut usize,
    n: u64,
    rng: &mut Rng,
    started: Instant,
) -> (String, Vec<u8>, u64) {
    match args.form {
        Form::Single => {
            let s = &mut series[*next % series.len()];
            *next += 1;
            let (v, t) = s.sample(rng, args.spike_ratio, started);
            let topic = format!("{}/{}/{}", args.topic_prefix, s.device, s.sensor);
            let body = format!(
                r#"{{"value":{v},"timestamp":"{}","unit":"{}"}}"#,
                ts(t),
                s.unit
            );
            (topic, body.into_bytes(), 1)
        }
        Form::Batch | Form::Senml => {
            // All readings of one message belong to one device.
            let per_device = args.sensors as usize;
            let device_idx = (*next / per_device) % (series.len() / per_device);
            let device = series[device_idx * per_device].device.clone();
            let mut items = Vec::with_capacity(n as usize);
            for i in 0..n as usize {
                let s = &mut series[device_idx * per_device + i % per_device];
                let (v, t) = s.sample(rng, args.spike_ratio, started);
                items.push(if args.form == Form::Batch {
                    format!(
                        r#"{{"sensor":"{}","value":{v},"timestamp":"{}","unit":"{}"}}"#,
                        s.sensor,
                        ts(t),
                        s.unit
                    )
                } else {
                    let secs = t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6;
                    format!(
                        r#"{{"n":"{}","u":"{}","v":{v},"t":{secs:.6}}}"#,
                        s.sensor, s.unit
                    )
                });
            }
            *next += per_device;
            let prefix = if args.form == Form::Batch {
                &args.batch_prefix
            } else {
                &args.senml_prefix
            };
            (
                format!("{prefix}/{device}"),
                format!("[{}]", items.join(",")).into_bytes(),
                n,
            )
        }
    }
}
