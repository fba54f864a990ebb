//! Telemetry: stored readings, per-bucket metrics, and recording readings.

use std::sync::Arc;

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use iot_proto::v1;

use super::Device;
use super::device::load_device;
use crate::schema::{decimal, time};

/// One stored reading.
pub struct SensorReading(pub(in crate::schema) v1::SensorReading);

/// One stored reading.
#[Object(rename_fields = "snake_case")]
impl SensorReading {
    /// When the reading was taken (the device's timestamp, or receipt time).
    async fn time(&self) -> Option<DateTime<Utc>> {
        time(self.0.time.as_ref())
    }
    /// The device that sent it.
    async fn device(&self, ctx: &Context<'_>) -> Result<Option<Device>> {
        load_device(ctx, &self.0.device_uuid).await
    }
    /// The sensor that measured it.
    async fn sensor_name(&self) -> &str {
        &self.0.sensor_name
    }
    /// NUMERIC(10,4), as a JSON number.
    async fn value(&self) -> f64 {
        decimal(&self.0.value)
    }
    /// Unit, e.g. C, %RH.
    async fn unit(&self) -> Option<&str> {
        self.0.unit.as_deref()
    }
    /// good, uncertain or bad.
    async fn quality(&self) -> Option<&str> {
        self.0.quality.as_deref()
    }
}

/// Aggregates of one time bucket.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct SensorMetric {
    /// Start of the bucket.
    pub time: DateTime<Utc>,
    /// The sensor the figures are of.
    pub sensor_name: String,
    /// Mean of the bucket's values, rounded to 4 decimal places (the
    /// readings' own scale); the exact mean is `sum_value / reading_count`.
    pub avg_value: f64,
    /// Smallest value in the bucket.
    pub min_value: f64,
    /// Largest value in the bucket.
    pub max_value: f64,
    /// Exact sum of the bucket's values.
    pub sum_value: f64,
    /// Readings in the bucket.
    pub reading_count: u64,
}

impl SensorMetric {
    pub(in crate::schema) fn from(sensor: &str, m: &v1::SensorMetric) -> Option<Self> {
        Some(Self {
            time: time(m.bucket.as_ref())?,
            sensor_name: sensor.to_owned(),
            avg_value: m.avg,
            min_value: m.min,
            max_value: m.max,
            sum_value: decimal(&m.sum),
            reading_count: m.count,
        })
    }
}

/// The metrics of one sensor, as `[SensorMetric!]!`. A year of hourly
/// buckets is 8,760 objects; built as async-graphql values (a map per
/// object, then serialized) that cost more than the query behind it. So a
/// plain selection over HTTP is rendered as JSON text straight from the
/// backend's encoded answer ([`crate::metrics_json`]) and goes into the
/// response through [`crate::raw`]; anything else takes the general path.
pub enum MetricList {
    /// The placeholder of the list's JSON text in the request's
    /// [`crate::raw::RawJson`].
    Rendered(String),
    Decoded {
        sensor: String,
        metrics: Vec<v1::SensorMetric>,
    },
}

impl MetricList {
    /// How to render the list `ctx` (a `[SensorMetric!]!` field) selects
    /// straight to JSON, if its selection is plain and the request came
    /// over HTTP.
    pub(in crate::schema) fn plan<'a>(
        ctx: &'a Context<'_>,
        sensor: &str,
    ) -> Option<(&'a Arc<crate::raw::RawJson>, crate::metrics_json::Plan)> {
        let raw = ctx.data_opt::<Arc<crate::raw::RawJson>>()?;
        let fields = crate::metrics_json::plain_selection(&ctx.item.node.selection_set.node.items)?;
        Some((raw, crate::metrics_json::Plan::new(&fields, sensor)))
    }
}

impl async_graphql::OutputType for MetricList {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <Vec<SensorMetric> as async_graphql::OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Vec<SensorMetric> as async_graphql::OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        <Vec<SensorMetric> as async_graphql::OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        match self {
            Self::Rendered(placeholder) => Ok(async_graphql::Value::String(placeholder.clone())),
            Self::Decoded { sensor, metrics } => {
                let objects: Vec<SensorMetric> = metrics
                    .iter()
                    .filter_map(|m| SensorMetric::from(sensor, m))
                    .collect();
                async_graphql::OutputType::resolve(&objects, ctx, field).await
            }
        }
    }
}

/// The outcome of `recordReadings`.
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct RecordResult {
    /// Readings Kafka now holds (they reach queries within a second or so).
    pub accepted: u32,
    /// Readings refused by validation.
    pub rejected: Vec<RejectedReading>,
}

/// A reading refused by validation (also kept in the dead-letter topic).
#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct RejectedReading {
    /// Position in the `readings` argument.
    pub index: u32,
    /// Stable reason code, e.g. bad_value, bad_sensor_name.
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
}

/// One reading to record.
#[derive(InputObject)]
pub struct ReadingInput {
    /// Name in [A-Za-z0-9_.-]{1,100}.
    pub sensor_name: String,
    /// The reading; must fit NUMERIC(10,4).
    pub value: f64,
    /// RFC 3339; absent: now.
    pub timestamp: Option<String>,
    /// Unit, e.g. C, %RH.
    pub unit: Option<String>,
    /// good, uncertain, bad.
    pub quality: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Schema};

    struct Metrics;

    #[Object]
    impl Metrics {
        async fn metrics(&self, ctx: &Context<'_>, sensor: Option<String>) -> MetricList {
            let t = |s: &str| Some(iot_proto::timestamp(s.parse().unwrap()));
            let m = |bucket, count, avg, sum: &str| v1::SensorMetric {
                bucket,
                count,
                avg,
                min: avg - 1.25,
                max: avg + 0.5,
                sum: sum.into(),
            };
            let sensor = sensor.as_deref().unwrap_or("temp \"x\"");
            let metrics = vec![
                m(t("2026-01-01T00:00:00Z"), 3, 21.123_456_789, "63.3703"),
                m(None, 1, 1.0, "1"),
                m(t("2026-01-01T01:00:00.25Z"), 1, f64::NAN, "NaN"),
                m(t("1999-12-31T23:00:00Z"), 7, -0.5, "-3.5"),
            ];
            // As `sensorMetrics` does, with the backend's answer encoded here.
            match MetricList::plan(ctx, sensor) {
                Some((raw, plan)) => {
                    let answer =
                        prost::Message::encode_to_vec(&v1::QueryMetricsResponse { metrics });
                    let part = futures::stream::iter([Ok(answer.into())]);
                    let pieces = crate::metrics_json::render_parts(&plan, part);
                    MetricList::Rendered(raw.put_pieces(pieces.await.unwrap()))
                }
                None => MetricList::Decoded {
                    sensor: sensor.into(),
                    metrics,
                },
            }
        }
    }

    /// The response's JSON text as the HTTP handler sends it, and whether
    /// a list in it was rendered as text.
    async fn answer(query: &str, raw: bool) -> (String, bool) {
        let schema = Schema::new(Metrics, EmptyMutation, EmptySubscription);
        let mut req = async_graphql::Request::new(query);
        let parts = crate::raw::RawJson::new();
        if raw {
            req = req.data(parts.clone());
        }
        let body = serde_json::to_vec(&schema.execute(req).await).unwrap();
        let rendered = memchr::memmem::find(&body, b"iot-raw-json-").is_some();
        (String::from_utf8(parts.splice(body)).unwrap(), rendered)
    }

    #[tokio::test]
    async fn rendered_metrics_are_what_the_general_path_gives() {
        for query in [
            "{ metrics { time avg_value min_value max_value } }",
            "{ metrics { reading_count sum_value sensor_name __typename time } }",
            "{ a: metrics { t: time v: avg_value } b: metrics { max_value } }",
            "{ metrics { time time } }",
            "{ metrics { ... on SensorMetric { time } avg_value } }",
            "{ metrics { time @skip(if: true) avg_value } }",
            // Keys and a sensor name too long for the fixed-size copies.
            "{ metrics { the_time_of_the_bucket_as_rfc_3339_text: time sensor_name } }",
            &format!(
                "{{ metrics(sensor: \"{}\") {{ sensor_name reading_count sum_value }} }}",
                "s".repeat(600)
            ),
        ] {
            let (general, _) = answer(query, false).await;
            assert!(!general.contains("errors"), "{general}");
            let (text, rendered) = answer(query, true).await;
            assert_eq!(text, general, "{query}");
            // Plain selections are rendered as text (fragments, directives
            // and a key twice may take the general path).
            let plain = !query.contains(['.', '@']) && !query.contains("time time");
            assert!(rendered || !plain, "{query}");
        }
    }
}
