//! `iotctl simulate` against the real broker and platform: what its summary
//! says is what happened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_testkit as kit;
use iot_testkit::Platform;
use iotctl::simulate::{Args, Form, simulate};

fn args(p: &Platform, account: &str, count: u64) -> Args {
    let (host, port) = kit::mqtt_addr();
    let (user, password) = kit::mqtt_account(account);
    let tls = kit::pki::operator();
    Args {
        registry_url: format!("http://{}", p.registry),
        mqtt_host: host,
        mqtt_port: port,
        mqtt_username: Some(user),
        mqtt_password: Some(password),
        mqtt_tls: Default::default(),
        grpc_tls: iotctl::grpc_tls::GrpcTlsArgs {
            grpc_cert: tls.cert,
            grpc_key: tls.key,
            grpc_ca: tls.ca,
        },
        topic_prefix: p.prefix.clone(),
        batch_prefix: p.batch_prefix.clone(),
        senml_prefix: p.senml_prefix.clone(),
        devices: 5,
        sensors: 1,
        device_prefix: format!("sim-{}", kit::unique()),
        rate: 0.0,
        rate_per_device: None,
        qos: 1,
        form: Form::Single,
        batch_size: 50,
        duration: 0,
        count,
        spike_ratio: 0.0,
        connections: 4,
        max_in_flight: 100,
        quiet: true,
        answer_commands: false,
        registered: false,
        commands_root: "commands".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_summary_counts_what_the_broker_and_database_got() {
    let p = Platform::start().await;
    // 7 readings over 4 connections of 2, 1, 1 and 1 devices: the count is
    // split exactly, not rounded down per connection.
    let s = simulate(args(&p, "publisher", 7)).await.unwrap();
    assert_eq!((s.messages, s.readings, s.acked, s.errors), (7, 7, 7, 0));
    let db = kit::connect(&p.db).await;
    kit::eventually("7 rows", Duration::from_secs(30), || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM sensor_readings", &[])
            .await
            .unwrap()
            .get(0);
        (n == 7).then_some(())
    })
    .await;

    // A wrong password: the broker refuses the connections; the summary
    // counts errors and nothing acknowledged.
    let mut refused = args(&p, "publisher", 3);
    refused.mqtt_password = Some("not-the-password".into());
    let s = simulate(refused).await.unwrap();
    assert_eq!((s.messages, s.acked), (3, 0));
    assert!(s.errors >= 3, "one per connection with messages: {s:?}");

    // At full speed with deep windows, as the benchmark runs it: every
    // publish acknowledged and stored, none in error. (This did not catch
    // the event loop polled inside `select!`, whose losses showed only in
    // release runs of hundreds of thousands of readings.)
    let mut fast = args(&p, "publisher", 20_000);
    fast.devices = 100;
    fast.sensors = 3;
    fast.max_in_flight = 1000;
    let s = simulate(fast).await.unwrap();
    assert_eq!(
        (s.messages, s.readings, s.acked, s.errors),
        (20_000, 20_000, 20_000, 0)
    );
    kit::eventually("20,007 rows", Duration::from_secs(60), || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM sensor_readings", &[])
            .await
            .unwrap()
            .get(0);
        (n == 20_007).then_some(())
    })
    .await;
    p.stop().await;
}
