//! GraphQL over WebSocket on `GET /graphql` (graphql-transport-ws and the
//! legacy graphql-ws), bounded before and after authentication: messages
//! and frames at most `limits.ws_max_message_bytes`, `connection_init`
//! within `limits.ws_init_timeout_ms` (else closed with 4408), every
//! operation charged to its caller's rate limit, and the connection closed
//! with 4403 when the caller's token expires.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::oneshot;

use crate::auth::Principal;
use crate::http::{AppState, RateLimiter};
use crate::schema;

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    pub max_message_bytes: usize,
    pub init_timeout: Duration,
}

/// What each connection reserves for reading.
const READ_BUFFER: usize = 4096;

/// graphql-transport-ws: no `connection_init` in time.
const INIT_TIMEOUT: u16 = 4408;
/// graphql-transport-ws: forbidden (here: the caller's token expired).
const FORBIDDEN: u16 = 4403;

pub async fn upgrade(
    State(s): State<AppState>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_headers: Option<Principal> = s.auth.from_headers(&headers).ok();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(s.ws.max_message_bytes)
        .max_frame_size(s.ws.max_message_bytes)
        // tungstenite reserves its whole read buffer per connection (128
        // KiB by default): 10,000 idle sockets would hold over a GiB.
        // Messages larger than the buffer are still read, in more steps.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| session(socket, s, protocol, from_headers))
}

/// One connection: the GraphQL session writes through a channel that this
/// task forwards to the socket, so that the task can also close the socket
/// itself, with a code, when the caller does not authenticate in time or
/// its token expires.
async fn session(
    socket: WebSocket,
    s: AppState,
    protocol: GraphQLProtocol,
    from_headers: Option<Principal>,
) {
    let (mut sink, stream) = socket.split();
    let (out, mut outgoing) = futures::channel::mpsc::channel::<Message>(16);
    // The caller's token expiry, once `connection_init` is accepted.
    let (inited, init) = oneshot::channel::<Option<chrono::DateTime<chrono::Utc>>>();
    let inited = Arc::new(Mutex::new(Some(inited)));
    let (auth, up, limiter) = (s.auth.clone(), s.up.clone(), s.limiter.clone());
    let graphql = GraphQLWebSocket::new_with_pair(out, stream, s.schema.clone(), protocol)
        .on_connection_init(move |payload| async move {
            let who = auth
                .from_init_payload(&payload, from_headers.as_ref())
                .map_err(|e| async_graphql::Error::new(e.to_string()))?;
            limiter
                .take(&who.name, 1)
                .map_err(|_| async_graphql::Error::new("too many requests; slow down"))?;
            if let Some(tx) = inited.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = tx.send(who.expires);
            }
            // Every operation on the connection is charged too.
            let quota = WsQuota {
                limiter,
                caller: who.name.clone(),
            };
            let mut data = schema::request_data(&up, who);
            data.insert(quota);
            Ok(data)
        })
        .serve();
    let init_timeout = s.ws.init_timeout;
    let closer = async move {
        match tokio::time::timeout(init_timeout, init).await {
            Err(_) => (INIT_TIMEOUT, "Connection initialisation timeout"),
            Ok(Ok(Some(expires))) => {
                let left = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(left).await;
                (FORBIDDEN, "Forbidden: the token expired")
            }
            // No expiry, or the session ended before it was initialised.
            Ok(_) => std::future::pending().await,
        }
    };
    tokio::pin!(graphql, closer);
    let mut running = true;
    loop {
        tokio::select! {
            () = &mut graphql, if running => running = false,
            m = outgoing.next() => match m {
                Some(m) => if sink.send(m).await.is_err() { return },
                // The session ended and everything it wrote is sent.
                None => return,
            },
            (code, reason) = &mut closer => {
                let frame = CloseFrame { code, reason: reason.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

/// The caller of a WebSocket connection and its token bucket: each
/// operation started on the connection takes a token ([`WsRateLimit`]),
/// as each HTTP request does.
pub struct WsQuota {
    limiter: Arc<RateLimiter>,
    caller: String,
}

/// Charges operations on WebSocket connections to their caller's bucket
/// (HTTP requests are charged by the handler before they run).
pub struct WsRateLimit;

impl async_graphql::extensions::ExtensionFactory for WsRateLimit {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(WsRateLimit)
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for WsRateLimit {
    async fn prepare_request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        request: async_graphql::Request,
        next: async_graphql::extensions::NextPrepareRequest<'_>,
    ) -> async_graphql::ServerResult<async_graphql::Request> {
        if let Some(q) = ctx.data_opt::<WsQuota>()
            && q.limiter.take(&q.caller, 1).is_err()
        {
            let e = crate::upstream::error("RATE_LIMITED", "too many requests; slow down");
            return Err(e.into_server_error(async_graphql::Pos::default()));
        }
        next.run(ctx, request).await
    }
}
