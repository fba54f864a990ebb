//! The gateway's metrics; each event logs and counts in one place.

use iot_domain::RejectReason;
use iot_telemetry::prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::device_auth::Refusal;

#[derive(Clone)]
pub struct Metrics {
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    retries: IntCounterVec,
    http_auth_refusals: IntCounterVec,
    http_auth_verifications: IntCounterVec,
    pub in_flight: IntGauge,
    pub mqtt_acks: IntCounter,
    pub mqtt_others: IntCounter,
    pub broker_unreceived: IntGauge,
    pub broker_unreceived_alarm: IntGauge,
    pub broker_received: IntGauge,
    presence: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, iot_telemetry::prometheus::Error> {
        let accepted = IntCounterVec::new(
            Opts::new(
                "iot_gateway_readings_accepted_total",
                "Readings produced to Kafka, by door",
            ),
            &["source"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "iot_gateway_readings_rejected_total",
                "Messages written to the dead-letter topic, by reason",
            ),
            &["reason"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "iot_gateway_transient_errors_total",
                "Transient failures (registry or Kafka unavailable) that delayed an ack",
            ),
            &["kind"],
        )?;
        let http_auth_refusals = IntCounterVec::new(
            Opts::new(
                "iot_gateway_http_auth_refusals_total",
                "HTTP door requests refused before their readings were read, by reason \
                 (missing, malformed or wrong credentials, another device's path, \
                 verifications at their limit, registry unavailable)",
            ),
            &["reason"],
        )?;
        let http_auth_verifications = IntCounterVec::new(
            Opts::new(
                "iot_gateway_http_auth_verifications_total",
                "HTTP door credentials device-registry verified (not answered from the cache), by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(http_auth_refusals.clone()))?;
        registry.register(Box::new(http_auth_verifications.clone()))?;
        for r in Refusal::REASONS {
            http_auth_refusals.with_label_values(&[r]);
        }
        for r in ["valid", "invalid"] {
            http_auth_verifications.with_label_values(&[r]);
        }
        let in_flight = IntGauge::new(
            "iot_gateway_mqtt_in_flight_messages",
            "MQTT messages received and not yet acknowledged (waiting for Kafka)",
        )?;
        let mqtt_acks = IntCounter::new(
            "iot_gateway_mqtt_acks_total",
            "PUBACKs sent to the MQTT broker (each after Kafka's delivery report)",
        )?;
        let mqtt_others = IntCounter::new(
            "iot_gateway_mqtt_other_replicas_messages_total",
            "MQTT messages of devices another replica handles (split = \"hashed\"), acknowledged unprocessed",
        )?;
        registry.register(Box::new(mqtt_others.clone()))?;
        let broker_unreceived = IntGauge::new(
            "iot_gateway_broker_unreceived_messages",
            "PUBLISH packets the MQTT broker counts as received that did not reach this gateway (in flight, for other topics, or lost)",
        )?;
        let broker_unreceived_alarm = IntGauge::new(
            "iot_gateway_broker_unreceived_alarm",
            "1 once broker_unreceived_messages has stayed above mqtt.unreceived_alarm for mqtt.unreceived_alarm_after_secs",
        )?;
        let broker_received = IntGauge::new(
            "iot_gateway_broker_received_messages",
            "The MQTT broker's count of PUBLISH packets received, as last sampled (0 until the first sample; at least 1 after it)",
        )?;
        registry.register(Box::new(broker_received.clone()))?;
        registry.register(Box::new(broker_unreceived.clone()))?;
        registry.register(Box::new(broker_unreceived_alarm.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(mqtt_acks.clone()))?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        for r in RejectReason::ALL {
            rejected.with_label_values(&[r.code()]);
        }
        let presence = IntCounterVec::new(
            Opts::new(
                "iot_gateway_presence_events_total",
                "Presence messages reported to device-registry, by event (connected, disconnected, lost)",
            ),
            &["event"],
        )?;
        registry.register(Box::new(presence.clone()))?;
        for e in ["connected", "disconnected", "lost"] {
            presence.with_label_values(&[e]);
        }
        Ok(Self {
            presence,
            accepted,
            rejected,
            retries,
            http_auth_refusals,
            http_auth_verifications,
            in_flight,
            mqtt_acks,
            mqtt_others,
            broker_unreceived,
            broker_unreceived_alarm,
            broker_received,
        })
    }

    pub fn accepted(&self, source: &str, n: usize) {
        self.accepted.with_label_values(&[source]).inc_by(n as u64);
    }

    pub fn rejected(&self, origin: &str, rejection: &iot_domain::Rejection) {
        tracing::info!(origin, reason = %rejection.reason, detail = %rejection.detail, "message rejected");
        self.rejected
            .with_label_values(&[rejection.reason.code()])
            .inc();
    }

    /// Logged at debug: a client guessing passwords would flood the log;
    /// the count shows it.
    pub fn http_auth_refused(&self, path: &str, refusal: &Refusal) {
        tracing::debug!(path, reason = refusal.reason(), detail = ?refusal, "HTTP request refused");
        self.http_auth_refusals
            .with_label_values(&[refusal.reason()])
            .inc();
    }

    /// A verification device-registry answered: `valid` or not.
    pub fn http_auth_verified(&self, valid: bool) {
        let result = if valid { "valid" } else { "invalid" };
        self.http_auth_verifications
            .with_label_values(&[result])
            .inc();
    }

    pub fn presence(&self, event: &str) {
        tracing::info!(event, "device presence");
        self.presence.with_label_values(&[event]).inc();
    }

    pub fn transient(&self, kind: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(kind, error = %error, "transient failure, will retry");
        self.retries.with_label_values(&[kind]).inc();
    }
}
