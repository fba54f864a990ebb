//! The local stack: PostgreSQL, Mosquitto and Tansu, then the services.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::paths;
use crate::proc::{self, Result};

pub const PG_PORT: u16 = 5432;
pub const MQTT_PORT: u16 = 11883;
/// Mosquitto's TLS listener (deploy/local/mosquitto-tls.conf).
pub const MQTTS_PORT: u16 = 18883;
/// The TLS-required run's broker, which has no plain listener.
const MQTTS_ONLY_PORT: u16 = 28883;
/// The TLS-required run's Kafka-API broker: a Tansu of its own on the
/// first port, behind a TLS terminator on the second (Tansu's own TLS
/// flags cannot start).
const KAFKA_TLS_BACK_PORT: u16 = 19093;
const KAFKA_TLS_PORT: u16 = 19094;
pub const KAFKA_PORT: u16 = 19092;
const DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/iot";
/// Maintenance database the tests create their own databases from.
const TEST_ADMIN_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The services, in start order, with the port that says they are up.
const SERVICES: [(&str, u16); 5] = [
    ("device-registry", 50051),
    ("ingest-writer", 50052),
    ("alert-engine", 50053),
    ("mqtt-gateway", 9104),
    ("graphql-gateway", 50055),
];
const SIMULATOR: &str = "simulator";
/// Infrastructure we may start, in stop order.
const INFRA: [&str; 3] = ["tansu", "mosquitto", "postgres"];
/// What the TLS-required run starts beside the stack; `down` stops them too
/// when a run was cut short.
const TLS_RUN: [&str; 3] = ["mosquitto-tls-only", "kafka-tls", "tansu-tls"];

/// Which components this invocation started (and so may stop).
pub struct Started(Vec<&'static str>);

pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !proc::have("apt-get") {
        return Err(format!(
            "{packages:?} missing and apt-get is not available: install them by hand"
        ));
    }
    proc::run(Command::new("apt-get").arg("update").arg("-q"))?;
    proc::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// What building the workspace needs besides Rust: OpenSSL's headers, for
/// librdkafka's TLS and SASL.
pub fn ensure_build_deps() -> Result<()> {
    let found = Command::new("pkg-config")
        .args(["--exists", "openssl"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        apt_install(&["libssl-dev", "pkg-config"])?;
    }
    Ok(())
}

fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Reuses a PostgreSQL on 127.0.0.1:5432; otherwise installs the server if
/// needed and runs our own trust-auth cluster on loopback.
fn ensure_postgres(started: &mut Started) -> Result<()> {
    if proc::port_open(PG_PORT) {
        eprintln!("postgres: reusing the server on 127.0.0.1:{PG_PORT}");
        return Ok(());
    }
    if pg_bin_dir().is_none() {
        apt_install(&["postgresql"])?;
        // The package may have started its own cluster.
        if proc::wait_port("postgres", PG_PORT, Duration::from_secs(5)).is_ok() {
            set_postgres_password()?;
            return Ok(());
        }
    }
    let bin = pg_bin_dir().ok_or("PostgreSQL server binaries not found after install")?;
    let data = paths::pg_data();
    proc::ensure_run_dirs()?;
    if !data.join("PG_VERSION").exists() {
        fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        proc::run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(data.parent().unwrap_or(&data)),
        )?;
        proc::run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]),
        )?;
    }
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={PG_PORT}"),
        ])
        .args([
            "-c",
            "unix_socket_directories=/tmp",
            "-c",
            "max_connections=300",
        ])
        .args(crate::pgsize::args());
    proc::spawn("postgres", &mut cmd)?;
    eprintln!("postgres: own trust-auth cluster in {}", data.display());
    started.0.push("postgres");
    proc::wait_port("postgres", PG_PORT, Duration::from_secs(30))
}

/// For a cluster the package started: password auth on TCP needs one.
fn set_postgres_password() -> Result<()> {
    proc::run(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        "psql",
        "-q",
        "-c",
        "ALTER USER postgres PASSWORD 'postgres'",
    ]))
}

/// Debian installs it under the architecture's library folder.
fn dynsec_plugin() -> Option<PathBuf> {
    fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
}

fn ensure_mosquitto(started: &mut Started) -> Result<()> {
    if proc::running("mosquitto").is_some() || proc::port_open(MQTT_PORT) {
        eprintln!("mosquitto: already running on 127.0.0.1:{MQTT_PORT}");
        if !proc::port_open(MQTTS_PORT) {
            eprintln!(
                "mosquitto: no TLS listener on 127.0.0.1:{MQTTS_PORT} (a broker started before \
                 it existed): restart it (cargo xtask down, then again) for the TLS tests"
            );
        }
        return Ok(());
    }
    if !proc::have("mosquitto") && !Path::new("/usr/sbin/mosquitto").exists() {
        apt_install(&["mosquitto"])?;
    }
    proc::ensure_run_dirs()?;
    let conf = paths::run_dir().join("mosquitto.conf");
    fs::write(&conf, mosquitto_conf(&paths::run_dir())?).map_err(|e| e.to_string())?;
    let bin = mosquitto_bin();
    // The dynamic-security plugin's state, with its admin account.
    let dynsec = paths::run_dir().join("mosquitto/dynamic-security.json");
    if !dynsec.exists() {
        fs::create_dir_all(paths::run_dir().join("mosquitto")).map_err(|e| e.to_string())?;
        proc::run(
            Command::new("mosquitto_ctrl")
                .args(["dynsec", "init"])
                .arg(&dynsec)
                .args([ACCOUNTS[0].0, ACCOUNTS[0].1]),
        )?;
    }
    // Runs in the foreground under our pid file (no -d).
    proc::spawn("mosquitto", Command::new(bin).arg("-c").arg(&conf))?;
    started.0.push("mosquitto");
    proc::wait_port("mosquitto", MQTT_PORT, Duration::from_secs(15))?;
    proc::wait_port("mosquitto", MQTTS_PORT, Duration::from_secs(5))
}

/// The stack's Mosquitto configuration with its state, logs and pid file
/// under `run_dir`: the plain listener, then the TLS one with the local
/// CA's certificate.
fn mosquitto_conf(run_dir: &Path) -> Result<String> {
    let read = |name: &str| {
        fs::read_to_string(paths::repo().join("deploy/local").join(name))
            .map_err(|e| format!("deploy/local/{name}: {e}"))
    };
    let (cert, key) = crate::pgtls::broker_files()?;
    let template = read("mosquitto.conf")?
        + &read("mosquitto-tls.conf")?
            .replace("@TLS_DIR@/server.pem", &cert.to_string_lossy())
            .replace("@TLS_DIR@/broker.key", &key.to_string_lossy());
    let plugin = dynsec_plugin().ok_or(
        "mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed",
    )?;
    Ok(template
        .replace("@RUN_DIR@", &run_dir.to_string_lossy())
        .replace("@DYNSEC_PLUGIN@", &plugin.to_string_lossy()))
}

fn mosquitto_bin() -> String {
    if proc::have("mosquitto") {
        "mosquitto".into()
    } else {
        "/usr/sbin/mosquitto".to_string()
    }
}

/// The TLS-required run's broker: the stack's configuration with the plain
/// listener left out and the TLS one on [`MQTTS_ONLY_PORT`], fresh state
/// under `.run/mqtt-tls-only`, the platform accounts provisioned over TLS.
fn start_tls_only_broker() -> Result<()> {
    let dir = paths::run_dir().join("mqtt-tls-only");
    let _ = fs::remove_dir_all(&dir);
    for sub in ["mosquitto", "logs", "pids"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let plain = format!("listener {MQTT_PORT} 127.0.0.1\n");
    let tls = format!("listener {MQTTS_PORT} 127.0.0.1\n");
    let conf = mosquitto_conf(&dir)?;
    if !conf.contains(&plain) || !conf.contains(&tls) {
        return Err("deploy/local/mosquitto*.conf: listeners not where the TLS run expects".into());
    }
    let conf = conf
        .replace(&plain, "")
        .replace(&tls, &format!("listener {MQTTS_ONLY_PORT} 127.0.0.1\n"));
    let path = dir.join("mosquitto.conf");
    fs::write(&path, conf).map_err(|e| e.to_string())?;
    proc::run(
        Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(dir.join("mosquitto/dynamic-security.json"))
            .args([ACCOUNTS[0].0, ACCOUNTS[0].1]),
    )?;
    proc::spawn(
        "mosquitto-tls-only",
        Command::new(mosquitto_bin()).arg("-c").arg(&path),
    )?;
    proc::wait_port(
        "mosquitto-tls-only",
        MQTTS_ONLY_PORT,
        Duration::from_secs(15),
    )?;
    provision_mqtt_accounts_at(MQTTS_ONLY_PORT, Some(&crate::pgtls::dir().join("ca.pem")))
}

/// (username, password, (ACL type, topic) pairs its role allows).
type Account = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The local stack's platform accounts at the broker (user, password,
/// what its role allows). Devices get accounts of their own from
/// device-registry; there is no anonymous access. The same values are in
/// `deploy/local/*.toml` and the test kit's defaults.
pub const ACCOUNTS: [Account; 3] = [
    // Created by `dynsec init` with the plugin's admin role.
    ("platform.admin", "local-admin-password", &[]),
    (
        "platform.gateway",
        "local-gateway-password",
        &[
            ("subscribePattern", "#"),
            ("subscribePattern", "$share/#"),
            // The broker's received count, for the gateway's loss check.
            ("subscribeLiteral", "$SYS/broker/publish/messages/received"),
        ],
    ),
    // Load generators (`iotctl simulate`, tests, benchmarks) that publish
    // for many devices over few connections.
    (
        "platform.publisher",
        "local-publisher-password",
        &[("publishClientSend", "#")],
    ),
];

/// Creates the platform accounts (idempotent: existing ones keep their
/// role and get their password set again).
fn provision_mqtt_accounts() -> Result<()> {
    provision_mqtt_accounts_at(MQTT_PORT, None)
}

/// [`provision_mqtt_accounts`] on the broker at `port`, over TLS trusting
/// `ca` when given.
fn provision_mqtt_accounts_at(port: u16, ca: Option<&Path>) -> Result<()> {
    let (admin, admin_pw, _) = ACCOUNTS[0];
    let ctrl = |args: &[&str]| {
        let mut cmd = Command::new("mosquitto_ctrl");
        if let Some(ca) = ca {
            cmd.arg("--cafile").arg(ca);
        }
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", admin, "-P", admin_pw, "dynsec"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !ctrl(&["listClients"]) {
        return Err(format!(
            "mosquitto on 127.0.0.1:{port} refuses the dynamic-security admin account: \
             it was started without the plugin or with other accounts; stop it (cargo xtask down) \
             and run again"
        ));
    }
    for (user, password, acls) in &ACCOUNTS[1..] {
        // "already exists" on a second run is fine.
        ctrl(&["createRole", user]);
        for (acl, topic) in *acls {
            ctrl(&["addRoleACL", user, acl, topic, "allow"]);
        }
        ctrl(&["createClient", user, "-p", password]);
        ctrl(&["addClientRole", user, user]);
        if !ctrl(&["setClientPassword", user, password]) {
            return Err(format!("cannot provision the broker account {user}"));
        }
    }
    Ok(())
}

/// Tansu's version and features: in-memory storage for the stack, SQLite
/// (`libsql`) for durable storage in the fault suite.
const TANSU: (&str, &str) = ("0.6.0", "dynostore,libsql");

/// Installs Tansu once per machine (again when [`TANSU`] changes).
fn install_tansu() -> Result<PathBuf> {
    let bin = paths::tansu_bin();
    let stamp = paths::cache_dir().join("tansu/installed.txt");
    let want = format!("{} {}", TANSU.0, TANSU.1);
    if bin.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    eprintln!(
        "tansu: building {want} once per machine into {} (takes ~15 minutes on 2 cores)",
        bin.display()
    );
    proc::run(
        Command::new("cargo")
            .args(["install", "tansu", "--force", "--locked"])
            .args(["--version", TANSU.0, "--features", TANSU.1, "--root"])
            .arg(paths::cache_dir().join("tansu"))
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    fs::write(&stamp, want).map_err(|e| e.to_string())?;
    Ok(bin)
}

fn ensure_tansu(started: &mut Started) -> Result<()> {
    if proc::running("tansu").is_some() || proc::port_open(KAFKA_PORT) {
        eprintln!("tansu: already running on 127.0.0.1:{KAFKA_PORT}");
        return Ok(());
    }
    let bin = install_tansu()?;
    let url = format!("tcp://127.0.0.1:{KAFKA_PORT}");
    proc::spawn(
        "tansu",
        Command::new(&bin)
            .arg("broker")
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "warn"),
    )?;
    started.0.push("tansu");
    proc::wait_port("tansu", KAFKA_PORT, Duration::from_secs(30))
}

/// Installs (where missing) and starts PostgreSQL, Mosquitto and Tansu.
pub fn infra() -> Result<Started> {
    let mut started = Started(Vec::new());
    ensure_postgres(&mut started)?;
    crate::pgtls::ensure(TEST_ADMIN_URL)?;
    // A cluster of our own starts sized (`ensure_postgres`).
    if !started.0.contains(&"postgres") {
        crate::pgsize::ensure(TEST_ADMIN_URL, postgres_restart_command())?;
    }
    ensure_mosquitto(&mut started)?;
    provision_mqtt_accounts()?;
    ensure_tansu(&mut started)?;
    Ok(started)
}

fn stop_infra(started: &Started) {
    for name in INFRA {
        if started.0.contains(&name) {
            proc::stop(name, Duration::from_secs(15));
        }
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(paths::repo())
        .env("CARGO_TARGET_DIR", paths::target_dir());
    c
}

fn bin(name: &str) -> PathBuf {
    paths::target_dir().join("debug").join(name)
}

/// `cargo xtask up`.
pub fn up() -> Result<()> {
    ensure_build_deps()?;
    // Before the build: graphql-gateway embeds the built console.
    crate::console::build()?;
    let started = infra()?;
    crate::pgtls::ensure_grpc_certs()?;
    proc::run(cargo().args(["build", "--bins"]))?;
    proc::run(
        Command::new(bin("iotctl"))
            .arg("migrate")
            .args(["--database-url", DATABASE_URL]),
    )?;
    for (name, port) in SERVICES {
        if proc::running(name).is_some() {
            eprintln!("{name}: already running");
            continue;
        }
        let config = paths::repo().join(format!("deploy/local/{name}.toml"));
        proc::spawn(
            name,
            Command::new(bin(name))
                .arg("--config")
                .arg(config)
                .envs(crate::pgtls::grpc_env(name)),
        )?;
        if let Err(e) = proc::wait_port(name, port, Duration::from_secs(60)) {
            eprintln!("{e}");
            for (n, _) in SERVICES.iter().rev() {
                proc::stop(n, Duration::from_secs(10));
            }
            stop_infra(&started);
            return Err(e);
        }
    }
    if proc::running(SIMULATOR).is_none() {
        proc::spawn(
            SIMULATOR,
            Command::new(bin("iotctl"))
                .args(["simulate", "--devices", "5", "--rate", "5"])
                .env("IOT_MQTT_USERNAME", ACCOUNTS[2].0)
                .env("IOT_MQTT_PASSWORD", ACCOUNTS[2].1)
                .envs(crate::pgtls::grpc_env("iotctl")),
        )?;
    }
    let run = paths::run_dir();
    println!();
    println!("The platform is up, fed by 5 simulated devices (5 readings/s).");
    println!("  logs and pids     {}", run.display());
    println!(
        "  MQTT              127.0.0.1:{MQTT_PORT}  topic sensors/{{device_id}}/{{sensor_name}}"
    );
    println!(
        "  MQTT over TLS     127.0.0.1:{MQTTS_PORT}  CA {}",
        crate::pgtls::dir().join("ca.pem").display()
    );
    println!(
        "  Kafka (Tansu)     127.0.0.1:{KAFKA_PORT}  topics iot.readings.v1, iot.dead-letter.v1"
    );
    println!("  PostgreSQL        {DATABASE_URL}");
    println!(
        "  gRPC (mTLS)       registry :50051, telemetry :50052, alerts :50053 (grpc.health.v1 on each)"
    );
    let client: Vec<String> = crate::pgtls::grpc_env("iotctl")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect();
    println!("  iotctl's gRPC     export {}", client.join(" "));
    println!(
        "  GraphQL           http://127.0.0.1:8080/graphql, header X-Api-Key: local-dev-api-key"
    );
    println!(
        "  web console       http://127.0.0.1:8080/console/ (sign in with local-dev-api-key; its Query page is on /)"
    );
    println!("  metrics           http://127.0.0.1:910{{1..5}}/metrics");
    println!(
        "  look at data      {} status --database-url {DATABASE_URL}",
        bin("iotctl").display()
    );
    println!("  stop everything   cargo xtask down");
    Ok(())
}

/// `cargo xtask down`: stops what `up` started, newest first.
pub fn down() -> Result<()> {
    proc::stop(SIMULATOR, Duration::from_secs(5));
    for (name, _) in SERVICES.iter().rev() {
        proc::stop(name, Duration::from_secs(35));
    }
    for name in TLS_RUN.into_iter().chain(INFRA) {
        proc::stop(name, Duration::from_secs(15));
    }
    Ok(())
}

/// `cargo xtask status`.
pub fn status() -> Result<()> {
    for name in INFRA
        .iter()
        .rev()
        .chain(SERVICES.iter().map(|(n, _)| n))
        .chain([&SIMULATOR])
    {
        match proc::running(name) {
            Some(pid) => println!("{name:16} running (pid {pid})"),
            None => println!("{name:16} not started by xtask"),
        }
    }
    Ok(())
}

/// `cargo xtask test [nextest args]`: lint, start what the tests need, run
/// the whole suite, stop what it started.
pub fn test(extra: &[String]) -> Result<()> {
    ensure_build_deps()?;
    // Before clippy builds graphql-gateway, which embeds the console; its
    // checks include its GraphQL operations against schema.graphql.
    crate::console::build()?;
    crate::console::ensure_chromium()?;
    proc::run(cargo().args(["fmt", "--all", "--check"]))?;
    proc::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::proto::check()?;
    crate::deploy::check()?;
    let started = infra()?;
    let mut cmd = cargo();
    if proc::have("cargo-nextest") {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    test_env(cmd.args(extra));
    // ingest-writer's archive tests read its Parquet files with pyarrow.
    cmd.env("IOT_TEST_PYTHON", crate::deploy::ensure_data_python()?);
    let before = test_databases();
    let mut result = proc::run(&mut cmd);
    // The end-to-end, GraphQL and credentials tests again with TLS on
    // every link (after the whole suite, not after a filtered run).
    if result.is_ok() && extra.is_empty() {
        result = tls_suite();
    }
    // Tests drop the databases they create (a failing one keeps its own).
    if result.is_ok()
        && let (Some(before), Some(after)) = (before, test_databases())
    {
        let left: Vec<&String> = after.iter().filter(|d| !before.contains(*d)).collect();
        if !left.is_empty() {
            result = Err(format!("the suite left test databases behind: {left:?}"));
        }
    }
    stop_infra(&started);
    // The fault suite restarts PostgreSQL, Mosquitto and Kafka: it runs
    // alone, after the whole suite (not after a filtered run), on processes
    // of its own.
    if result.is_ok() && extra.is_empty() {
        result = faults(&["--short".to_owned()]);
    }
    result
}

/// `cargo xtask test-tls`: the TLS-required run alone.
pub fn test_tls() -> Result<()> {
    ensure_build_deps()?;
    let started = infra()?;
    let result = tls_suite();
    stop_infra(&started);
    result
}

/// The environment that points the tests at the local stack.
fn test_env(cmd: &mut Command) -> &mut Command {
    cmd.env("IOT_TEST_DATABASE_URL", TEST_ADMIN_URL)
        .env("IOT_TEST_PG_CA", crate::pgtls::dir().join("ca.pem"))
        .env("IOT_TEST_MQTT", format!("127.0.0.1:{MQTT_PORT}"))
        .env("IOT_TEST_MQTT_TLS", format!("127.0.0.1:{MQTTS_PORT}"))
        .env("IOT_TEST_MQTT_CA", crate::pgtls::dir().join("ca.pem"))
        .env("IOT_TEST_KAFKA", format!("127.0.0.1:{KAFKA_PORT}"))
}

/// The TLS-required run: PostgreSQL with `sslmode=verify-full` as a role
/// the server accepts over TLS only, MQTT on a broker with only a TLS
/// listener, Kafka over TLS (a Tansu of its own behind
/// `socat`'s TLS terminator, with the local CA's certificate), gRPC over
/// mTLS as always.
fn tls_suite() -> Result<()> {
    if !proc::have("socat") {
        apt_install(&["socat"])?;
    }
    crate::pgtls::ensure_tls_role(TEST_ADMIN_URL)?;
    let ca = crate::pgtls::dir().join("ca.pem");
    let tls_admin_url = format!(
        "postgres://{role}:{role}@127.0.0.1:{PG_PORT}/postgres?sslmode=verify-full&sslrootcert={}",
        ca.display(),
        role = crate::pgtls::TLS_ROLE,
    );
    let bin = install_tansu()?;
    let back = format!("tcp://127.0.0.1:{KAFKA_TLS_BACK_PORT}");
    let front = format!("tcp://127.0.0.1:{KAFKA_TLS_PORT}");
    proc::spawn(
        "tansu-tls",
        Command::new(&bin)
            .arg("broker")
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &back, "--advertised-listener-url", &front])
            .env("RUST_LOG", "warn"),
    )?;
    let tls = crate::pgtls::dir();
    let run = start_tls_only_broker()
        .and_then(|()| proc::wait_port("tansu-tls", KAFKA_TLS_BACK_PORT, Duration::from_secs(30)))
        .and_then(|()| {
            proc::spawn(
                "kafka-tls",
                Command::new("socat")
                    .arg(format!(
                        "OPENSSL-LISTEN:{KAFKA_TLS_PORT},bind=127.0.0.1,reuseaddr,fork,\
                         cert={},key={},verify=0",
                        tls.join("server.pem").display(),
                        tls.join("broker.key").display()
                    ))
                    .arg(format!("TCP:127.0.0.1:{KAFKA_TLS_BACK_PORT}")),
            )
        })
        .and_then(|_| proc::wait_port("kafka-tls", KAFKA_TLS_PORT, Duration::from_secs(10)))
        .and_then(|()| {
            let mut cmd = cargo();
            if proc::have("cargo-nextest") {
                cmd.args(["nextest", "run", "--no-fail-fast"]);
            } else {
                cmd.args(["test", "--no-fail-fast"]);
            }
            cmd.args(["-p", "iot-testkit", "--test", "walking_skeleton"])
                .args(["--test", "graphql", "--test", "credentials"]);
            test_env(&mut cmd)
                .env("IOT_TEST_DATABASE_URL", &tls_admin_url)
                .env("IOT_TEST_TLS", "1")
                // Both addresses name the broker without a plain listener,
                // so a client that skips TLS fails instead of passing.
                .env("IOT_TEST_MQTT", format!("127.0.0.1:{MQTTS_ONLY_PORT}"))
                .env("IOT_TEST_MQTT_TLS", format!("127.0.0.1:{MQTTS_ONLY_PORT}"))
                .env("IOT_TEST_MQTT_LISTENER", "tls")
                .env("IOT_TEST_KAFKA_TLS", format!("127.0.0.1:{KAFKA_TLS_PORT}"));
            println!("the end-to-end, GraphQL and credentials tests with TLS on every link:");
            proc::run(&mut cmd)
        });
    for name in TLS_RUN {
        proc::stop(name, Duration::from_secs(5));
    }
    run
}

/// The test databases (`iot_test_*`) on the test server; `None` when it
/// cannot be asked (no `psql`).
fn test_databases() -> Option<Vec<String>> {
    let out = Command::new("psql")
        .args([
            TEST_ADMIN_URL,
            "-Atc",
            "SELECT datname FROM pg_database WHERE datname LIKE 'iot\\_test\\_%'",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

/// The benchmark programs `cargo xtask bench` runs (`iot-bench <name>`;
/// the fault suite is `cargo xtask faults`).
pub const BENCHES: [&str; 12] = [
    "ingest",
    "query",
    "graphql",
    "alerts",
    "late",
    "abuse",
    "export",
    "commands",
    "subscriptions",
    "scale",
    "replicas",
    "history",
];

/// `cargo xtask bench ingest`: release build, stack up, run the program.
pub fn bench(args: &[String]) -> Result<()> {
    let what = args.first().map(String::as_str).unwrap_or("");
    if !BENCHES.contains(&what) {
        return Err(format!("usage: cargo xtask bench {}", BENCHES.join("|")));
    }
    ensure_build_deps()?;
    proc::run(cargo().args([
        "build",
        "--release",
        "-p",
        "device-registry",
        "-p",
        "ingest-writer",
        "-p",
        "mqtt-gateway",
        "-p",
        "alert-engine",
        "-p",
        "graphql-gateway",
        "-p",
        "iot-bench",
    ]))?;
    let started = infra()?;
    let release = paths::target_dir().join("release");
    let result = proc::run(
        Command::new(release.join("iot-bench"))
            .args(args)
            .env("IOT_BENCH_BIN_DIR", &release)
            .env("IOT_BENCH_DATABASE_URL", TEST_ADMIN_URL)
            .env("IOT_BENCH_KAFKA", format!("127.0.0.1:{KAFKA_PORT}"))
            .env("IOT_BENCH_MQTT_PORT", MQTT_PORT.to_string())
            .env("IOT_BENCH_REPORT", paths::repo().join("docs/benchmarks.md"))
            .current_dir(paths::repo()),
    );
    stop_infra(&started);
    result
}

/// A shell command that restarts the PostgreSQL on 127.0.0.1:5432: Debian's
/// cluster through `pg_ctlcluster`, or our own through `pg_ctl` (which
/// starts it again with the options it last ran with).
fn postgres_restart_command() -> Option<String> {
    if proc::have("pg_lsclusters") {
        let out = Command::new("pg_lsclusters").arg("-h").output().ok()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [version, cluster, port, status, ..] = f.as_slice()
                && *port == PG_PORT.to_string()
                && status.starts_with("online")
            {
                return Some(format!(
                    "pg_ctlcluster --skip-systemctl-redirect {version} {cluster} restart"
                ));
            }
        }
    }
    let data = paths::pg_data();
    if data.join("postmaster.pid").exists() {
        let bin = pg_bin_dir()?;
        return Some(format!(
            "runuser -u postgres -- {} -D {} restart -m fast -w",
            bin.join("pg_ctl").display(),
            data.display()
        ));
    }
    None
}

/// `cargo xtask faults [--short]`: the fault suite (`iot-bench faults`) on
/// debug builds, against a Mosquitto and a Tansu of its own.
pub fn faults(args: &[String]) -> Result<()> {
    ensure_build_deps()?;
    let mut started = Started(Vec::new());
    ensure_postgres(&mut started)?;
    if !proc::have("mosquitto") && !Path::new("/usr/sbin/mosquitto").exists() {
        apt_install(&["mosquitto"])?;
    }
    let tansu = install_tansu()?;
    proc::run(cargo().args(["build", "--bins"]))?;
    let plugin = dynsec_plugin().ok_or("mosquitto's dynamic-security plugin is not installed")?;
    let mut cmd = Command::new(bin("iot-bench"));
    cmd.arg("faults")
        .args(args)
        .env("IOT_BENCH_BIN_DIR", paths::target_dir().join("debug"))
        .env("IOT_BENCH_DATABASE_URL", TEST_ADMIN_URL)
        .env("IOT_BENCH_REPORT", paths::repo().join("docs/benchmarks.md"))
        .env("IOT_FAULTS_TANSU", tansu)
        .env("IOT_FAULTS_DYNSEC_PLUGIN", plugin)
        .env("IOT_FAULTS_CONFIG_DIR", paths::repo().join("deploy/local"))
        .current_dir(paths::repo());
    if let Some(restart) = postgres_restart_command() {
        cmd.env("IOT_FAULTS_PG_RESTART", restart);
    }
    let result = proc::run(&mut cmd);
    stop_infra(&started);
    result
}
