//! alert-engine's Prometheus metrics.

use iot_telemetry::prometheus::{IntCounter, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub evaluated: IntCounter,
    pub raised: IntCounter,
    pub resolved: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            evaluated: counter("readings_evaluated_total", "Readings checked against rules")?,
            raised: counter("alerts_raised_total", "Alerts opened")?,
            resolved: counter(
                "alerts_resolved_total",
                "Alerts resolved because their condition cleared",
            )?,
        })
    }
}
