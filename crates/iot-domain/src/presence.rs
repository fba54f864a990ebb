//! Presence: the one definition of "offline" every service uses (alerts,
//! the API's `online`, the status summary, live subscriptions). No I/O.
//!
//! A device is offline when it disconnected without coming back (its last
//! disconnect, announced or a lost connection, is not older than the last
//! time it was heard from), or when it has been silent longer than its
//! configured reporting interval times [`OfflinePolicy::factor`]. With the
//! defaults a device reporting every minute, or one without an interval,
//! is offline after 5 minutes of silence: the seed's `device_offline`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// How long silence may last before a device counts as offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflinePolicy {
    /// Reporting intervals a device may miss.
    pub factor: u32,
    /// The silence allowed to a device without a configured interval.
    pub default_secs: u32,
    /// The least silence allowed, whatever the interval.
    pub min_secs: u32,
}

/// The platform's policy: every service decides "offline" with it.
pub const PLATFORM: OfflinePolicy = OfflinePolicy {
    factor: 5,
    default_secs: 300,
    min_secs: 10,
};

impl Default for OfflinePolicy {
    fn default() -> Self {
        PLATFORM
    }
}

/// What the platform knows of a device's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// When it was last heard from (a reading, or a birth message).
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// When it last disconnected (announced, or its last will), if it has
    /// not connected since.
    pub disconnected_at: Option<DateTime<Utc>>,
    /// Its configured reporting interval in seconds (0 or less: none).
    pub read_interval: Option<i32>,
}

impl OfflinePolicy {
    /// The silence allowed to a device reporting every `read_interval`
    /// seconds (if configured).
    pub fn silence_limit(&self, read_interval: Option<i32>) -> Duration {
        let secs = match read_interval
            .filter(|r| *r > 0)
            .and_then(|r| u64::try_from(r).ok())
        {
            Some(r) => (r * u64::from(self.factor)).max(u64::from(self.min_secs)),
            None => u64::from(self.default_secs),
        };
        Duration::from_secs(secs)
    }

    /// The moment the device became (or becomes) offline; `None` for a
    /// device never heard from and never disconnected, which has no
    /// presence yet (it is not online either).
    pub fn offline_at(&self, seen: &Seen) -> Option<DateTime<Utc>> {
        let limit =
            TimeDelta::from_std(self.silence_limit(seen.read_interval)).unwrap_or(TimeDelta::MAX);
        let silent = seen.last_heartbeat.map(|h| h + limit);
        match (seen.disconnected_at, seen.last_heartbeat) {
            // Disconnected and not heard from since.
            (Some(d), Some(h)) if d >= h => Some(d),
            (Some(d), None) => Some(d),
            _ => silent,
        }
    }

    /// Whether the device is online at `now`.
    pub fn is_online(&self, seen: &Seen, now: DateTime<Utc>) -> bool {
        seen.last_heartbeat.is_some() && self.offline_at(seen).is_none_or(|t| t > now)
    }
}

/// A device's presence report on its presence topic
/// (`devices/{device_id}/presence`, see docs/mqtt-devices.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The birth message: connected.
    Connected,
    /// Said by the device before it disconnects on purpose.
    Disconnected,
    /// Its last will, published by the broker: the connection was lost.
    Lost,
}

impl PresenceEvent {
    /// The text form used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Lost => "lost",
        }
    }

    /// Parses a presence payload: `online`/`connected`, `offline`/
    /// `disconnected`, `lost`, bare or as JSON `{"status": "..."}`
    /// (case-insensitive).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        let word = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(o)) => o
                .get("status")
                .or_else(|| o.get("state"))?
                .as_str()?
                .to_owned(),
            Ok(serde_json::Value::String(s)) => s,
            _ => text.to_owned(),
        };
        match word.to_ascii_lowercase().as_str() {
            "online" | "connected" => Some(Self::Connected),
            "offline" | "disconnected" => Some(Self::Disconnected),
            "lost" => Some(Self::Lost),
            _ => None,
        }
    }

    /// The text form back.
    pub fn from_text(s: &str) -> Option<Self> {
        match s {
            "connected" => Some(Self::Connected),
            "disconnected" => Some(Self::Disconnected),
            "lost" => Some(Self::Lost),
            _ => None,
        }
    }
}

/// The presence topic of `device_id`.
pub fn presence_topic(device_id: &str) -> String {
    format!("devices/{device_id}/presence")
}

/// The device id of a presence topic.
pub fn parse_presence_topic(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let id = rest.strip_suffix("/presence")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn silence_past_interval_times_factor_is_offline() {
        let p = OfflinePolicy::default();
        let seen = Seen {
            last_heartbeat: Some(at(0)),
            disconnected_at: None,
            read_interval: Some(60),
        };
        assert_eq!(p.offline_at(&seen), Some(at(300)));
        assert!(p.is_online(&seen, at(299)));
        assert!(!p.is_online(&seen, at(300)));
        let none = Seen {
            read_interval: None,
            ..seen
        };
        assert_eq!(p.silence_limit(none.read_interval).as_secs(), 300);
        assert_eq!(p.silence_limit(Some(1)).as_secs(), 10);
    }

    #[test]
    fn a_disconnect_is_offline_until_heard_from_again() {
        let p = OfflinePolicy::default();
        let gone = Seen {
            last_heartbeat: Some(at(0)),
            disconnected_at: Some(at(10)),
            read_interval: Some(60),
        };
        assert_eq!(p.offline_at(&gone), Some(at(10)));
        assert!(!p.is_online(&gone, at(11)));
        let back = Seen {
            last_heartbeat: Some(at(20)),
            ..gone
        };
        assert!(p.is_online(&back, at(21)));
        assert!(!p.is_online(&Seen::default(), at(0)));
    }

    #[test]
    fn presence_payloads_and_topics() {
        assert_eq!(
            PresenceEvent::parse(b"online"),
            Some(PresenceEvent::Connected)
        );
        assert_eq!(
            PresenceEvent::parse(br#"{"status":"lost"}"#),
            Some(PresenceEvent::Lost)
        );
        assert_eq!(
            PresenceEvent::parse(b"\"OFFLINE\""),
            Some(PresenceEvent::Disconnected)
        );
        assert_eq!(PresenceEvent::parse(b"maybe"), None);
        assert_eq!(parse_presence_topic("devices/b-7/presence"), Some("b-7"));
        assert_eq!(parse_presence_topic("devices/a/b/presence"), None);
        assert_eq!(presence_topic("b-7"), "devices/b-7/presence");
    }
}
