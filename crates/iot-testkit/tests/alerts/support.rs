//! What the alert tests share.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_proto::Scope;
use iot_proto::v1::{self, CreateDeviceRequest, ListAlertsRequest};
use iot_testkit as kit;
use iot_testkit::Platform;

/// The alerts of `device`, from the alert-engine at `url`.
pub async fn alerts(url: &str, device: &str) -> Vec<v1::Alert> {
    let mut c =
        iot_proto::alerts_client(url.to_owned(), Scope::Admin, &iot_testkit::pki::operator())
            .await
            .unwrap();
    c.list_alerts(ListAlertsRequest {
        device_uuid: Some(device.to_owned()),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .alerts
}

/// A device whose temperature may be at most 30 (the documented example threshold).
pub fn with_max_30(id: &str, device_type: &str) -> CreateDeviceRequest {
    CreateDeviceRequest {
        device_id: id.into(),
        name: id.into(),
        device_type: device_type.into(),
        config: Some(v1::DeviceConfig {
            alert_threshold_json: Some(r#"{"temperature": {"max": 30}}"#.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A device of no owner (the nil owner) whose temperature may be at most
/// 30, and the one open alert a reading of 35 raised for it.
pub async fn open_alert(p: &Platform, url: &str) -> (v1::Device, v1::Alert) {
    let id = format!("hot-{}", kit::unique());
    let dev = p
        .registry_client(Scope::Admin)
        .await
        .create_device(with_max_30(&id, "temperature_sensor"))
        .await
        .unwrap()
        .into_inner();
    let topic = format!("{}/{id}/temperature", p.prefix);
    kit::publish_all(&[(topic, br#"{"value": 35}"#.to_vec())]).await;
    let mut raised = kit::eventually("alert raised", Duration::from_secs(30), || async {
        let a = alerts(url, &dev.id).await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].state, "open");
    (dev, raised.remove(0))
}

/// A local HTTP receiver that answers 500 to its first `fail_first`
/// requests and 200 after; records (signature, event, body) of each.
pub async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut seen = s.lock().unwrap();
                seen.push((h("x-iot-signature"), h("x-iot-event"), body));
                if seen.len() <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

/// A webhook receiver that accepts connections and never answers.
pub async fn hanging_receiver() -> String {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    url
}
