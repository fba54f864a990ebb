//! Device accounts at the MQTT broker, through Mosquitto's dynamic-security
//! plugin: JSON commands published to `$CONTROL/dynamic-security/v1`,
//! answers read from `.../response` (see
//! <https://mosquitto.org/documentation/dynamic-security/>).
//!
//! Each device gets a client (username = its `device_id`) and a role of its
//! own that may publish only to its own topics (the plugin in Mosquitto 2.0
//! has no `%u` substitution in role ACLs, so the role names the topics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use iot_runtime::CancellationToken;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::oneshot;
use uuid::Uuid;

const CONTROL: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";

/// Where the broker is, the registry's admin account there, and the topics
/// a device may publish to (`{device_id}` is replaced).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Issue broker accounts for devices. Off only for deployments whose
    /// broker authenticates devices some other way.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub client_id: String,
    pub device_topics: Vec<String>,
    pub timeout_ms: u64,
    /// Where commands go and devices answer them
    /// (`{commands_root}/{device_id}/{command}`, docs/mqtt-devices.md).
    pub commands_root: String,
    /// Where desired states are retained and devices report theirs
    /// (`{state_root}/{device_id}/desired`, `.../reported`).
    pub state_root: String,
    /// TLS to the broker (`[broker.tls]`: `enabled`, `ca_file`, and
    /// `cert_file` with `key_file` for a broker that wants a client
    /// certificate); `port` is then the broker's TLS listener, 8883.
    pub tls: iot_mqtt::TlsConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 11883,
            username: "platform.admin".into(),
            password: String::new(),
            client_id: "device-registry".into(),
            device_topics: vec![
                "sensors/{device_id}/+".into(),
                "batches/{device_id}".into(),
                "senml/{device_id}".into(),
                // Its presence: birth message and last will.
                "devices/{device_id}/presence".into(),
            ],
            timeout_ms: 5_000,
            commands_root: "commands".into(),
            state_root: "state".into(),
            tls: iot_mqtt::TlsConfig::default(),
        }
    }
}

impl BrokerConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if self.password.is_empty() {
            p.push(format!(
                "{prefix}.password is required while {prefix}.enabled (the dynamic-security admin account)"
            ));
        }
        p.extend(iot_runtime::config::placeholder_problem(
            &format!("{prefix}.password"),
            &self.password,
        ));
        if self.device_topics.is_empty()
            || self
                .device_topics
                .iter()
                .any(|t| !t.contains("{device_id}"))
        {
            p.push(format!(
                "{prefix}.device_topics must be non-empty and each must contain {{device_id}}"
            ));
        }
        for (key, root) in [
            ("commands_root", &self.commands_root),
            ("state_root", &self.state_root),
        ] {
            if root.is_empty() || root.ends_with('/') || root.contains(['+', '#']) {
                p.push(format!(
                    "{prefix}.{key} must be a topic without wildcards or a trailing '/'"
                ));
            }
        }
        if self.timeout_ms == 0 {
            p.push(format!("{prefix}.timeout_ms must be positive"));
        }
        p.extend(self.tls.problems(&format!("{prefix}.tls")));
        p
    }

    /// The topic filters `device_id` may publish to.
    pub fn topics_of(&self, device_id: &str) -> Vec<String> {
        self.device_topics
            .iter()
            .map(|t| t.replace("{device_id}", device_id))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The session dropped between the command and its answer, which went
    /// with it (the broker ends every session of an account whose roles
    /// change, and restarts end them all).
    #[error("admin session dropped before the broker answered")]
    Interrupted,
    /// The admin session is down, and this is why (the link named).
    #[error("admin session not connected: {0}")]
    NotConnected(iot_mqtt::LinkError),
    #[error("broker connection: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("broker refused {command}: {error}")]
    Refused { command: String, error: String },
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Value>>>>>;

/// How often an operation is sent again after [`BrokerError::Interrupted`].
const RETRIES_WHEN_INTERRUPTED: u32 = 3;

/// The admin session as calls see it.
#[derive(Debug, Clone, Copy, Default)]
struct Session {
    /// Connections made so far: a call whose session is not the one it
    /// sent on has lost its answer.
    connects: u64,
    /// Subscribed to the answers: a command sent before that would have
    /// its answer go by unheard.
    subscribed: bool,
}

/// Why the admin session is down, while it is.
type LastError = Arc<Mutex<Option<iot_mqtt::LinkError>>>;

/// The registry's admin session with the broker's dynamic-security plugin.
#[derive(Clone)]
pub struct Dynsec {
    client: AsyncClient,
    pending: Pending,
    session: tokio::sync::watch::Receiver<Session>,
    /// The session's last connection error, cleared when it connects: a
    /// call that finds the session down says why.
    down: LastError,
    /// Set when the TLS settings cannot be used: the session never starts.
    unusable: Option<iot_mqtt::LinkError>,
    timeout: Duration,
    config: BrokerConfig,
}

impl Dynsec {
    /// Connects in the background (and reconnects); calls wait for it.
    /// A CA or key file that cannot be used leaves the session down for
    /// good, and every call says so.
    pub fn start(config: &BrokerConfig, shutdown: CancellationToken) -> Self {
        let link = iot_mqtt::Link::new(&config.host, config.port);
        let mut opts = MqttOptions::new(&config.client_id, &config.host, config.port);
        opts.set_credentials(&config.username, &config.password)
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true);
        let transport = config.tls.transport();
        if let Ok(t) = &transport {
            opts.set_transport(t.clone());
        }
        let (client, mut events) = AsyncClient::new(opts, 64);
        let pending: Pending = Arc::default();
        let (sub, answers) = (client.clone(), pending.clone());
        let (session_tx, session) = tokio::sync::watch::channel(Session::default());
        let down: LastError = Arc::default();
        let mut dynsec = Self {
            client,
            pending,
            session,
            down: down.clone(),
            unusable: None,
            timeout: Duration::from_millis(config.timeout_ms),
            config: config.clone(),
        };
        if let Err(e) = transport {
            let e = link.error(&e);
            tracing::error!(error = %e, "broker admin session cannot start");
            dynsec.unusable = Some(e);
            return dynsec;
        }
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return,
                    e = events.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        session_tx.send_modify(|s| s.subscribed = true);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        *lock(&down) = None;
                        session_tx.send_modify(|s| {
                            s.connects += 1;
                            s.subscribed = false;
                        });
                        // A new session each time: subscribe again.
                        if let Err(e) = sub.try_subscribe(RESPONSE, QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "cannot subscribe to dynamic-security answers");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE => {
                        deliver(&answers, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        session_tx.send_modify(|s| s.subscribed = false);
                        let e = link.error(&e);
                        tracing::warn!(error = %e, "broker admin connection lost; retrying");
                        *lock(&down) = Some(e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        dynsec
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Sends commands in one control message and checks every answer.
    /// `tolerate` lists errors that are not failures (e.g. "not found" when
    /// cleaning up).
    async fn call(&self, commands: Vec<Value>, tolerate: &[&str]) -> Result<(), BrokerError> {
        self.ask(commands, tolerate).await.map(drop)
    }

    /// Runs `op` again while the session drops before the broker answers:
    /// every operation here may be repeated (a repeated create replaces
    /// what the first one made, a repeated delete finds nothing).
    async fn retried<T, F, Fut>(&self, op: F) -> Result<T, BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(BrokerError::Interrupted) if attempt < RETRIES_WHEN_INTERRUPTED => {
                    attempt += 1;
                    tracing::info!(
                        attempt,
                        "admin session dropped before the broker answered; sending again"
                    );
                }
                done => return done,
            }
        }
    }

    /// [`Self::call`], returning the answers.
    async fn ask(
        &self,
        mut commands: Vec<Value>,
        tolerate: &[&str],
    ) -> Result<Vec<Value>, BrokerError> {
        let id = Uuid::new_v4().simple().to_string();
        for (i, c) in commands.iter_mut().enumerate() {
            c["correlationData"] = json!(format!("{id}/{i}"));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let body = json!({ "commands": commands }).to_string();
        let sent = async {
            let mut session = self.session.clone();
            let not_connected = || match lock(&self.down).clone() {
                Some(e) => BrokerError::NotConnected(e),
                None => BrokerError::Timeout(self.timeout),
            };
            if let Some(e) = &self.unusable {
                return Err(BrokerError::NotConnected(e.clone()));
            }
            let sent_on = tokio::time::timeout(self.timeout, session.wait_for(|s| s.subscribed))
                .await
                .map_err(|_| not_connected())?
                .map_err(|_| not_connected())?
                .connects;
            self.client
                .publish(CONTROL, QoS::AtLeastOnce, false, body)
                .await?;
            let mut rx = rx;
            tokio::select! {
                biased;
                answer = &mut rx => answer.map_err(|_| BrokerError::Interrupted),
                _ = session.wait_for(|s| s.connects != sent_on || !s.subscribed) => {
                    Err(BrokerError::Interrupted)
                }
                () = tokio::time::sleep(self.timeout) => Err(BrokerError::Timeout(self.timeout)),
            }
        }
        .await;
        lock(&self.pending).remove(&id);
        let answers = sent?;
        for r in &answers {
            if let Some(error) = r.get("error").and_then(Value::as_str)
                && !tolerate.iter().any(|t| error.contains(t))
            {
                return Err(BrokerError::Refused {
                    command: r
                        .get("command")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned(),
                    error: error.to_owned(),
                });
            }
        }
        Ok(answers)
    }

    /// Creates the device's role (publish to its own topics only) and its
    /// client with `password`. A leftover account of the same name (from a
    /// create that failed after reaching the broker) is replaced.
    pub async fn create_account(&self, device_id: &str, password: &str) -> Result<(), BrokerError> {
        self.retried(|| self.create_account_once(device_id, password))
            .await
    }

    async fn create_account_once(
        &self,
        device_id: &str,
        password: &str,
    ) -> Result<(), BrokerError> {
        self.delete_account_once(device_id).await?;
        let talkback = crate::commands::Topics::of(&self.config);
        let acls: Vec<Value> = self
            .config
            .topics_of(device_id)
            .into_iter()
            .chain(talkback.device_publications(device_id))
            .map(|t| json!({"acltype": "publishClientSend", "topic": t, "priority": 0, "allow": true}))
            // Its own commands and desired state, nobody else's: the
            // plugin refuses any other subscription (its default).
            .chain(
                talkback.device_subscriptions(device_id)
                    .into_iter()
                    .map(|t| json!({"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": true})),
            )
            .collect();
        let role = role_of(device_id);
        self.call(
            vec![
                json!({"command": "createRole", "rolename": role, "acls": acls}),
                json!({
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "roles": [{"rolename": role, "priority": 0}],
                }),
            ],
            &[],
        )
        .await
    }

    /// Gives the registry's own account (`username`) a role that may
    /// publish to devices and read their answers (commands, desired
    /// states), beside the admin role it has: it administers every
    /// account already, so publishing anywhere grants it nothing new. The
    /// role's ACLs name no topic root, so that every registry on one
    /// broker needs the same role, and the account is changed only when it
    /// lacks the role: the plugin disconnects an account's sessions when
    /// its roles change.
    pub async fn grant_commands(&self) -> Result<(), BrokerError> {
        self.retried(|| self.grant_commands_once()).await
    }

    async fn grant_commands_once(&self) -> Result<(), BrokerError> {
        const ACLS: [(&str, &str); 3] = [
            ("publishClientSend", "#"),
            ("subscribePattern", "#"),
            ("subscribePattern", "$share/#"),
        ];
        let username = self.config.username.as_str();
        let found = self
            .ask(
                vec![
                    json!({"command": "getClient", "username": username}),
                    json!({"command": "getRole", "rolename": COMMANDS_ROLE}),
                ],
                &["not found"],
            )
            .await?;
        let has_role = found.iter().any(|r| {
            r.pointer("/data/client/roles")
                .and_then(Value::as_array)
                .is_some_and(|roles| roles.iter().any(|x| x["rolename"] == COMMANDS_ROLE))
        });
        let role_acls: Vec<&Value> = found
            .iter()
            .filter_map(|r| r.pointer("/data/role/acls").and_then(Value::as_array))
            .flatten()
            .collect();
        let mut commands = Vec::new();
        if !found.iter().any(|r| r.pointer("/data/role").is_some()) {
            commands.push(json!({"command": "createRole", "rolename": COMMANDS_ROLE}));
        }
        for (acltype, topic) in ACLS {
            let present = role_acls.iter().any(|a| {
                a["acltype"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(acltype))
                    && a["topic"] == topic
            });
            if !present {
                commands.push(json!({"command": "addRoleACL", "rolename": COMMANDS_ROLE,
                                     "acltype": acltype, "topic": topic, "priority": 0,
                                     "allow": true}));
            }
        }
        if !has_role {
            commands.push(json!({"command": "addClientRole", "username": username,
                                 "rolename": COMMANDS_ROLE, "priority": 0}));
        }
        if commands.is_empty() {
            return Ok(());
        }
        tracing::info!(username, "granting the registry's account its command role");
        self.call(commands, &["already"]).await
    }

    pub async fn set_password(&self, device_id: &str, password: &str) -> Result<(), BrokerError> {
        self.retried(|| {
            self.call(
                vec![json!({"command": "setClientPassword", "username": device_id, "password": password})],
                &[],
            )
        })
        .await
    }

    /// Deletes the device's client (the broker closes its connection) and
    /// role; an account that is not there is not an error.
    pub async fn delete_account(&self, device_id: &str) -> Result<(), BrokerError> {
        self.retried(|| self.delete_account_once(device_id)).await
    }

    async fn delete_account_once(&self, device_id: &str) -> Result<(), BrokerError> {
        self.call(
            vec![
                json!({"command": "deleteClient", "username": device_id}),
                json!({"command": "deleteRole", "rolename": role_of(device_id)}),
            ],
            &["not found"],
        )
        .await
    }
}

/// The role [`Dynsec::grant_commands`] gives the registry's account.
const COMMANDS_ROLE: &str = "platform.device-registry.talkback";

fn role_of(device_id: &str) -> String {
    format!("device:{device_id}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands an answer to the call waiting for it.
fn deliver(pending: &Pending, payload: &[u8]) {
    #[derive(Deserialize)]
    struct Answer {
        responses: Vec<Value>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(payload) else {
        tracing::warn!("unreadable dynamic-security answer");
        return;
    };
    let id = answer
        .responses
        .iter()
        .find_map(|r| r.get("correlationData").and_then(Value::as_str))
        .and_then(|c| c.split_once('/'))
        .map(|(id, _)| id.to_owned());
    if let Some(tx) = id.and_then(|id| lock(pending).remove(&id)) {
        let _ = tx.send(answer.responses);
    }
}

/// A new random password: 256 random bits (the thread's CSPRNG, seeded by
/// the OS), URL-safe base64 (43 characters).
pub fn new_password() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the registry keeps of a password: `sha256$salt$digest`, the salt
/// 16 random bytes. The passwords are random 256-bit secrets, so a salted
/// fast hash suffices (no dictionary to slow down).
pub fn hash_password(password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    format!("sha256${}${}", b64.encode(salt), b64.encode(h.finalize()))
}

/// Whether `password` is the one `stored` (a [`hash_password`]
/// value, `sha256$salt$digest`) was made of; the digests are compared in
/// constant time.
pub(crate) fn password_matches(password: &str, stored: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut parts = stored.split('$');
    let (Some("sha256"), Some(salt), Some(digest), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(digest)) = (b64.decode(salt), b64.decode(digest)) else {
        return false;
    };
    let mut h = sha2::Sha256::new();
    h.update(&salt);
    h.update(password.as_bytes());
    constant_time_eq(h.finalize().as_slice(), &digest)
}

/// `a == b`, in a time that does not depend on where they differ (their
/// lengths are no secret: a digest's). A few lines, where `subtle` would
/// be one more dependency.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_and_only_their_hash_verifies() {
        let (a, b) = (new_password(), new_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(b64.decode(&a).unwrap().len(), 32);
        let h = hash_password(&a);
        assert!(!h.contains(&a));
        let salt = h.split('$').nth(1).unwrap();
        let salt = base64::engine::general_purpose::STANDARD_NO_PAD.decode(salt);
        assert_eq!(salt.unwrap().len(), 16);
        assert!(password_matches(&a, &h));
        assert!(!password_matches(&b, &h));
        assert_ne!(hash_password(&a), h, "salted");
    }

    #[test]
    fn equal_means_same_bytes_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn device_topics_name_the_device() {
        let c = BrokerConfig::default();
        assert_eq!(
            c.topics_of("boiler-7"),
            vec![
                "sensors/boiler-7/+",
                "batches/boiler-7",
                "senml/boiler-7",
                "devices/boiler-7/presence"
            ]
        );
        assert!(c.problems("broker")[0].contains("broker.password"));
    }
}
