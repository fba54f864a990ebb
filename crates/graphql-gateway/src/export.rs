//! `GET /v1/export`: a device's raw readings in a range as a file (CSV,
//! JSON lines or Parquet), for its owner, streamed from ingest-writer's
//! `ExportReadings` as it is written. Archived days (cold storage) and the
//! database come merged in time order. The caller authenticates as for
//! `/graphql`; errors are GraphQL-shaped JSON with the API's codes.
//!
//! The body is never held whole: each part from the writer is passed on as
//! it arrives, and the writer waits while the client is behind. An error
//! after the first byte cuts the response off (no final chunk), so a client
//! never takes a partial file for a complete one.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use iot_proto::v1;
use serde::Deserialize;

use crate::http::AppState;
use crate::upstream::{TELEMETRY, status_error};

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    /// The device's platform id (UUID).
    device: Option<String>,
    /// One sensor; absent: every sensor of the device.
    sensor: Option<String>,
    /// `[from, to)`, RFC 3339.
    from: Option<String>,
    to: Option<String>,
    /// `csv` (the default), `jsonl` or `parquet`.
    format: Option<String>,
}

/// The HTTP status that goes with an API error code.
fn status_of(code: &str) -> StatusCode {
    match code {
        "BAD_USER_INPUT" => StatusCode::BAD_REQUEST,
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" => StatusCode::FORBIDDEN,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "RATE_LIMITED" | "BACKEND_BUSY" => StatusCode::TOO_MANY_REQUESTS,
        "BACKEND_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "BACKEND_TIMEOUT" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A GraphQL-shaped error body: `{"errors": [{message, extensions}]}`.
fn refuse(e: &async_graphql::Error) -> Response {
    let code = e
        .extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .and_then(|v| match v {
            async_graphql::Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "INTERNAL".to_owned());
    let body = serde_json::json!({
        "errors": [{"message": e.message, "extensions": e.extensions}]
    });
    (status_of(&code), axum::Json(body)).into_response()
}

fn bad(message: impl Into<String>) -> Response {
    refuse(&crate::upstream::error("BAD_USER_INPUT", message))
}

/// The request's problems, all named by parameter, or the writer's request.
fn request_of(p: &Params) -> Result<(v1::ExportReadingsRequest, &'static str), Vec<String>> {
    let mut problems = Vec::new();
    let mut time = |name: &str, v: &Option<String>| -> Option<DateTime<Utc>> {
        match v.as_deref() {
            None | Some("") => {
                problems.push(format!("{name}: is required (RFC 3339)"));
                None
            }
            Some(s) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(e) => {
                    problems.push(format!("{name}: {s:?} is not an RFC 3339 time ({e})"));
                    None
                }
            },
        }
    };
    let (from, to) = (time("from", &p.from), time("to", &p.to));
    if let (Some(f), Some(t)) = (from, to)
        && t <= f
    {
        problems.push("to: must be after from".to_owned());
    }
    let device = match p.device.as_deref() {
        None | Some("") => {
            problems.push("device: is required (the device's id)".to_owned());
            String::new()
        }
        Some(d) => match uuid::Uuid::parse_str(d) {
            Ok(u) => u.to_string(),
            Err(_) => {
                problems.push(format!("device: {d:?} is not a device id (UUID)"));
                String::new()
            }
        },
    };
    let (format, content_type) = match p.format.as_deref().unwrap_or("csv") {
        "csv" => ("csv", "text/csv; charset=utf-8"),
        "jsonl" => ("jsonl", "application/x-ndjson"),
        "parquet" => ("parquet", "application/vnd.apache.parquet"),
        other => {
            problems.push(format!(
                "format: {other:?} is not one of csv, jsonl, parquet"
            ));
            ("", "")
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok((
        v1::ExportReadingsRequest {
            device_uuid: device,
            sensor_name: p.sensor.clone().unwrap_or_default(),
            start: from.map(iot_proto::timestamp),
            end: to.map(iot_proto::timestamp),
            format: format.to_owned(),
        },
        content_type,
    ))
}

pub async fn download(
    State(s): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    let who = match s.auth.from_headers(&headers) {
        Ok(p) => p,
        Err(e) => {
            return refuse(&crate::upstream::error("UNAUTHENTICATED", e.to_string()));
        }
    };
    let Ok(Query(params)) = params else {
        return bad("the query string is not valid");
    };
    if s.limiter.take(&who.name, 1).is_err() {
        return refuse(&crate::upstream::error(
            "RATE_LIMITED",
            "too many requests; slow down",
        ));
    }
    let (req, content_type) = match request_of(&params) {
        Ok(r) => r,
        Err(problems) => return bad(problems.join("; ")),
    };
    let filename = format!("{}.{}", req.device_uuid, req.format);
    let mut telemetry = s.up.telemetry(who.scope());
    // The writer checks the range and ownership before its first part, so
    // those errors arrive here, before any byte of the body.
    let parts = match telemetry.export_readings(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return refuse(&status_error(TELEMETRY, &status)),
    };
    let body = Body::from_stream(parts.map(|part| match part {
        Ok(chunk) => Ok(Bytes::from(chunk.data)),
        Err(status) => {
            tracing::warn!(%status, "export cut short");
            Err(std::io::Error::other(status.message().to_owned()))
        }
    }));
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(device: &str, from: &str, to: &str, format: Option<&str>) -> Params {
        Params {
            device: Some(device.into()),
            sensor: None,
            from: Some(from.into()),
            to: Some(to.into()),
            format: format.map(Into::into),
        }
    }

    #[test]
    fn problems_name_their_parameters() {
        let p = params("nope", "yesterday", "2025-01-01T00:00:00Z", Some("xls"));
        let problems = request_of(&p).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("from: \"yesterday\""),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("device: \"nope\""), "{problems:?}");
        assert!(problems[2].starts_with("format: \"xls\""), "{problems:?}");
        let d = uuid::Uuid::new_v4().to_string();
        let backwards = params(&d, "2025-01-02T00:00:00Z", "2025-01-01T00:00:00Z", None);
        assert_eq!(
            request_of(&backwards).unwrap_err(),
            vec!["to: must be after from".to_owned()]
        );
    }

    #[test]
    fn csv_is_the_default_format() {
        let d = uuid::Uuid::new_v4().to_string();
        let p = params(
            &d,
            "2025-01-01T00:00:00Z",
            "2025-01-02T00:00:00+01:00",
            None,
        );
        let (req, content_type) = request_of(&p).unwrap();
        assert_eq!(req.format, "csv");
        assert_eq!(content_type, "text/csv; charset=utf-8");
        assert_eq!(req.device_uuid, d);
        assert!(req.sensor_name.is_empty());
    }
}
