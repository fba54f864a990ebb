//! Alerts over the real components: MQTT → gateway → Kafka →
//! alert-engine (its own consumer group) → device_alerts, then the
//! alerts API, its stream and topic, and webhooks. One module per topic:
//! threshold alerts and the API (`thresholds`), rules in the rule
//! language (`rules`), webhooks (`webhooks`). Each test runs on a
//! platform and devices of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rules;
mod support;
mod thresholds;
mod webhooks;
