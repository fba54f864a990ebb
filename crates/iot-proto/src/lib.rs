//! Generated protobuf and gRPC code for the platform.
//!
//! API Boundary: this is the only crate that knows the wire format. Services
//! convert between these types and `iot_domain` types at their edges.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("iot.v1");
}

/// The compiled `proto/` files, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/iot_descriptor.bin"));

pub mod codes;
pub mod reading;
pub mod tls;

pub use codes::TextCode;
pub use tls::{Caller, GrpcTls, TlsError, caller_of, require_platform};

pub use prost::Message;
pub use prost_types::Timestamp;

/// Converts a chrono time to a protobuf timestamp.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to chrono; `None` when out of range.
pub fn from_timestamp(t: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    chrono::DateTime::from_timestamp(t.seconds, nanos)
}

/// A page cursor for listings ordered by (created_at, id): the last item's
/// creation time (microseconds) and id. Opaque to clients.
pub fn keyset_cursor(created_at: Option<&Timestamp>, id: &str) -> String {
    let micros = created_at
        .and_then(from_timestamp)
        .map_or(0, |t| t.timestamp_micros());
    format!("{micros}:{id}")
}

/// Reads a [`keyset_cursor`]; `None` when it is not one.
pub fn parse_keyset_cursor(s: &str) -> Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)> {
    let (micros, id) = s.split_once(':')?;
    Some((
        chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        uuid::Uuid::parse_str(id).ok()?,
    ))
}

/// Whose devices a call to device-registry may see: one owner (tenant) or
/// all (the platform's own services). Carried in the `x-iot-owner` gRPC
/// metadata: an owner UUID, or `*` for all. The registry's port is internal;
/// the public API (graphql-gateway) sets the owner of the authenticated
/// caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Owner(String),
}

/// The metadata key of [`Scope`].
pub const SCOPE_METADATA: &str = "x-iot-owner";

impl Scope {
    /// Puts the scope in a request's metadata.
    pub fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
        let value = match self {
            Scope::Admin => "*",
            Scope::Owner(o) => o.as_str(),
        };
        let value = value
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("owner id is not valid metadata"))?;
        metadata.insert(SCOPE_METADATA, value);
        Ok(())
    }
}

impl tonic::service::Interceptor for Scope {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(req.metadata_mut())?;
        Traced.call(req)
    }
}

/// A client codec that encodes the request with prost and hands over the
/// answer as the bytes of its one message, as they arrived (not copied):
/// for a caller that reads the wire format itself, or that times the
/// answer's arrival apart from its decoding.
pub struct WireCodec<Req>(std::marker::PhantomData<fn(Req)>);

impl<Req> Default for WireCodec<Req> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<Req> Clone for WireCodec<Req> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req> Copy for WireCodec<Req> {}

impl<Req: prost::Message + Send + 'static> tonic::codec::Codec for WireCodec<Req> {
    type Encode = Req;
    type Decode = prost::bytes::Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl<Req: prost::Message> tonic::codec::Encoder for WireCodec<Req> {
    type Item = Req;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Req,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<Req> tonic::codec::Decoder for WireCodec<Req> {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<prost::bytes::Bytes>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Carries the caller's trace (W3C `traceparent` of the current span) to
/// the service it calls; `Scope` does it too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traced;

impl tonic::service::Interceptor for Traced {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(tp) = iot_telemetry::trace::traceparent()
            && let Ok(v) = tp.parse()
        {
            req.metadata_mut()
                .insert(iot_telemetry::trace::TRACEPARENT, v);
        }
        Ok(req)
    }
}

/// The caller's scope from the `x-iot-owner` metadata of a request:
/// `Some(owner)`, or `None` for the admin scope (`*`). UNAUTHENTICATED when
/// it is missing or neither; PERMISSION_DENIED when a caller that is not a
/// platform identity asks for the admin scope ([`tls::caller_of`]).
pub fn scope_of<T>(req: &tonic::Request<T>) -> Result<Option<uuid::Uuid>, tonic::Status> {
    let Some(v) = req.metadata().get(SCOPE_METADATA) else {
        return Err(tonic::Status::unauthenticated(format!(
            "{SCOPE_METADATA} metadata is required: an owner UUID, or * for the admin scope"
        )));
    };
    let scope = match v.to_str().unwrap_or_default() {
        "*" => None,
        s => Some(uuid::Uuid::parse_str(s).map_err(|_| {
            tonic::Status::unauthenticated(format!(
                "{SCOPE_METADATA} {s:?} is neither an owner UUID nor *"
            ))
        })?),
    };
    match (tls::caller_of(req), scope) {
        (tls::Caller::Anonymous, _) => Err(tls::anonymous()),
        (tls::Caller::Service(name), None) => Err(tonic::Status::permission_denied(format!(
            "{name} is not a platform identity (grpc_tls.platform_identities): it may ask \
             for one owner's data ({SCOPE_METADATA}: <owner>), not for all owners (*)"
        ))),
        (_, scope) => Ok(scope),
    }
}

/// A channel to a platform service wearing the client layer
/// ([`iot_telemetry::grpc::GrpcClientLayer`]): the caller's `traceparent`
/// on every call and, when the layer is a measured one, request metrics by
/// method.
pub type ClientChannel = iot_telemetry::grpc::MeasuredClient<tonic::transport::Channel>;

/// `channel` wearing `layer`.
pub fn client_channel(
    channel: tonic::transport::Channel,
    layer: iot_telemetry::grpc::GrpcClientLayer,
) -> ClientChannel {
    tower::ServiceBuilder::new().layer(layer).service(channel)
}

/// An Alerts client whose every call carries `scope`.
pub type AlertsClient = v1::alerts_client::AlertsClient<
    tonic::service::interceptor::InterceptedService<ClientChannel, Scope>,
>;

/// A device-registry client whose every call carries `scope`.
pub type RegistryClient = v1::device_registry_client::DeviceRegistryClient<
    tonic::service::interceptor::InterceptedService<ClientChannel, Scope>,
>;

/// A device-registry client on `channel` (wearing its layer), with
/// `scope`.
pub fn registry_client_on(channel: ClientChannel, scope: Scope) -> RegistryClient {
    v1::device_registry_client::DeviceRegistryClient::with_interceptor(channel, scope)
}

/// Connects to device-registry at `url` with `scope` (no request metrics),
/// over mTLS when `tls` is on.
pub async fn registry_client(
    url: impl Into<String>,
    scope: Scope,
    tls: &GrpcTls,
) -> Result<RegistryClient, ConnectError> {
    let channel = connect(tls, "device-registry", &url.into()).await?;
    Ok(registry_client_on(
        client_channel(channel, iot_telemetry::grpc::GrpcClientLayer::unmeasured()),
        scope,
    ))
}

/// A DeviceCommandsService client (served by device-registry) whose every
/// call carries `scope`.
pub type CommandsClient = v1::device_commands_service_client::DeviceCommandsServiceClient<
    tonic::service::interceptor::InterceptedService<ClientChannel, Scope>,
>;

/// A commands client on `channel` (device-registry's, wearing its layer),
/// with `scope`.
pub fn commands_client_on(channel: ClientChannel, scope: Scope) -> CommandsClient {
    v1::device_commands_service_client::DeviceCommandsServiceClient::with_interceptor(
        channel, scope,
    )
}

/// Connects to device-registry's commands service at `url` with `scope`
/// (no request metrics), over mTLS when `tls` is on.
pub async fn commands_client(
    url: impl Into<String>,
    scope: Scope,
    tls: &GrpcTls,
) -> Result<CommandsClient, ConnectError> {
    let channel = connect(tls, "device-registry", &url.into()).await?;
    Ok(commands_client_on(
        client_channel(channel, iot_telemetry::grpc::GrpcClientLayer::unmeasured()),
        scope,
    ))
}

/// Connects to alert-engine at `url` with `scope` (no request metrics),
/// over mTLS when `tls` is on.
pub async fn alerts_client(
    url: impl Into<String>,
    scope: Scope,
    tls: &GrpcTls,
) -> Result<AlertsClient, ConnectError> {
    let channel = connect(tls, "alert-engine", &url.into()).await?;
    Ok(v1::alerts_client::AlertsClient::with_interceptor(
        client_channel(channel, iot_telemetry::grpc::GrpcClientLayer::unmeasured()),
        scope,
    ))
}

/// Why a client could not connect to the upstream it names.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gRPC upstream {link} ({url}): {detail}")]
    Connect {
        link: &'static str,
        url: String,
        detail: String,
    },
}

/// A connected channel to the upstream `link` at `url`; a failure names
/// the upstream and says why with every cause (a certificate refused, an
/// address unreachable).
pub async fn connect(
    tls: &GrpcTls,
    link: &'static str,
    url: &str,
) -> Result<tonic::transport::Channel, ConnectError> {
    tls.endpoint(link, url)?
        .connect()
        .await
        .map_err(|e| ConnectError::Connect {
            link,
            url: url.to_owned(),
            detail: error_chain(&e),
        })
}

/// An error with its causes, `: `-separated (a transport error's own text
/// says only "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_cursors_round_trip() {
        let t = chrono::DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        let id = uuid::Uuid::new_v4();
        let c = keyset_cursor(Some(&timestamp(t)), &id.to_string());
        assert_eq!(parse_keyset_cursor(&c), Some((t, id)));
        assert_eq!(parse_keyset_cursor("garbage"), None);
    }
}

/// The trailers of a quota refusal: the quota's setting (under `limits`)
/// and its value.
pub const QUOTA_METADATA: &str = "iot-quota";
pub const QUOTA_LIMIT_METADATA: &str = "iot-quota-limit";

/// RESOURCE_EXHAUSTED naming the quota in its `message` and, for callers
/// that act on it (graphql-gateway's `QUOTA_EXCEEDED`), in the trailers
/// [`QUOTA_METADATA`] and [`QUOTA_LIMIT_METADATA`].
pub fn quota_exceeded(quota: &'static str, limit: u32, message: String) -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        QUOTA_METADATA,
        tonic::metadata::MetadataValue::from_static(quota),
    );
    md.insert(QUOTA_LIMIT_METADATA, limit.into());
    tonic::Status::with_metadata(tonic::Code::ResourceExhausted, message, md)
}

/// An INVALID_ARGUMENT status for `problems`, each `"field: what is wrong"`
/// (a problem without a field prefix names no field): the message lists
/// them all, and a `google.rpc.BadRequest` detail carries one field
/// violation each, for callers that show an error at its field.
pub fn invalid_argument<S: AsRef<str>>(problems: &[S]) -> tonic::Status {
    let message = problems
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("; ");
    let violations = problems
        .iter()
        .map(|p| {
            let (field, what) = split_field(p.as_ref());
            tonic_types::FieldViolation::new(field, what)
        })
        .collect::<Vec<_>>();
    <tonic::Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::InvalidArgument,
        message,
        tonic_types::ErrorDetails::with_bad_request(violations),
    )
}

/// The field violations of an INVALID_ARGUMENT status, as (field,
/// description); empty when it carries none.
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    tonic_types::StatusExt::get_details_bad_request(status)
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// `"owner_id: is not a UUID"` → (`owner_id`, `is not a UUID`); a field is
/// a path of names (`readings[3].value`), never a sentence.
fn split_field(problem: &str) -> (&str, &str) {
    match problem.split_once(": ") {
        Some((field, what))
            if !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-[]".contains(c)) =>
        {
            (field, what)
        }
        _ => ("", problem),
    }
}

#[cfg(test)]
mod invalid_argument_tests {
    #[test]
    fn problems_become_field_violations() {
        let s = super::invalid_argument(&["owner_id: \"x\" is not a UUID", "start and end differ"]);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "owner_id: \"x\" is not a UUID; start and end differ"
        );
        assert_eq!(
            super::field_violations(&s),
            vec![
                ("owner_id".to_owned(), "\"x\" is not a UUID".to_owned()),
                (String::new(), "start and end differ".to_owned()),
            ]
        );
    }
}
