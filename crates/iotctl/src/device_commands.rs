//! `iotctl devices command|commands|desired|state`: commands to a device
//! and its desired state, through device-registry's
//! `DeviceCommandsService`.

use std::time::Duration;

use iot_proto::v1;

/// The statuses a command does not leave.
const FINAL: [&str; 4] = ["succeeded", "failed", "timed_out", "expired"];

/// Sends a command; with `wait`, follows it until it ends and fails unless
/// it succeeded.
pub async fn send(
    client: &mut iot_proto::CommandsClient,
    device: String,
    name: String,
    payload: Option<String>,
    timeout_secs: u32,
    wait: bool,
) -> anyhow::Result<()> {
    let c = client
        .send_command(v1::SendCommandRequest {
            device_id: device,
            name,
            payload_json: payload.unwrap_or_default(),
            timeout_secs,
        })
        .await?
        .into_inner();
    print_command(&c);
    if !wait {
        return Ok(());
    }
    let mut last = c.status_code.clone();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = client
            .get_command(v1::GetCommandRequest { id: c.id.clone() })
            .await?
            .into_inner();
        if now.status_code != last {
            print_command(&now);
            last.clone_from(&now.status_code);
        }
        if FINAL.contains(&now.status_code.as_str()) {
            anyhow::ensure!(
                now.status_code == "succeeded",
                "command {} {}",
                now.id,
                now.status_code
            );
            return Ok(());
        }
    }
}

pub async fn list(
    client: &mut iot_proto::CommandsClient,
    device: String,
    limit: u32,
) -> anyhow::Result<()> {
    let page = client
        .list_commands(v1::ListCommandsRequest {
            device_id: device,
            limit,
            cursor: String::new(),
        })
        .await?
        .into_inner();
    for c in &page.commands {
        print_command(c);
    }
    Ok(())
}

pub async fn set_desired(
    client: &mut iot_proto::CommandsClient,
    device: String,
    desired: String,
    expected_version: u64,
) -> anyhow::Result<()> {
    let s = client
        .set_desired_state(v1::SetDesiredStateRequest {
            device_id: device,
            desired_json: desired,
            expected_version,
        })
        .await?
        .into_inner();
    print_state(&s);
    Ok(())
}

pub async fn state(client: &mut iot_proto::CommandsClient, device: String) -> anyhow::Result<()> {
    let s = client
        .get_device_state(v1::GetDeviceStateRequest { device_id: device })
        .await?
        .into_inner();
    print_state(&s);
    Ok(())
}

fn when(t: Option<&iot_proto::Timestamp>) -> String {
    t.and_then(iot_proto::from_timestamp)
        .map_or_else(|| "-".into(), |t| t.to_rfc3339())
}

fn print_command(c: &v1::Command) {
    println!(
        "{}\t{}\t{}\t{}\tcreated {}\tfinished {}\t{}",
        c.id,
        c.device_external_id,
        c.name,
        c.status_code,
        when(c.created_at.as_ref()),
        when(c.finished_at.as_ref()),
        if c.result_json.is_empty() {
            "-"
        } else {
            &c.result_json
        },
    );
}

fn print_state(s: &v1::DeviceState) {
    println!(
        "desired (version {}, {}): {}",
        s.desired_version,
        when(s.desired_at.as_ref()),
        s.desired_json
    );
    println!("published to the broker: version {}", s.published_version);
    println!(
        "reported ({}): {}",
        when(s.reported_at.as_ref()),
        if s.reported_json.is_empty() {
            "-"
        } else {
            &s.reported_json
        }
    );
}
