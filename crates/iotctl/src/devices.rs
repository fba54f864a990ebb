//! `iotctl devices ...`: calls device-registry over gRPC.

use clap::Subcommand;
use iot_proto::v1::{self, CreateDeviceRequest, GetDeviceRequest, ListDevicesRequest};

#[derive(clap::Args)]
pub struct Args {
    #[arg(
        long,
        env = "IOT_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    registry_url: String,
    #[command(flatten)]
    grpc_tls: crate::grpc_tls::GrpcTlsArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register a device.
    Create {
        device_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "temperature_sensor")]
        device_type: String,
        #[arg(long)]
        location: Option<String>,
        /// JSON, e.g. '{"temperature": {"max": 30}}'
        #[arg(long)]
        alert_threshold: Option<String>,
    },
    /// Register many devices from CSV or JSON lines (the fields of
    /// `create`, plus owner_id, status, latitude, longitude,
    /// read_interval, data_retention_days, custom_fields), 1000 per call,
    /// reporting every row not created.
    Import(Box<crate::import::ImportArgs>),
    /// Show one device (platform UUID or external device_id).
    Get { id: String },
    /// Issue a new MQTT password (the old one stops working at once).
    Rotate { id: String },
    /// Remove the device's broker account (it is disconnected at once).
    Revoke { id: String },
    /// Delete the device, its config, sensors and broker account.
    Delete { id: String },
    /// Send a command to a device over MQTT (it answers ok or error).
    Command {
        /// Platform UUID or external device_id.
        id: String,
        name: String,
        /// JSON, e.g. '{"position": 40}'
        #[arg(long)]
        payload: Option<String>,
        /// Undelivered by then it expires; delivered and unanswered, it
        /// times out.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u32,
        /// Follow it until it ends; fail unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// A device's commands, newest first.
    Commands {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Set a device's desired state (a JSON object), if its version is
    /// still `--expected-version` (0 for none yet).
    Desired {
        id: String,
        json: String,
        #[arg(long)]
        expected_version: u64,
    },
    /// A device's desired and reported state.
    State { id: String },
    /// List devices.
    List {
        #[arg(long)]
        device_type: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let url = args.registry_url.clone();
    let certified = args.grpc_tls.grpc_cert.is_some();
    let result = calls(args).await;
    if certified {
        return result;
    }
    // The likeliest cause of a failure without a certificate.
    result.with_context(|| {
        format!(
            "device-registry at {url}, called without a client certificate: a platform \
             with grpc_tls wants --grpc-cert, --grpc-key and --grpc-ca (or IOT_GRPC_CERT, \
             IOT_GRPC_KEY, IOT_GRPC_CA)"
        )
    })
}

async fn calls(args: Args) -> anyhow::Result<()> {
    use crate::device_commands as dc;
    let tls = args.grpc_tls.config();
    let url = args.registry_url.clone();
    let commands = || iot_proto::commands_client(url.clone(), iot_proto::Scope::Admin, &tls);
    match &args.command {
        Cmd::Command {
            id,
            name,
            payload,
            timeout_secs,
            wait,
        } => {
            let mut c = commands().await?;
            let (id, name, payload) = (id.clone(), name.clone(), payload.clone());
            return dc::send(&mut c, id, name, payload, *timeout_secs, *wait).await;
        }
        Cmd::Commands { id, limit } => {
            return dc::list(&mut commands().await?, id.clone(), *limit).await;
        }
        Cmd::Desired {
            id,
            json,
            expected_version,
        } => {
            let mut c = commands().await?;
            return dc::set_desired(&mut c, id.clone(), json.clone(), *expected_version).await;
        }
        Cmd::State { id } => return dc::state(&mut commands().await?, id.clone()).await,
        _ => {}
    }
    // The operator's CLI: the admin scope.
    let mut client = iot_proto::registry_client(
        args.registry_url,
        iot_proto::Scope::Admin,
        &args.grpc_tls.config(),
    )
    .await?;
    match args.command {
        Cmd::Create {
            device_id,
            name,
            device_type,
            location,
            alert_threshold,
        } => {
            let d = client
                .create_device(CreateDeviceRequest {
                    name: name.unwrap_or_else(|| device_id.clone()),
                    device_id,
                    device_type,
                    location,
                    config: Some(v1::DeviceConfig {
                        alert_threshold_json: alert_threshold,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_device(&d);
        }
        Cmd::Import(import) => {
            let outcome = crate::import::run(&mut client, *import).await?;
            println!("created {} devices", outcome.created);
            let refused: u64 = outcome.refused.values().sum();
            if refused > 0 {
                let by_code: Vec<String> = outcome
                    .refused
                    .iter()
                    .map(|(code, n)| format!("{n} {code}"))
                    .collect();
                anyhow::bail!("{refused} rows not created ({})", by_code.join(", "));
            }
        }
        Cmd::Get { id } => print_device(
            &client
                .get_device(GetDeviceRequest { id })
                .await?
                .into_inner(),
        ),
        Cmd::Rotate { id } => {
            let c = client
                .rotate_credentials(GetDeviceRequest { id })
                .await?
                .into_inner();
            println!("mqtt username: {}", c.username);
            println!("mqtt password: {}  (shown once)", c.password);
        }
        Cmd::Revoke { id } => {
            client
                .revoke_credentials(GetDeviceRequest { id: id.clone() })
                .await?;
            println!("revoked the broker account of {id}");
        }
        Cmd::Delete { id } => {
            client
                .delete_device(GetDeviceRequest { id: id.clone() })
                .await?;
            println!("deleted {id}");
        }
        Cmd::List { device_type, limit } => {
            let resp = client
                .list_devices(ListDevicesRequest {
                    device_type,
                    limit,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for d in &resp.devices {
                print_device(d);
            }
        }
        Cmd::Command { .. } | Cmd::Commands { .. } | Cmd::Desired { .. } | Cmd::State { .. } => {}
    }
    Ok(())
}

fn print_device(d: &v1::Device) {
    println!(
        "{}\t{}\t{}\t{}\t{}",
        d.id, d.device_id, d.name, d.device_type, d.status
    );
    if let Some(c) = &d.credentials {
        // Shown once: the registry keeps only a hash.
        println!("mqtt username: {}", c.username);
        println!(
            "mqtt password: {}  (shown once; `iotctl devices rotate` issues a new one)",
            c.password
        );
        println!("may publish to: {}", c.publish_topics.join(", "));
    }
}
