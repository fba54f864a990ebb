//! alert-engine's Prometheus metrics.

use iot_telemetry::prometheus::{Error, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub evaluated: IntCounter,
    pub raised: IntCounter,
    pub resolved: IntCounter,
    /// Webhook delivery attempts by outcome: delivered, retried, given_up.
    pub webhooks: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let webhooks = IntCounterVec::new(
            Opts::new(
                "iot_alerts_webhook_deliveries_total",
                "Webhook delivery attempts by outcome (delivered, retried, given_up, refused)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(webhooks.clone()))?;
        Ok(Self {
            webhooks,
            evaluated: counter(
                "iot_alerts_readings_evaluated_total",
                "Readings checked against rules",
            )?,
            raised: counter("iot_alerts_alerts_raised_total", "Alerts opened")?,
            resolved: counter(
                "iot_alerts_alerts_resolved_total",
                "Alerts resolved because their condition cleared",
            )?,
        })
    }
}
