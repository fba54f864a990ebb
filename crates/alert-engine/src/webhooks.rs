//! Alert notifications by webhook, configured per owner.
//!
//! Rule evaluation never waits for a webhook: the engine only writes alert
//! events (the outbox, `events.rs`). Here `fan_out` turns each event into
//! one `webhook_deliveries` row per matching webhook (the event's owner,
//! severity at least the webhook's minimum), and `send` POSTs due
//! deliveries, each with a timeout, retrying failures with exponential
//! backoff until `max_attempts`, after which the delivery is marked failed
//! (kept, with its last error, and counted). A delivery is claimed with a
//! lease before it is sent, so replicas share the work and a crash in the
//! middle means a retry, not a loss: receivers may see an event twice and
//! tell by its `sequence`. At most `PER_OWNER` deliveries of one owner are
//! in flight per replica, so one tenant's hanging receivers cannot take
//! every slot from the others.
//!
//! Each request carries `X-Iot-Signature: sha256=<hex>`, the HMAC-SHA256 of
//! the body with the webhook's secret, and `X-Iot-Event: <kind>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use hmac::{Hmac, KeyInit, Mac};
use iot_proto::Message as _;
use iot_proto::v1;
use iot_runtime::CancellationToken;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::error::AlertError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// A receiver that does not answer in this long has failed this attempt.
    pub timeout_ms: u64,
    /// Attempts before a delivery is given up (marked failed).
    pub max_attempts: i32,
    /// The first retry waits this long; each next one twice as long…
    pub retry_base_ms: u64,
    /// …but never longer than this.
    pub retry_max_secs: u64,
    /// Allow receivers on loopback, private, link-local and other
    /// non-public addresses. Off by default: a tenant's webhook must not
    /// reach the platform's own network.
    pub allow_private_addresses: bool,
    /// Delivered and given-up deliveries are deleted after this many days
    /// (pending ones are kept whatever their age).
    pub keep_days: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 5000,
            max_attempts: 10,
            retry_base_ms: 1000,
            retry_max_secs: 3600,
            allow_private_addresses: false,
            keep_days: 30,
        }
    }
}

impl WebhookConfig {
    /// The wait before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = u32::try_from(attempts.clamp(0, 30)).unwrap_or(0);
        Duration::from_millis(self.retry_base_ms.saturating_mul(1 << exp))
            .min(Duration::from_secs(self.retry_max_secs))
    }
}

/// HMAC-SHA256 (RFC 2104) of `body` with `key`, lower-case hex.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length (longer ones are hashed first).
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const SEVERITY_RANK: &str = "CASE $3 WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END
     >= CASE min_severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END";

/// The JSON a receiver gets for one alert event.
fn body(seq: i64, kind: &str, a: &v1::Alert) -> String {
    let ts = |t: &Option<iot_proto::Timestamp>| {
        t.as_ref()
            .and_then(iot_proto::from_timestamp)
            .map(|t| t.to_rfc3339())
    };
    serde_json::json!({
        "sequence": seq,
        "event": kind,
        "alert": {
            "id": a.id,
            "device_uuid": a.device_uuid,
            "owner_id": a.owner_id,
            "alert_type": a.alert_type,
            "severity": a.severity,
            "state": a.state,
            "sensor_name": a.sensor_name,
            "message": a.message,
            "value": a.value.as_deref().and_then(|v| v.parse::<f64>().ok()),
            "threshold": a.threshold.as_deref().and_then(|v| v.parse::<f64>().ok()),
            "created_at": ts(&a.created_at),
            "last_seen_at": ts(&a.last_seen_at),
            "resolved_at": ts(&a.resolved_at),
            "occurrences": a.occurrences,
            "rule_id": (!a.rule_id.is_empty()).then_some(&a.rule_id),
        }
    })
    .to_string()
}

/// Queues deliveries for events not fanned out yet; returns how many
/// events it handled.
async fn fan_out(pool: &Pool) -> Result<usize, AlertError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT seq, kind, alert FROM alert_events WHERE webhooks_at IS NULL
             ORDER BY seq LIMIT 500 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let queue = tx
        .prepare_cached(&format!(
            "INSERT INTO webhook_deliveries (webhook_id, event_seq, body)
             SELECT id, $4, $5 FROM alert_webhooks
             WHERE enabled AND owner_id = $1 AND $2::text IS NOT NULL AND {SEVERITY_RANK}
             ON CONFLICT DO NOTHING"
        ))
        .await?;
    let mut seqs = Vec::with_capacity(rows.len());
    for r in &rows {
        let (seq, kind, alert): (i64, String, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
        seqs.push(seq);
        let Ok(a) = v1::Alert::decode(alert.as_slice()).map(v1::Alert::with_both_forms) else {
            continue;
        };
        let Ok(owner) = Uuid::parse_str(&a.owner_id) else {
            continue;
        };
        tx.execute(
            &queue,
            &[&owner, &kind, &a.severity, &seq, &body(seq, &kind, &a)],
        )
        .await?;
    }
    tx.execute(
        "UPDATE alert_events SET webhooks_at = now() WHERE seq = ANY($1)",
        &[&seqs],
    )
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// A claimed delivery.
struct Due {
    id: i64,
    body: String,
    attempts: i32,
    url: String,
    secret: String,
    kind: String,
    owner: Uuid,
}

/// Deliveries of one owner in flight at most (per replica), so that one
/// tenant's slow or hanging receivers cannot hold every slot.
const PER_OWNER: i64 = 8;

/// Claims up to `limit` due deliveries, oldest first, at most
/// `PER_OWNER` in flight per owner counting `busy` (owners with their
/// deliveries in flight here). Each is leased for the timeout plus a
/// margin, so no other replica sends it meanwhile and a crash before its
/// outcome is recorded means a retry.
async fn claim(
    pool: &Pool,
    limit: i64,
    lease: Duration,
    busy: &HashMap<Uuid, i64>,
) -> Result<Vec<Due>, AlertError> {
    let (owners, in_flight): (Vec<Uuid>, Vec<i64>) = busy.iter().map(|(o, n)| (*o, *n)).unzip();
    let client = pool.get().await?;
    Ok(client
        .query(
            "WITH busy AS (SELECT * FROM unnest($3::uuid[], $4::int8[]) AS b (owner_id, n)),
             candidates AS (
                SELECT id FROM (
                    SELECT d.id, d.next_attempt_at, COALESCE(b.n, 0) AS n,
                           row_number() OVER (PARTITION BY w.owner_id ORDER BY d.next_attempt_at, d.id) AS rank
                    FROM webhook_deliveries d
                    JOIN alert_webhooks w ON w.id = d.webhook_id
                    LEFT JOIN busy b ON b.owner_id = w.owner_id
                    WHERE d.delivered_at IS NULL AND d.failed_at IS NULL AND d.next_attempt_at <= now()
                ) c
                WHERE n + rank <= $5
                ORDER BY next_attempt_at, id LIMIT $2),
             due AS (
                SELECT d.id FROM webhook_deliveries d
                WHERE d.id IN (SELECT id FROM candidates)
                  AND d.delivered_at IS NULL AND d.failed_at IS NULL AND d.next_attempt_at <= now()
                FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries d
                SET next_attempt_at = now() + make_interval(secs => $1)
               FROM due, alert_webhooks w
              WHERE d.id = due.id AND w.id = d.webhook_id
             RETURNING d.id, d.body, d.attempts, w.url, w.secret, (d.body::jsonb ->> 'event'), w.owner_id",
            &[&lease.as_secs_f64(), &limit, &owners, &in_flight, &PER_OWNER],
        )
        .await?
        .iter()
        .map(|r| Due {
            id: r.get(0),
            body: r.get(1),
            attempts: r.get(2),
            url: r.get(3),
            secret: r.get(4),
            kind: r.get::<_, Option<String>>(5).unwrap_or_default(),
            owner: r.get(6),
        })
        .collect())
}

/// Deletes deliveries delivered or given up more than `keep` ago, in
/// chunks (short transactions); returns how many.
pub async fn trim(pool: &Pool, keep: Duration) -> Result<u64, AlertError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare(
            "DELETE FROM webhook_deliveries WHERE id IN (
                SELECT id FROM webhook_deliveries
                WHERE COALESCE(delivered_at, failed_at) < now() - make_interval(secs => $1)
                LIMIT 5000)",
        )
        .await?;
    let mut total = 0;
    loop {
        let n = client.execute(&stmt, &[&keep.as_secs_f64()]).await?;
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

/// IPv4 networks a tenant's webhook may not reach: (network, prefix
/// length). Private, shared, loopback, link-local, documentation,
/// benchmarking, multicast and reserved space (IANA's special-purpose
/// registry), none of which is the public Internet.
const NON_PUBLIC_V4: [([u8; 4], u8); 15] = [
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (carrier-grade NAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata services)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation
    ([203, 0, 113, 0], 24),  // documentation
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the broadcast address
];

/// IPv6 networks refused whatever they carry: (network, prefix length).
const NON_PUBLIC_V6: [(u128, u8); 9] = [
    (0xff00 << 112, 8),                // multicast
    (0xfc00 << 112, 7),                // unique local
    (0xfe80 << 112, 10),               // link-local
    (0xfec0 << 112, 10),               // site-local (deprecated)
    (0x0064_ff9b_0001 << 80, 48),      // local-use NAT64 (RFC 8215)
    (0x2001_0000 << 96, 32),           // Teredo: the client's IPv4 is obscured
    (0x2001_0db8 << 96, 32),           // documentation
    (0x0100_0000_0000_0000 << 64, 64), // discard-only
    (0x2001_0002_0000 << 80, 48),      // benchmarking
];

fn in_net(addr: u128, net: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    prefix == 0 || (addr >> shift) == (net >> shift)
}

/// The IPv4 address an IPv6 address carries to an IPv4 host, where the
/// network would deliver it there: IPv4-mapped (`::ffff:0:0/96`),
/// IPv4-compatible (`::/96`, which includes `::` and `::1`), NAT64's
/// well-known prefix (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let bits = u128::from(v6);
    let low = std::net::Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if bits >> 32 == 0xffff || bits >> 32 == 0 || bits >> 32 == 0x0064_ff9b << 64 {
        return Some(low);
    }
    if bits >> 112 == 0x2002 {
        return Some(std::net::Ipv4Addr::from(
            ((bits >> 80) & 0xffff_ffff) as u32,
        ));
    }
    None
}

/// Whether `ip` is an address a tenant's webhook may not reach. An IPv6
/// address that carries an IPv4 one (NAT64, 6to4, mapped, compatible) is
/// judged by the IPv4 address it reaches.
pub fn is_private(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let a = u128::from(u32::from(v4));
            NON_PUBLIC_V4
                .iter()
                .any(|(net, prefix)| in_net(a, u128::from(u32::from_be_bytes(*net)), *prefix, 32))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_private(IpAddr::V4(v4));
            }
            let a = u128::from(v6);
            NON_PUBLIC_V6
                .iter()
                .any(|(net, prefix)| in_net(a, *net, *prefix, 128))
        }
    }
}

/// Why a receiver was refused: it is (or its name resolves to) a
/// non-public address and those are not allowed.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0} is a non-public address")]
struct NonPublic(String);

/// The HTTP client's resolver when non-public receivers are not allowed.
/// The addresses it checks are the ones the client connects to: a name
/// cannot pass a check and then resolve to an internal address for the
/// request itself (DNS rebinding).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The port is the client's to set; lookup_host needs one.
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(a) = addrs.iter().find(|a| is_private(a.ip())) {
                let why = NonPublic(format!("{host} ({})", a.ip()));
                return Err(Box::new(why) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client for receivers. Names go through [`PublicOnly`] unless
/// non-public receivers are allowed; literal addresses, which the client
/// connects to without resolving, are checked by [`refused_literal`].
fn http_client(config: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    // No proxy, whatever HTTP_PROXY and the like say: through a proxy the
    // proxy would resolve and connect, past the checks here.
    let b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(config.timeout_ms))
        .redirect(reqwest::redirect::Policy::none());
    if config.allow_private_addresses {
        b.build()
    } else {
        b.dns_resolver(Arc::new(PublicOnly)).build()
    }
}

/// A URL whose host is a literal non-public address (unless allowed).
fn refused_literal(url: &str, config: &WebhookConfig) -> Option<NonPublic> {
    if config.allow_private_addresses {
        return None;
    }
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().ok()?;
    is_private(ip).then(|| NonPublic(ip.to_string()))
}

/// The refusal somewhere in a failed request's causes.
fn refusal(e: &reqwest::Error) -> Option<&NonPublic> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(n) = c.downcast_ref::<NonPublic>() {
            return Some(n);
        }
        cause = c.source();
    }
    None
}

/// Marks a delivery to a refused receiver failed: retrying cannot help.
async fn refuse(
    d: &Due,
    pool: &Pool,
    why: &NonPublic,
    metrics: &crate::metrics::Metrics,
) -> Result<(), AlertError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE webhook_deliveries SET failed_at = now(), attempts = attempts + 1, last_error = $2
             WHERE id = $1",
            &[&d.id, &why.to_string()],
        )
        .await?;
    metrics.webhooks.with_label_values(&["refused"]).inc();
    tracing::warn!(delivery = d.id, url = %d.url, reason = %why, "webhook refused");
    Ok(())
}

/// Sends one delivery and records its outcome.
async fn deliver(
    d: Due,
    pool: &Pool,
    http: &reqwest::Client,
    config: &WebhookConfig,
    metrics: &crate::metrics::Metrics,
) -> Result<(), AlertError> {
    if let Some(why) = refused_literal(&d.url, config) {
        return refuse(&d, pool, &why, metrics).await;
    }
    let sig = signature(d.secret.as_bytes(), d.body.as_bytes());
    let res = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("x-iot-signature", format!("sha256={sig}"))
        .header("x-iot-event", &d.kind)
        .body(d.body.clone())
        .send()
        .await;
    let err = match res {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("HTTP {}", r.status())),
        Err(e) => match refusal(&e) {
            Some(why) => return refuse(&d, pool, why, metrics).await,
            None => Some(e.to_string()),
        },
    };
    let client = pool.get().await?;
    let attempts = d.attempts + 1;
    match err {
        None => {
            client
                .execute(
                    "UPDATE webhook_deliveries SET delivered_at = now(), attempts = $2, last_error = NULL
                     WHERE id = $1",
                    &[&d.id, &attempts],
                )
                .await?;
            metrics.webhooks.with_label_values(&["delivered"]).inc();
        }
        Some(e) if attempts >= config.max_attempts => {
            client
                .execute(
                    "UPDATE webhook_deliveries SET failed_at = now(), attempts = $2, last_error = $3
                     WHERE id = $1",
                    &[&d.id, &attempts, &e],
                )
                .await?;
            metrics.webhooks.with_label_values(&["given_up"]).inc();
            tracing::warn!(delivery = d.id, url = %d.url, error = %e, attempts, "webhook delivery given up");
        }
        Some(e) => {
            let wait = config.backoff(d.attempts);
            client
                .execute(
                    "UPDATE webhook_deliveries
                        SET attempts = $2, last_error = $3, next_attempt_at = now() + make_interval(secs => $4)
                     WHERE id = $1",
                    &[&d.id, &attempts, &e, &wait.as_secs_f64()],
                )
                .await?;
            metrics.webhooks.with_label_values(&["retried"]).inc();
            tracing::info!(delivery = d.id, url = %d.url, error = %e, attempts, "webhook failed; will retry");
        }
    }
    Ok(())
}

/// Deliveries in flight per owner.
type Busy = Arc<Mutex<HashMap<Uuid, i64>>>;

/// One of an owner's in-flight deliveries; counted while it lives.
struct OwnerSlot(Busy, Uuid);

impl OwnerSlot {
    fn take(busy: &Busy, owner: Uuid) -> Self {
        *busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(owner)
            .or_default() += 1;
        Self(busy.clone(), owner)
    }
}

impl Drop for OwnerSlot {
    fn drop(&mut self) {
        let mut busy = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.1) {
            *n -= 1;
            if *n <= 0 {
                busy.remove(&self.1);
            }
        }
    }
}

/// How often old deliveries are deleted.
const TRIM_EVERY: Duration = Duration::from_secs(3600);

/// Deliveries in flight at most (per replica).
const IN_FLIGHT: usize = 64;

/// Fans events out and sends deliveries until `shutdown`. Each delivery
/// runs on its own task: a receiver that hangs holds up only itself.
pub async fn run(
    pool: Pool,
    config: WebhookConfig,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) {
    let http = match http_client(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: webhooks are not sent");
            return;
        }
    };
    let lease = Duration::from_millis(config.timeout_ms) + Duration::from_secs(30);
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let busy: Busy = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let keep = Duration::from_secs(u64::from(config.keep_days) * 86_400);
    let mut trimmed: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if trimmed.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
            trimmed = Some(tokio::time::Instant::now());
            match trim(&pool, keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old webhook deliveries deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete old webhook deliveries"),
            }
        }
        if let Err(e) = fan_out(&pool).await {
            tracing::warn!(error = %e, "webhook fan-out failed; retrying");
        }
        let free = permits.available_permits();
        if free == 0 {
            continue;
        }
        let snapshot = busy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let limit = i64::try_from(free).unwrap_or(1);
        let due = match claim(&pool, limit, lease, &snapshot).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying");
                continue;
            }
        };
        for d in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let slot = OwnerSlot::take(&busy, d.owner);
            let (pool, http, config, metrics) =
                (pool.clone(), http.clone(), config.clone(), metrics.clone());
            tokio::spawn(async move {
                if let Err(e) = deliver(d, &pool, &http, &config, &metrics).await {
                    // The lease runs out and the delivery is retried.
                    tracing::warn!(error = %e, "webhook outcome not recorded");
                }
                drop((permit, slot));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 1: a 20-byte key.
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 6: a key longer than the block, hashed first.
        assert_eq!(
            signature(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn refused(a: &str) -> bool {
        is_private(a.parse().unwrap())
    }

    #[test]
    fn non_public_ipv4_ranges_are_refused_to_their_edges() {
        // (first refused, last refused, the public neighbours around them)
        for (first, last, below, above) in [
            ("0.0.0.0", "0.255.255.255", None, Some("1.0.0.0")),
            (
                "10.0.0.0",
                "10.255.255.255",
                Some("9.255.255.255"),
                Some("11.0.0.0"),
            ),
            (
                "100.64.0.0",
                "100.127.255.255",
                Some("100.63.255.255"),
                Some("100.128.0.0"),
            ),
            (
                "127.0.0.0",
                "127.255.255.255",
                Some("126.255.255.255"),
                Some("128.0.0.0"),
            ),
            (
                "169.254.0.0",
                "169.254.255.255",
                Some("169.253.255.255"),
                Some("169.255.0.0"),
            ),
            (
                "172.16.0.0",
                "172.31.255.255",
                Some("172.15.255.255"),
                Some("172.32.0.0"),
            ),
            (
                "192.0.0.0",
                "192.0.0.255",
                Some("191.255.255.255"),
                Some("192.0.1.0"),
            ),
            (
                "192.0.2.0",
                "192.0.2.255",
                Some("192.0.1.255"),
                Some("192.0.3.0"),
            ),
            (
                "192.88.99.0",
                "192.88.99.255",
                Some("192.88.98.255"),
                Some("192.88.100.0"),
            ),
            (
                "192.168.0.0",
                "192.168.255.255",
                Some("192.167.255.255"),
                Some("192.169.0.0"),
            ),
            (
                "198.18.0.0",
                "198.19.255.255",
                Some("198.17.255.255"),
                Some("198.20.0.0"),
            ),
            (
                "198.51.100.0",
                "198.51.100.255",
                Some("198.51.99.255"),
                Some("198.51.101.0"),
            ),
            (
                "203.0.113.0",
                "203.0.113.255",
                Some("203.0.112.255"),
                Some("203.0.114.0"),
            ),
            (
                "224.0.0.0",
                "239.255.255.255",
                Some("223.255.255.255"),
                None,
            ),
            ("240.0.0.0", "255.255.255.255", None, None),
        ] {
            assert!(refused(first), "{first}");
            assert!(refused(last), "{last}");
            for public in [below, above].into_iter().flatten() {
                assert!(!refused(public), "{public}");
            }
        }
        for public in ["8.8.8.8", "93.184.216.34", "1.1.1.1"] {
            assert!(!refused(public), "{public}");
        }
    }

    #[test]
    fn ipv6_is_judged_by_the_ipv4_address_it_reaches() {
        for (v6, reaches_private) in [
            // IPv4-mapped ::ffff:0:0/96
            ("::ffff:10.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:8.8.8.8", false),
            // IPv4-compatible ::/96 (:: and ::1 among them)
            ("::", true),
            ("::1", true),
            ("::127.0.0.1", true),
            ("::192.168.1.1", true),
            ("::8.8.8.8", false),
            // NAT64 64:ff9b::/96
            ("64:ff9b::10.0.0.1", true),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::198.18.0.1", true),
            ("64:ff9b::8.8.8.8", false),
            // 6to4 2002::/16: the IPv4 address is bits 16..48
            ("2002:0a00:0001::1", true),  // 10.0.0.1
            ("2002:7f00:0001::", true),   // 127.0.0.1
            ("2002:a9fe:a9fe::1", true),  // 169.254.169.254
            ("2002:f000:0001::1", true),  // 240.0.0.1
            ("2002:0808:0808::1", false), // 8.8.8.8
        ] {
            assert_eq!(refused(v6), reaches_private, "{v6}");
        }
    }

    #[test]
    fn non_public_ipv6_ranges_are_refused() {
        for a in [
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b:1::a00:1", // local-use NAT64, whatever it embeds
            "64:ff9b:1:ffff::808:808",
            "2001::1", // Teredo
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "100::1",
            "2001:2::1",
        ] {
            assert!(refused(a), "{a}");
        }
        for a in [
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:81b::200e",
            "64:ff9c::1",
            "2001:1::1",
            "2003::1",
        ] {
            assert!(!refused(a), "{a}");
        }
    }

    /// Set in the child process of `the_proxy_environment_is_ignored`:
    /// where its fake proxy listens.
    const CHILD_PROXY: &str = "IOT_TEST_WEBHOOK_PROXY_CHILD";

    /// The webhook client connects to the receiver itself even when the
    /// environment names a proxy (which would resolve and connect past the
    /// address checks). Environment variables cannot be set safely in a
    /// threaded test, so a child process of this test binary runs
    /// `proxy_child` with them set.
    #[test]
    fn the_proxy_environment_is_ignored() {
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "webhooks::tests::proxy_child", "--nocapture"])
            .env(CHILD_PROXY, "1")
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env("NO_PROXY", "")
            .env_remove("no_proxy")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran no test: {text}");
        proxy.set_nonblocking(true).unwrap();
        assert!(proxy.accept().is_err(), "the proxy was used");
    }

    #[tokio::test]
    async fn proxy_child() {
        if std::env::var_os(CHILD_PROXY).is_none() {
            return;
        }
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", receiver.local_addr().unwrap());
        let open = WebhookConfig {
            allow_private_addresses: true,
            timeout_ms: 2000,
            ..Default::default()
        };
        let send = tokio::spawn(async move { http_client(&open).unwrap().post(url).send().await });
        let accepted = tokio::time::timeout(Duration::from_secs(5), receiver.accept()).await;
        assert!(accepted.is_ok(), "the receiver was not reached directly");
        send.abort();
    }

    #[tokio::test]
    async fn non_public_receivers_are_refused_when_connecting() {
        let config = WebhookConfig::default();
        // A name is checked by the client's own resolver, so the address
        // checked is the address connected to.
        let http = http_client(&config).unwrap();
        let e = http
            .post("http://localhost:9/hook")
            .send()
            .await
            .unwrap_err();
        let why = refusal(&e).expect("refused by the resolver").to_string();
        assert!(why.contains("localhost"), "{why}");
        // Literal addresses are not resolved: they are checked beforehand.
        assert!(refused_literal("http://10.0.0.8/hook", &config).is_some());
        assert!(refused_literal("http://[::1]:8080/hook", &config).is_some());
        assert!(refused_literal("http://[64:ff9b::a9fe:a9fe]/latest", &config).is_some());
        assert!(refused_literal("http://[2002:c0a8:101::1]/hook", &config).is_some());
        assert!(refused_literal("http://198.18.0.7/hook", &config).is_some());
        // Other spellings of an IPv4 address are the same address.
        assert!(refused_literal("http://2130706433/hook", &config).is_some());
        assert!(refused_literal("http://0x7f.1/hook", &config).is_some());
        assert!(refused_literal("https://93.184.216.34/hook", &config).is_none());
        assert!(refused_literal("https://hooks.example.com/x", &config).is_none());
        // Allowed: nothing is refused.
        let open = WebhookConfig {
            allow_private_addresses: true,
            ..Default::default()
        };
        assert!(refused_literal("http://10.0.0.8/hook", &open).is_none());
        let e = http_client(&open)
            .unwrap()
            .post("http://localhost:9/hook")
            .send()
            .await
            .unwrap_err();
        assert!(refusal(&e).is_none(), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let c = WebhookConfig {
            retry_base_ms: 1000,
            retry_max_secs: 10,
            ..Default::default()
        };
        let waits: Vec<u64> = (0..6).map(|a| c.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }
}
