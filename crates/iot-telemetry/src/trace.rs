//! OpenTelemetry traces.
//!
//! Export is OTLP, configured only by the standard variables and off when
//! none asks for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on, `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` keep it off;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`) picks `grpc`
//! (the default) or `http/protobuf` (a collector behind an HTTP-only
//! ingress, say); `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_BSP_*` apply as the SDK defines.
//!
//! Context crosses process boundaries as W3C trace context (`traceparent`):
//! in Kafka record headers (`traceparent`, `inject`/`context_of`) and in
//! gRPC metadata (client side: the client layer of [`crate::grpc`] and
//! `iot_proto::Scope` inject it; server side: `grpc_server_span` extracts
//! it).

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header and metadata key.
pub const TRACEPARENT: &str = "traceparent";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

fn set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the standard variables ask for trace export.
pub fn export_configured() -> bool {
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let none = set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled && !none
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// The protocol the standard variables ask for; `Err` names one this
/// build does not speak.
pub fn configured_protocol() -> Result<Protocol, String> {
    let p =
        set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match p.as_deref().map(str::trim) {
        None | Some("grpc") => Ok(Protocol::Grpc),
        Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: use grpc or http/protobuf"
        )),
    }
}

/// The layer that turns tracing spans into OpenTelemetry spans: exporting
/// to `endpoint` over `protocol` when given (tests, with a short export
/// delay), else as the standard variables say, else none. A failure to
/// build the exporter is reported on stderr and leaves tracing off, never
/// the service down.
pub(crate) fn layer<S>(
    service: &'static str,
    endpoint: Option<(&str, Protocol)>,
) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig as _;
    if endpoint.is_none() && !export_configured() {
        return None;
    }
    let protocol = match endpoint {
        Some((_, p)) => Ok(p),
        None => configured_protocol(),
    };
    let built = match protocol {
        Err(e) => Err(e),
        Ok(Protocol::Grpc) => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some((e, _)) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build().map_err(|e| e.to_string())
        }
        Ok(Protocol::HttpProtobuf) => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some((e, _)) = endpoint {
                b = b.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
            }
            b.build().map_err(|e| e.to_string())
        }
    };
    let exporter = match built {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{service}: OTLP trace export not started: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let mut batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter);
    if endpoint.is_some() {
        batch = batch.with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_millis(200))
                .build(),
        );
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch.build())
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer(service);
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Whether spans are exported (hot paths skip per-record spans otherwise).
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Exports what is left and stops the exporter (call before exiting). The
/// SDK blocks while it flushes, so it runs off the async workers (whose
/// runtime the exporter's connection needs meanwhile).
pub async fn shutdown() {
    let Some(p) = PROVIDER.get() else { return };
    let flushed = tokio::task::spawn_blocking(move || p.shutdown()).await;
    if let Ok(Err(e)) = flushed {
        eprintln!("trace export shutdown: {e}");
    }
}

/// The current span's W3C `traceparent`, or `None` when nothing is traced.
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote span a `traceparent` names, if it is well formed.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the remote span `traceparent` names (nothing
/// when it is absent or malformed: the span then starts a trace).
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(span_context) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Adds a link from `span` to the remote span `traceparent` names (a batch
/// span links the readings it holds).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(sc) = span_context(traceparent) {
        span.add_link(sc);
    }
}

/// The span of one gRPC call a server receives, a child of the caller's
/// span when the call carries `traceparent` (for tonic's
/// `Server::builder().trace_fn`).
pub fn grpc_server_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.server",
        otel.kind = "server",
        rpc.method = %req.uri().path()
    );
    set_remote_parent(
        &span,
        req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()),
    );
    span
}

/// JSON log lines with the trace and span ids of the span they happen in
/// (when traces are recorded), so a log line leads to its trace:
/// `{..., "trace_id": "...", "span_id": "..."}`.
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let ids = ctx.lookup_current().and_then(|span| {
            let ext = span.extensions();
            let data = ext.get::<tracing_opentelemetry::OtelData>()?;
            Some((data.trace_id()?, data.span_id()?))
        });
        match (ids, line.strip_suffix("}\n")) {
            (Some((trace, span)), Some(head)) => writeln!(
                writer,
                "{head},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
            ),
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_or_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = span_context(tp).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context("00-garbage").is_none());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        // Nothing is traced without a layer: no header to send.
        assert_eq!(traceparent(), None);
    }

    #[test]
    fn json_log_lines_carry_the_trace_and_span_ids() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
                    .with_writer(move || Sink(sink.clone())),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work");
            let _in = span.enter();
            tracing::info!(answer = 42, "inside");
            assert!(traceparent().is_some());
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["fields"]["answer"], 42);
        assert_eq!(lines[1]["trace_id"].as_str().unwrap().len(), 32, "{text}");
        assert_eq!(lines[1]["span_id"].as_str().unwrap().len(), 16, "{text}");
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
