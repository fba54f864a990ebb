//! The writer's metrics; each event logs and counts in one place.

use std::time::Duration;

use iot_telemetry::prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    rows_written: IntCounter,
    duplicates: IntCounter,
    batch_seconds: Histogram,
    batch_rows: Histogram,
    db_errors: IntCounter,
    poison: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, iot_telemetry::prometheus::Error> {
        let rows_written = IntCounter::new("iot_writer_rows_written_total", "Readings stored")?;
        let duplicates = IntCounter::new(
            "iot_writer_duplicates_ignored_total",
            "Readings already stored (redelivery), ignored",
        )?;
        let batch_seconds = Histogram::with_opts(HistogramOpts::new(
            "iot_writer_batch_write_seconds",
            "Time to write one batch",
        ))?;
        let batch_rows = Histogram::with_opts(
            HistogramOpts::new("iot_writer_batch_rows", "Readings per written batch").buckets(
                vec![
                    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                ],
            ),
        )?;
        let db_errors = IntCounter::new(
            "iot_writer_db_errors_total",
            "Failed batch writes (retried)",
        )?;
        let poison = IntCounterVec::new(
            Opts::new(
                "iot_writer_poison_records_total",
                "Undecodable records sent to the dead-letter topic",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rows_written.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(batch_rows.clone()))?;
        registry.register(Box::new(db_errors.clone()))?;
        registry.register(Box::new(poison.clone()))?;
        Ok(Self {
            rows_written,
            duplicates,
            batch_seconds,
            batch_rows,
            db_errors,
            poison,
        })
    }

    pub fn batch_written(&self, rows: usize, inserted: u64, took: Duration) {
        let dupes = (rows as u64).saturating_sub(inserted);
        tracing::debug!(
            rows,
            inserted,
            dupes,
            took_ms = took.as_millis() as u64,
            "batch written"
        );
        self.rows_written.inc_by(inserted);
        self.batch_rows.observe(rows as f64);
        self.duplicates.inc_by(dupes);
        self.batch_seconds.observe(took.as_secs_f64());
    }

    pub fn db_error(&self, e: &dyn std::fmt::Display) {
        tracing::warn!(error = %e, "batch write failed, retrying");
        self.db_errors.inc();
    }

    pub fn poison(&self, origin: &str, r: &iot_domain::Rejection) {
        tracing::warn!(origin, reason = %r.reason, detail = %r.detail, "poison record dead-lettered");
        self.poison.with_label_values(&[r.reason.code()]).inc();
    }
}
