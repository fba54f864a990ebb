//! The HTTP door: `POST /v1/devices/{device}/readings` with a batch (JSON
//! array, `{"readings": [...]}` or one reading naming its sensor), or SenML
//! with `Content-Type: application/senml+json`. Answers once Kafka holds
//! every reading or its dead letter.
//!
//! A device authenticates with HTTP Basic (its MQTT username and password,
//! `device_auth.rs`) and posts only its own readings. Refusals are answered
//! before the body is read, and are not dead-lettered: the dead-letter
//! topic keeps what devices sent, not what anyone sent.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use iot_domain::RejectReason;
use serde_json::json;

use crate::device_auth::{DeviceAuth, Refusal};
use crate::pipeline::{Delivery, Door, Pipeline, Transient};

/// `body_limit`: requests above it are refused with 413 before they are
/// read; bodies above the payload limit but within it are dead-lettered.
pub fn router(pipeline: Arc<Pipeline>, auth: Arc<DeviceAuth>, body_limit: usize) -> Router {
    let limit = body_limit;
    let guard = Guard {
        auth,
        metrics: pipeline.metrics.clone(),
    };
    Router::new()
        .route("/v1/devices/{device}/readings", post(post_readings))
        .route_layer(middleware::from_fn_with_state(guard, authenticate))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(pipeline)
}

#[derive(Clone)]
struct Guard {
    auth: Arc<DeviceAuth>,
    metrics: crate::metrics::Metrics,
}

/// Lets through only a device posting to its own path.
async fn authenticate(
    State(guard): State<Guard>,
    Path(device): Path<String>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = match guard.auth.authenticate(request.headers()).await {
        Ok(v) if v.is(&device) => return next.run(request).await,
        Ok(v) => Refusal::Forbidden {
            as_device: v.device_id.clone(),
        },
        Err(r) => r,
    };
    let path = request.uri().path();
    guard.metrics.http_auth_refused(path, &refusal);
    if let Refusal::Unavailable(status) = &refusal {
        let e = Transient::Registry(status.clone());
        guard.metrics.transient(e.kind(), &e);
    }
    refused(&refusal)
}

/// The answer to a refused request: 401 with a Basic challenge when the
/// credentials are missing or not a device's, 403 for another device's
/// path, 503 when they cannot be checked now.
fn refused(refusal: &Refusal) -> Response {
    let (status, error, detail) = match refusal {
        Refusal::Missing => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "credentials are required: HTTP Basic with the device's MQTT username and password"
                .to_owned(),
        ),
        Refusal::Malformed(why) => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            (*why).to_owned(),
        ),
        Refusal::Wrong => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong username or password".to_owned(),
        ),
        Refusal::Forbidden { as_device } => (
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("authenticated as device {as_device}, which may post only its own readings"),
        ),
        Refusal::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many credential checks under way; retry".to_owned(),
        ),
        Refusal::Unavailable(s) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("device registry unavailable: {}", s.message()),
        ),
    };
    let mut resp = (
        status,
        axum::Json(json!({"error": error, "detail": detail})),
    )
        .into_response();
    let headers = resp.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="iot", charset="UTF-8""#),
        );
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn post_readings(
    State(pipeline): State<Arc<Pipeline>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = format!("http:/v1/devices/{device}/readings");
    let senml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/senml+json"));
    let parsed = if senml {
        iot_domain::parse_senml(&body, &pipeline.limits, Utc::now())
    } else {
        iot_domain::parse_batch(&body, &pipeline.limits)
    };
    let result = match parsed {
        Ok(entries) => {
            pipeline
                .ingest(Door::Http, &device, entries, true, &origin, &body)
                .await
        }
        Err(r) => pipeline.refuse(r, &origin, &body).await,
    };
    match result {
        Ok(delivery) => answer(&delivery),
        Err(e) => {
            pipeline.metrics.transient(e.kind(), &e);
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": "unavailable", "detail": e.to_string()})),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

fn answer(d: &Delivery) -> Response {
    if let Some(r) = d.refused() {
        let status = match r.reason {
            RejectReason::UnknownDevice => StatusCode::NOT_FOUND,
            RejectReason::InactiveDevice => StatusCode::FORBIDDEN,
            RejectReason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        return (
            status,
            axum::Json(json!({"error": r.reason.code(), "detail": r.detail})),
        )
            .into_response();
    }
    let rejected: Vec<_> = d
        .rejected
        .iter()
        .map(|(i, r)| json!({"index": i, "reason": r.reason.code(), "detail": r.detail}))
        .collect();
    let status = if d.accepted == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (
        status,
        axum::Json(json!({"accepted": d.accepted, "rejected": rejected})),
    )
        .into_response()
}
