//! The command session's metrics.

use iot_telemetry::prometheus::{IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct CommandMetrics {
    /// Commands handed to the broker (a republish after a lost PUBACK
    /// counts again).
    pub published: IntCounter,
    answers: IntCounterVec,
    refused: IntCounterVec,
}

impl CommandMetrics {
    pub fn register(registry: &Registry) -> Result<Self, iot_telemetry::prometheus::Error> {
        let published = IntCounter::new(
            "iot_registry_commands_published_total",
            "Commands published to devices",
        )?;
        let answers = IntCounterVec::new(
            Opts::new(
                "iot_registry_command_answers_total",
                "Device answers recorded, by the status they set",
            ),
            &["status"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "iot_registry_command_answers_refused_total",
                "Device messages refused: malformed, an answer to another device's command, \
                 or to no command still open",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self {
            published,
            answers,
            refused,
        })
    }

    pub fn answered(&self, status: &str) {
        self.answers.with_label_values(&[status]).inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}
