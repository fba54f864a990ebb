//! The HTTP door: `POST /v1/devices/{device}/readings` with a batch (JSON
//! array, `{"readings": [...]}` or one reading naming its sensor), or SenML
//! with `Content-Type: application/senml+json`. Answers once Kafka holds
//! every reading or its dead letter.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use iot_domain::RejectReason;
use serde_json::json;

use crate::pipeline::{Delivery, Door, Pipeline};

/// `body_limit`: requests above it are refused with 413 before they are
/// read; bodies above the payload limit but within it are dead-lettered.
pub fn router(pipeline: Arc<Pipeline>, body_limit: usize) -> Router {
    let limit = body_limit;
    Router::new()
        .route("/v1/devices/{device}/readings", post(post_readings))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(pipeline)
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
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
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
