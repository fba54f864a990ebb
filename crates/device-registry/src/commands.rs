//! Talking back to devices: commands with a result, and the desired state
//! a device receives (gRPC `iot.v1.DeviceCommandsService`). The registry
//! stores both (`device_commands`, `device_state`) and its own MQTT 5
//! session publishes them ([`session`]); docs/design/commands.md says why.

mod metrics;
pub(crate) mod session;
mod store;
mod topics;

use deadpool_postgres::Pool;
use iot_proto::scope_of as scope;
use iot_proto::v1::{self, device_commands_service_server::DeviceCommandsService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use metrics::CommandMetrics;
pub(crate) use topics::Topics;

use crate::RegistryError;

/// The longest command name.
const MAX_NAME: usize = 100;
/// The largest command payload or desired state, as JSON text.
const MAX_JSON: usize = 64 * 1024;
/// The longest a command may wait for its device: 30 days.
const MAX_TIMEOUT_SECS: u32 = 30 * 24 * 3600;
const DEFAULT_TIMEOUT_SECS: u32 = 60;

#[derive(Clone)]
pub struct CommandsService {
    pool: Pool,
    /// None when the registry does not manage the broker (broker.enabled =
    /// false): nothing would deliver a command.
    publisher: Option<session::Publisher>,
    shutdown: iot_runtime::CancellationToken,
}

impl CommandsService {
    pub fn new(
        pool: Pool,
        publisher: Option<session::Publisher>,
        shutdown: iot_runtime::CancellationToken,
    ) -> Self {
        Self {
            pool,
            publisher,
            shutdown,
        }
    }

    fn publisher(&self) -> Result<&session::Publisher, Status> {
        self.publisher.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this registry does not talk to the broker (broker.enabled = false)",
            )
        })
    }

    /// The device (UUID or external id) if `owner` may see it: its UUID
    /// and owner.
    async fn device(&self, id: &str, owner: Option<Uuid>) -> Result<(Uuid, Uuid), RegistryError> {
        if id.is_empty() {
            return Err(RegistryError::Invalid(vec!["device_id: is empty".into()]));
        }
        let d = crate::store::get(&self.pool, id, owner)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        let parse = |s: &str| Uuid::parse_str(s).map_err(|_| RegistryError::NotFound(id.into()));
        Ok((parse(&d.id)?, parse(&d.owner_id)?))
    }
}

/// Parses JSON text of at most [`MAX_JSON`] bytes; empty is `{}`.
fn json_field(field: &str, text: &str, p: &mut Vec<String>) -> serde_json::Value {
    if text.len() > MAX_JSON {
        p.push(format!("{field}: longer than {MAX_JSON} bytes"));
        return serde_json::Value::Null;
    }
    if text.trim().is_empty() {
        return serde_json::json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|e| {
        p.push(format!("{field}: not JSON ({e})"));
        serde_json::Value::Null
    })
}

#[tonic::async_trait]
impl DeviceCommandsService for CommandsService {
    async fn send_command(
        &self,
        request: Request<v1::SendCommandRequest>,
    ) -> Result<Response<v1::Command>, Status> {
        let caller = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let name = req.name.trim();
        if name.is_empty() || name.len() > MAX_NAME {
            p.push(format!("name: must be 1 to {MAX_NAME} characters"));
        }
        let payload = json_field("payload_json", &req.payload_json, &mut p);
        let timeout_secs = match req.timeout_secs {
            0 => DEFAULT_TIMEOUT_SECS,
            n if n > MAX_TIMEOUT_SECS => {
                p.push(format!("timeout_secs: more than {MAX_TIMEOUT_SECS}"));
                n
            }
            n => n,
        };
        if !p.is_empty() {
            return Err(iot_proto::invalid_argument(&p));
        }
        let publisher = self.publisher()?;
        let (device, owner) = self.device(&req.device_id, caller).await?;
        let command = store::insert(
            &self.pool,
            &store::NewCommand {
                id: Uuid::new_v4(),
                device,
                owner,
                name,
                payload,
                timeout_secs,
            },
        )
        .await?;
        publisher.wake();
        Ok(Response::new(command))
    }

    async fn get_command(
        &self,
        request: Request<v1::GetCommandRequest>,
    ) -> Result<Response<v1::Command>, Status> {
        let caller = scope(&request)?;
        let id = request.into_inner().id;
        let uuid = Uuid::parse_str(&id)
            .map_err(|_| iot_proto::invalid_argument(&["id: not a UUID".to_owned()]))?;
        let c = store::get(&self.pool, uuid, caller)
            .await?
            .ok_or(RegistryError::NotFound(id))?;
        Ok(Response::new(c))
    }

    async fn list_commands(
        &self,
        request: Request<v1::ListCommandsRequest>,
    ) -> Result<Response<v1::ListCommandsResponse>, Status> {
        let caller = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let limit = match req.limit {
            0 => 100,
            n if n > crate::service::MAX_LIST => {
                p.push(format!(
                    "limit: {n} is more than {}",
                    crate::service::MAX_LIST
                ));
                n
            }
            n => n,
        };
        let after = match req.cursor.as_str() {
            "" => None,
            c => {
                let parsed = iot_proto::parse_keyset_cursor(c);
                if parsed.is_none() {
                    p.push("cursor: not a cursor this listing gave".into());
                }
                parsed
            }
        };
        if !p.is_empty() {
            return Err(iot_proto::invalid_argument(&p));
        }
        let (device, _) = self.device(&req.device_id, caller).await?;
        let commands = store::list(&self.pool, device, after, limit).await?;
        let next_cursor = match commands.last() {
            Some(c) if commands.len() == limit as usize => {
                iot_proto::keyset_cursor(c.created_at.as_ref(), &c.id)
            }
            _ => String::new(),
        };
        Ok(Response::new(v1::ListCommandsResponse {
            commands,
            next_cursor,
        }))
    }

    type WatchCommandsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::Command, Status>> + Send>>;

    async fn watch_commands(
        &self,
        request: Request<v1::WatchCommandsRequest>,
    ) -> Result<Response<Self::WatchCommandsStream>, Status> {
        let caller = scope(&request)?;
        let (device, _) = self.device(&request.into_inner().device_id, caller).await?;
        let from = store::last_change(&self.pool, device).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (pool, shutdown) = (self.pool.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let gone = tx.clone();
            let tail = iot_db::tail::tail(
                from,
                std::time::Duration::from_millis(200),
                |after| {
                    let pool = pool.clone();
                    async move { store::changes(&pool, device, after).await }
                },
                |c: v1::Command, _| {
                    let tx = tx.clone();
                    async move { tx.send(Ok(c)).await.is_ok() }
                },
            );
            // Until the watcher goes away (even when nothing changes) or
            // the service stops.
            tokio::select! {
                () = gone.closed() => {}
                () = shutdown.cancelled() => {}
                () = tail => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn set_desired_state(
        &self,
        request: Request<v1::SetDesiredStateRequest>,
    ) -> Result<Response<v1::DeviceState>, Status> {
        let caller = scope(&request)?;
        let req = request.into_inner();
        let mut p = Vec::new();
        let desired = json_field("desired_json", &req.desired_json, &mut p);
        if !desired.is_object() && p.is_empty() {
            p.push("desired_json: must be a JSON object".into());
        }
        let expected = i64::try_from(req.expected_version).unwrap_or_else(|_| {
            p.push("expected_version: too large".into());
            0
        });
        if !p.is_empty() {
            return Err(iot_proto::invalid_argument(&p));
        }
        let publisher = self.publisher()?;
        let (device, _) = self.device(&req.device_id, caller).await?;
        let Some(state) = store::set_desired(&self.pool, device, &desired, expected).await? else {
            let now = store::get_state(&self.pool, device).await?;
            return Err(RegistryError::Stale(format!(
                "expected_version {expected} is not the desired state's version {}; read it again",
                now.desired_version
            ))
            .into());
        };
        publisher.wake();
        Ok(Response::new(state))
    }

    async fn get_device_state(
        &self,
        request: Request<v1::GetDeviceStateRequest>,
    ) -> Result<Response<v1::DeviceState>, Status> {
        let caller = scope(&request)?;
        let (device, _) = self.device(&request.into_inner().device_id, caller).await?;
        Ok(Response::new(store::get_state(&self.pool, device).await?))
    }
}
