//! An OTLP/gRPC receiver in the test's process (the collector's
//! TraceService, from opentelemetry-proto) and helpers to read its spans,
//! for the trace tests (`mod otlp;`). Each trace test is a binary of its
//! own with one test: the tracing subscriber is process-wide, and it
//! exports to the receiver of that test.

// Each trace test uses some of the helpers.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

/// Every span received, as sent.
#[derive(Clone, Default)]
pub struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a free port; returns the endpoint.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    /// Serves OTLP/HTTP (protobuf bodies on `POST /v1/traces`) on a free
    /// port; returns the endpoint.
    pub async fn start_http(&self) -> String {
        use iot_proto::Message as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = self.0.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let mut spans = spans.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans);
                    }
                }
                ExportTraceServiceResponse::default().encode_to_vec()
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    pub fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some(v.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

/// The spans, one per line, for failure messages.
pub fn dump(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} span={} parent={} links={:?} attrs={:?}\n",
                s.name,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                s.links.iter().map(|l| hex(&l.span_id)).collect::<Vec<_>>(),
                s.attributes
                    .iter()
                    .map(|a| a.key.as_str())
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

/// Serves a receiver on a free port and makes it this process's trace
/// exporter (once per process).
pub async fn export_to_receiver() -> Receiver {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    iot_telemetry::init_tracing_exporting_to("iot-platform-test", &endpoint);
    receiver
}

pub fn sha256(s: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}
