//! One caller's cost is bounded, on the gateway's shipped limits: root
//! fields, aliases and telemetry cost per operation; WebSocket messages,
//! `connection_init` time, subscriptions per caller, and a connection
//! outliving its token. Each refusal carries its own code.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_past_the_field_alias_and_cost_limits_are_refused() {
    let s = Stack::start().await;
    let limits = graphql_gateway::Config::default().limits;
    let a = s.a();
    let many = |n: usize, field: &str| {
        (0..n)
            .map(|i| format!("f{i}: {field}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ok = a
        .data(
            &format!("{{ {} }}", many(limits.max_root_fields, "__typename")),
            json!({}),
        )
        .await;
    assert_eq!(ok["f0"], "Query");
    let code = |q: String| {
        let a = a.clone();
        async move { a.error_code(&q, json!({})).await }
    };
    assert_eq!(
        code(format!(
            "{{ {} }}",
            many(limits.max_root_fields + 1, "__typename")
        ))
        .await,
        "TOO_MANY_ROOT_FIELDS"
    );
    // Aliases count wherever they are, fragments included.
    assert_eq!(
        code(format!(
            "{{ devices(limit: 1) {{ ...F }} }} fragment F on Device {{ {} }}",
            many(limits.max_aliases + 1, "id")
        ))
        .await,
        "TOO_MANY_ALIASES"
    );
    // Telemetry costs grow with buckets and raw days: one month of
    // 5-minute metrics (read from raw rows) is allowed; the same aliased
    // until it passes the complexity limit is not, before any backend
    // is called.
    let month = |alias: usize| {
        format!(
            "m{alias}: sensorMetrics(deviceId: \"x\", sensorName: \"t\", startTime: \"2026-01-01T00:00:00Z\", \
             endTime: \"2026-01-31T00:00:00Z\", granularity: \"5m\") {{ time }}"
        )
    };
    let one =
        graphql_gateway::metrics_cost("2026-01-01T00:00:00Z", "2026-01-31T00:00:00Z", "5m") + 1;
    let fits = limits.max_complexity / one;
    assert!(
        fits < limits.max_aliases,
        "the cost, not the alias cap, refuses"
    );
    let calls = upstream_calls(s.g.admin_addr).await;
    let q = (0..=fits).map(month).collect::<Vec<_>>().join(" ");
    assert_eq!(code(format!("{{ {q} }}")).await, "QUERY_TOO_COMPLEX");
    assert_eq!(upstream_calls(s.g.admin_addr).await, calls);
    let single = a.run(&format!("{{ {} }}", month(0)), json!({})).await;
    assert_ne!(
        single["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{single}"
    );
    // Within the limit, a costly operation takes its cost from the
    // caller's rate limit: a burst of them runs out of it, with a time to
    // retry; another caller is not charged.
    let year = |alias: usize| {
        format!(
            "y{alias}: sensorMetrics(deviceId: \"x\", sensorName: \"t\", startTime: \"2025-01-01T00:00:00Z\", \
             endTime: \"2026-01-01T00:00:00Z\", granularity: \"1h\") {{ time }}"
        )
    };
    let costly = format!(
        "{{ {} }}",
        (0..limits.max_root_fields)
            .map(year)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let per_request = 1
        + (limits.max_root_fields
            * graphql_gateway::metrics_cost("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "1h"))
            / limits.cost_per_token;
    // Sent at once, so the bucket cannot refill between them however long
    // each takes on a slow machine: more than the burst and two seconds of
    // refill.
    let enough = (limits.rate_burst + 2.0 * limits.rate_per_sec) as usize / per_request + 2;
    // Requests that find the bucket empty are refused at the door (429);
    // one admitted when what is left cannot pay its cost is refused with
    // the time to retry.
    let body = json!({"query": costly, "variables": {}}).to_string();
    let burst = (0..enough).map(|_| a.post(body.as_bytes()));
    let answers = futures::future::join_all(burst).await;
    assert!(
        answers
            .iter()
            .all(|(status, _)| [200, 429].contains(status)),
        "{answers:?}"
    );
    let out_of_budget = |(status, v): &(u16, Value)| {
        *status == 200 && v["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    };
    assert!(
        answers.iter().any(|(status, _)| *status == 429) || answers.iter().any(out_of_budget),
        "a burst of costly operations runs out of the rate limit: {answers:?}"
    );
    // When the server takes the burst one request at a time and the
    // burst's tokens are a whole number of requests, the last one admitted
    // leaves nothing and the rest are refused at the door. A request that
    // finds a token or two refilled is admitted and then refused for its
    // cost: one is sent each time the bucket has had time to refill a
    // token, until that happens.
    let mut v = answers.into_iter().find(out_of_budget).map(|(_, v)| v);
    for _ in 0..50 {
        if v.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(1.5 / limits.rate_per_sec)).await;
        let answer = a.post(body.as_bytes()).await;
        assert!([200, 429].contains(&answer.0), "{answer:?}");
        v = Some(answer).filter(out_of_budget).map(|(_, v)| v);
    }
    let v = v.expect("an admitted operation the bucket cannot pay for is refused for its cost");
    assert!(
        v["errors"][0]["extensions"]["retryAfterSecs"]
            .as_u64()
            .is_some(),
        "{v}"
    );
    let b = s.b();
    assert!(b.run("{ __typename }", json!({})).await["errors"].is_null());
    s.stop().await;
}

/// The close frame that ends `ws`, if it ends within `within`.
async fn closed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> Option<(CloseCode, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map(|f| (f.code, f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return Some((CloseCode::Abnormal, "gone".into())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websockets_are_bounded_before_and_after_authentication() {
    let s = Stack::start().await;
    let limits = graphql_gateway::Config::default().limits;
    let addr = s.g.http_addr;
    let url = format!("ws://{addr}/graphql");
    let connect = || async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };

    // Silent after the upgrade: closed with 4408 at the init timeout.
    let t = Instant::now();
    let mut idle = connect().await;
    let init_timeout = Duration::from_millis(limits.ws_init_timeout_ms);
    let (code, _) = closed(&mut idle, init_timeout + Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    assert_eq!(code, CloseCode::Library(4408));
    assert!(t.elapsed() >= init_timeout);

    // A message over the limit, before authentication: the connection
    // ends (tungstenite refuses to read it).
    let mut big = connect().await;
    let huge = json!({"type": "connection_init", "payload": {"pad": "x".repeat(limits.ws_max_message_bytes)}});
    let _ = big.send(Message::Text(huge.to_string().into())).await;
    assert!(
        closed(&mut big, Duration::from_secs(5)).await.is_some(),
        "a message over ws_max_message_bytes ends the connection"
    );

    // Subscriptions per caller, over all its connections: the one past
    // the cap gets an error with its code; one ended frees a place.
    let mut first = ws_init(addr, "graphql-transport-ws", json!({"apiKey": "key-a"})).await;
    let mut second = ws_init(addr, "graphql-transport-ws", json!({"apiKey": "key-a"})).await;
    let sub = |id: usize| {
        Message::Text(
            json!({"id": id.to_string(), "type": "subscribe",
                "payload": {"query": "subscription { alerts { id } }"}})
            .to_string()
            .into(),
        )
    };
    for i in 0..limits.max_subscriptions {
        let ws = if i % 2 == 0 { &mut first } else { &mut second };
        ws.send(sub(i)).await.unwrap();
    }
    // Wait until all are open: each connection acknowledged and idle.
    let gauge = || async { kit_metric(s.g.admin_addr, "iot_graphql_alert_subscribers").await };
    let want = limits.max_subscriptions as u64;
    let t = Instant::now();
    while gauge().await != want {
        assert!(t.elapsed() < WAIT, "{} of {want} open", gauge().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.send(sub(9999)).await.unwrap();
    let refused = next_payload(&mut second, "9999").await;
    assert_eq!(
        refused[0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{refused}"
    );
    // Another caller is not affected.
    let mut other = ws_init(addr, "graphql-transport-ws", json!({"apiKey": "key-b"})).await;
    other.send(sub(1)).await.unwrap();
    let t = Instant::now();
    while gauge().await != want + 1 {
        assert!(t.elapsed() < WAIT, "key-b's subscription opens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first);
    let t = Instant::now();
    while gauge().await > want + 1 - want / 2 {
        assert!(
            t.elapsed() < WAIT,
            "the first connection's subscriptions end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.send(sub(10_000)).await.unwrap();
    let t = Instant::now();
    while gauge().await != want / 2 + 2 {
        assert!(t.elapsed() < WAIT, "a freed place is taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A token that expires closes its connection with 4403.
    let token = s.t.jwt_a_expiring("short", chrono::Duration::seconds(3));
    let mut expiring = ws_init(
        addr,
        "graphql-transport-ws",
        json!({"Authorization": format!("Bearer {token}")}),
    )
    .await;
    expiring.send(sub(1)).await.unwrap();
    let (code, reason) = closed(&mut expiring, Duration::from_secs(10))
        .await
        .expect("closed when the token expires");
    assert_eq!(code, CloseCode::Library(4403), "{reason}");
    s.stop().await;
}

async fn kit_metric(admin: std::net::SocketAddr, series: &str) -> u64 {
    iot_testkit::metric(admin, series).await.unwrap_or(0)
}

/// The errors of the next `next` or `error` message for operation `id`.
async fn next_payload(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    id: &str,
) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["id"] != id {
            continue;
        }
        match v["type"].as_str() {
            Some("next") => return v["payload"]["errors"].clone(),
            Some("error") => return v["payload"].clone(),
            _ => {}
        }
    }
}
