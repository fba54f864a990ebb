//! The gRPC telemetry query API. Every bad argument is reported at once,
//! each naming its field.

use chrono::{DateTime, TimeDelta, Utc};
use futures::{Stream, StreamExt as _};
use iot_proto::v1::{self, telemetry_server::Telemetry};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::admission::OwnerQueries;
use crate::archive::export::{self, Format};
use crate::archive::{ArchiveError, LocalStore};
use crate::error::WriterError;
use crate::rollup::{Agg, Levels as _, Width};
use crate::store::{Row, Store};

/// Most readings per page.
pub const MAX_LIMIT: u32 = 10_000;
const DEFAULT_LIMIT: u32 = 1_000;
/// Most buckets per metrics request.
pub const MAX_BUCKETS: i64 = 10_000;
/// Longest range for a bucket width no rollup serves (read from raw rows).
pub const MAX_RAW_METRICS_DAYS: i64 = 31;
/// Most buckets per part of a metrics stream.
pub const METRICS_PART: usize = 512;
/// Most devices per latest-readings request.
pub const MAX_DEVICES: usize = 1_000;
/// Largest part of an export stream: well under gRPC's 4 MiB message limit
/// whatever the writer's buffer hands over at once.
pub const EXPORT_PART: usize = 256 * 1024;

#[derive(Clone)]
pub struct TelemetryService {
    store: Store,
    queries: OwnerQueries,
    /// Cold storage, which exports read for archived days.
    archive: Option<LocalStore>,
}

impl TelemetryService {
    /// At most `limits.per_owner` queries of one owner at once.
    pub fn new(store: Store, limits: &crate::QueryLimits) -> Self {
        Self {
            store,
            queries: OwnerQueries::new(
                limits.per_owner,
                std::time::Duration::from_millis(limits.wait_ms),
            ),
            archive: None,
        }
    }

    /// Exports read archived days from `store` as well as the database.
    #[must_use]
    pub fn with_archive(mut self, store: LocalStore) -> Self {
        self.archive = Some(store);
        self
    }
}

impl TelemetryService {
    /// NOT_FOUND unless every one of `devices` is `scope`'s (the
    /// platform's scope, `None`, sees all). Another owner's device is
    /// answered as one that does not exist.
    async fn must_own(&self, scope: Option<Uuid>, devices: &[Uuid]) -> Result<(), Status> {
        let Some(owner) = scope else {
            return Ok(());
        };
        match self.store.not_owned(owner, devices).await?.first() {
            None => Ok(()),
            Some(d) => Err(Status::not_found(format!("device {d} not found"))),
        }
    }
}

/// Collects argument problems; `finish` turns them into one InvalidArgument.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, field: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{field}: {what}"));
    }

    fn uuid(&mut self, field: &str, s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap_or_else(|_| {
            self.add(field, format_args!("{s:?} is not a UUID"));
            Uuid::nil()
        })
    }

    fn sensor(&mut self, field: &str, s: &str) {
        if !iot_domain::validate::is_valid_sensor_name(s) {
            self.add(field, format_args!("{s:?} is not 1-100 of [A-Za-z0-9_.-]"));
        }
    }

    /// `start` and `end`, both required, start before end.
    fn range(
        &mut self,
        start: Option<&iot_proto::Timestamp>,
        end: Option<&iot_proto::Timestamp>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let mut time = |field: &str, t: Option<&iot_proto::Timestamp>| match t {
            None => {
                self.add(field, "is required");
                None
            }
            Some(ts) => iot_proto::from_timestamp(ts).or_else(|| {
                self.add(field, "is not a valid timestamp");
                None
            }),
        };
        let (s, e) = (time("start", start), time("end", end));
        if let (Some(s), Some(e)) = (s, e)
            && s >= e
        {
            self.add("end", "must be after start");
        }
        (
            s.unwrap_or(DateTime::UNIX_EPOCH),
            e.unwrap_or(DateTime::UNIX_EPOCH),
        )
    }

    fn finish(self) -> Result<(), WriterError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WriterError::Invalid(self.0))
        }
    }
}

fn reading(r: Row) -> v1::SensorReading {
    v1::SensorReading {
        time: Some(iot_proto::timestamp(r.time)),
        device_uuid: r.device_id.to_string(),
        sensor_name: r.sensor_name,
        value: r.value.normalize().to_string(),
        unit: r.unit,
        quality: r.quality,
    }
}

/// Decimal places of a bucket's mean.
const AVG_SCALE: u32 = 4;

/// `sum / count` rounded to [`AVG_SCALE`] places, half away from zero (0
/// for no readings). Sums of readings have at most four places, so this is
/// one integer division; a decimal division (several times slower, and a
/// year of hourly buckets has 8,760 of them) is left for other sums.
fn mean(sum: Decimal, count: i64) -> Decimal {
    if count <= 0 {
        return Decimal::ZERO;
    }
    let by_decimal = || {
        (sum / Decimal::from(count))
            .round_dp_with_strategy(AVG_SCALE, RoundingStrategy::MidpointAwayFromZero)
    };
    let Some(places) = AVG_SCALE.checked_sub(sum.scale()) else {
        return by_decimal();
    };
    let Some(n) = sum.mantissa().checked_mul(10i128.pow(places)) else {
        return by_decimal();
    };
    let d = i128::from(count);
    let (q, r) = (n / d, n % d);
    let q = if r.unsigned_abs() * 2 >= d.unsigned_abs() {
        q + n.signum()
    } else {
        q
    };
    Decimal::try_from_i128_with_scale(q, AVG_SCALE).unwrap_or_else(|_| by_decimal())
}

fn metric(bucket: DateTime<Utc>, a: Agg) -> v1::SensorMetric {
    let f = |d: Decimal| d.to_f64().unwrap_or(f64::NAN);
    // Rounded to the readings' own scale, NUMERIC(10,4) as in the
    // rollup tables (half away from zero, as PostgreSQL rounds): an exact
    // mean is `sum / count`.
    let avg = mean(a.sum, a.count);
    v1::SensorMetric {
        bucket: Some(iot_proto::timestamp(bucket)),
        count: u64::try_from(a.count).unwrap_or(0),
        avg: f(avg),
        min: f(a.min),
        max: f(a.max),
        sum: a.sum.normalize().to_string(),
    }
}

/// Cursor of a page of readings: the time of its last (oldest) reading.
fn cursor(t: DateTime<Utc>) -> String {
    format!("t{}", t.timestamp_micros())
}

fn parse_cursor(s: &str) -> Option<DateTime<Utc>> {
    s.strip_prefix('t')?
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
}

/// A metrics request, checked.
struct MetricsQuery {
    device: Uuid,
    sensor: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    width: Width,
}

impl MetricsQuery {
    fn of(req: &v1::QueryMetricsRequest) -> Result<Self, WriterError> {
        let mut p = Problems::default();
        let device = p.uuid("device_uuid", &req.device_uuid);
        p.sensor("sensor_name", &req.sensor_name);
        let (start, end) = p.range(req.start.as_ref(), req.end.as_ref());
        let width = req
            .granularity
            .parse::<Width>()
            .map_err(|e| p.add("granularity", e))
            .ok();
        if let Some(w) = width
            && start < end
        {
            let span = (end - start).num_seconds();
            let buckets = span / w.secs() + 2;
            if buckets > MAX_BUCKETS {
                p.add(
                    "granularity",
                    format_args!(
                        "{} over this range gives about {buckets} buckets, more than {MAX_BUCKETS}",
                        req.granularity
                    ),
                );
            }
            if w.levels().is_empty() && end - start > TimeDelta::days(MAX_RAW_METRICS_DAYS) {
                p.add(
                    "end",
                    format_args!(
                        "a range over {MAX_RAW_METRICS_DAYS} days needs a granularity of whole hours"
                    ),
                );
            }
        }
        p.finish()?;
        let Some(width) = width else {
            return Err(WriterError::Invalid(vec![
                "granularity: is required".into(),
            ]));
        };
        Ok(Self {
            device,
            sensor: req.sensor_name.clone(),
            start,
            end,
            width,
        })
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn query_readings(
        &self,
        request: Request<v1::QueryReadingsRequest>,
    ) -> Result<Response<v1::QueryReadingsResponse>, Status> {
        let permit = self.queries.admit(&request).await?;
        let req = request.into_inner();
        let mut p = Problems::default();
        let device = p.uuid("device_uuid", &req.device_uuid);
        p.sensor("sensor_name", &req.sensor_name);
        let (start, mut end) = p.range(req.start.as_ref(), req.end.as_ref());
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                p.add("limit", format_args!("{n} is more than {MAX_LIMIT}"));
                n
            }
            n => n,
        };
        if !req.cursor.is_empty() {
            match parse_cursor(&req.cursor) {
                Some(c) => end = end.min(c),
                None => p.add("cursor", "is not a cursor this API returned"),
            }
        }
        p.finish()?;
        self.must_own(permit.scope, &[device]).await?;
        let rows = self
            .store
            .query_readings(device, &req.sensor_name, start, end, i64::from(limit))
            .await?;
        let next_cursor = match rows.last() {
            Some(last) if rows.len() == limit as usize => cursor(last.time),
            _ => String::new(),
        };
        Ok(Response::new(v1::QueryReadingsResponse {
            readings: rows.into_iter().map(reading).collect(),
            next_cursor,
        }))
    }

    async fn query_metrics(
        &self,
        request: Request<v1::QueryMetricsRequest>,
    ) -> Result<Response<v1::QueryMetricsResponse>, Status> {
        let permit = self.queries.admit(&request).await?;
        let m = MetricsQuery::of(&request.into_inner())?;
        self.must_own(permit.scope, &[m.device]).await?;
        let metrics = self
            .store
            .query_metrics(m.device, &m.sensor, m.start, m.end, m.width)
            .await?;
        Ok(Response::new(v1::QueryMetricsResponse {
            metrics: metrics.into_iter().map(|(b, a)| metric(b, a)).collect(),
        }))
    }

    type StreamMetricsStream = std::pin::Pin<
        Box<dyn Stream<Item = Result<v1::QueryMetricsResponse, Status>> + Send + 'static>,
    >;

    async fn stream_metrics(
        &self,
        request: Request<v1::QueryMetricsRequest>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let permit = self.queries.admit(&request).await?;
        let m = MetricsQuery::of(&request.into_inner())?;
        self.must_own(permit.scope, &[m.device]).await?;
        let rows = self
            .store
            .stream_metrics(m.device, &m.sensor, m.start, m.end, m.width)
            .await?;
        // Each part is built while tonic sends the one before it; an empty
        // answer is one empty part, as QueryMetrics answers it.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            // The query counts against its owner until its last part.
            let _permit = permit;
            let mut rows = std::pin::pin!(rows.chunks(METRICS_PART));
            let mut sent = false;
            while let Some(part) = rows.next().await {
                let part: Result<Vec<_>, WriterError> = part
                    .into_iter()
                    .map(|r| r.map(|(b, a)| metric(b, a)))
                    .collect();
                let failed = part.is_err();
                let part = part
                    .map(|metrics| v1::QueryMetricsResponse { metrics })
                    .map_err(Status::from);
                if tx.send(part).await.is_err() || failed {
                    return;
                }
                sent = true;
            }
            if !sent {
                let _ = tx.send(Ok(v1::QueryMetricsResponse::default())).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn latest_readings(
        &self,
        request: Request<v1::LatestReadingsRequest>,
    ) -> Result<Response<v1::LatestReadingsResponse>, Status> {
        let permit = self.queries.admit(&request).await?;
        let req = request.into_inner();
        let mut p = Problems::default();
        if req.device_uuids.len() > MAX_DEVICES {
            p.add(
                "device_uuids",
                format_args!("{} ids, more than {MAX_DEVICES}", req.device_uuids.len()),
            );
        }
        let devices: Vec<Uuid> = req
            .device_uuids
            .iter()
            .enumerate()
            .map(|(i, s)| p.uuid(&format!("device_uuids[{i}]"), s))
            .collect();
        p.finish()?;
        self.must_own(permit.scope, &devices).await?;
        let rows = self.store.latest_readings(&devices).await?;
        Ok(Response::new(v1::LatestReadingsResponse {
            readings: rows.into_iter().map(reading).collect(),
        }))
    }

    type WatchStoredStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<v1::StoredReadings, Status>> + Send + 'static>>;

    async fn watch_stored(
        &self,
        request: Request<v1::WatchStoredRequest>,
    ) -> Result<Response<Self::WatchStoredStream>, Status> {
        // A stream, not a query: it holds no query slot of its owner.
        let scope = iot_proto::scope_of(&request)?;
        let mut rx = self.store.watch_stored();
        let store = self.store.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            // Whether each device seen is the owner's (owner scope only).
            let mut owned: std::collections::HashMap<Uuid, bool> = Default::default();
            let mut missed = 0u64;
            loop {
                let batch = tokio::select! {
                    () = tx.closed() => return,
                    b = rx.recv() => b,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        missed += n;
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let rows: Vec<&Row> = match scope {
                    None => batch.rows.iter().collect(),
                    Some(owner) => {
                        let unknown: Vec<Uuid> = batch
                            .rows
                            .iter()
                            .map(|r| r.device_id)
                            .filter(|d| !owned.contains_key(d))
                            .collect::<std::collections::HashSet<_>>()
                            .into_iter()
                            .collect();
                        if !unknown.is_empty() {
                            match store.not_owned(owner, &unknown).await {
                                Ok(not) => {
                                    // Bounded: an owner's devices, at most.
                                    if owned.len() > 100_000 {
                                        owned.clear();
                                    }
                                    for d in unknown {
                                        owned.insert(d, !not.contains(&d));
                                    }
                                }
                                Err(e) => {
                                    let _ = tx.send(Err(Status::from(e))).await;
                                    return;
                                }
                            }
                        }
                        batch.rows.iter().filter(|r| owned[&r.device_id]).collect()
                    }
                };
                if rows.is_empty() {
                    continue;
                }
                let msg = v1::StoredReadings {
                    readings: rows.into_iter().cloned().map(reading).collect(),
                    missed: std::mem::take(&mut missed),
                    stored_at: Some(iot_proto::timestamp(batch.at)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    type ExportReadingsStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<v1::ExportChunk, Status>> + Send + 'static>>;

    async fn export_readings(
        &self,
        request: Request<v1::ExportReadingsRequest>,
    ) -> Result<Response<Self::ExportReadingsStream>, Status> {
        let permit = self.queries.admit(&request).await?;
        let req = request.into_inner();
        let mut p = Problems::default();
        let device = p.uuid("device_uuid", &req.device_uuid);
        let sensor = (!req.sensor_name.is_empty()).then(|| {
            p.sensor("sensor_name", &req.sensor_name);
            req.sensor_name.clone()
        });
        let (from, to) = p.range(req.start.as_ref(), req.end.as_ref());
        let format = req.format.parse::<Format>().unwrap_or_else(|e| {
            p.add("format", e);
            Format::Csv
        });
        p.finish()?;
        self.must_own(permit.scope, &[device]).await?;
        let client = self
            .store
            .query_pool()
            .get()
            .await
            .map_err(WriterError::from)?;
        // An export streams as fast as its caller reads, so its one
        // statement may run far past the pool's statement timeout, which
        // is for queries answered at once; the owner's query slot bounds
        // exports instead. RESET afterwards gives the connection's next
        // user the pool's limit again (it is a startup option).
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(WriterError::from)?;
        let export = export::Request {
            device,
            sensor,
            from,
            to,
            format,
        };
        let archive = self.archive.clone();
        // Two parts in flight at most: the writer waits for the caller, so
        // memory stays bounded whatever the range.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            // The export counts against its owner until its last part.
            let _permit = permit;
            let sink = Box::new(PartSink { tx: tx.clone() });
            let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let done =
                export::export_readings(&client, archive.as_ref(), &export, sink, progress).await;
            if let Err(e) = client.batch_execute("RESET statement_timeout").await {
                // A connection left without its limit must not serve
                // another query.
                tracing::warn!(error = %e, "cannot reset an export's statement timeout");
                let _ = deadpool_postgres::Object::take(client);
            }
            if let Err(e) = done {
                // A caller that went away is not an error worth a status.
                if !tx.is_closed() {
                    let _ = tx.send(Err(export_status(e))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fleet_stats(
        &self,
        request: Request<v1::FleetStatsRequest>,
    ) -> Result<Response<v1::FleetStatsResponse>, Status> {
        let permit = self.queries.admit(&request).await?;
        let mut p = Problems::default();
        let owner = request
            .into_inner()
            .owner_id
            .map(|o| p.uuid("owner_id", &o));
        p.finish()?;
        // A caller scoped to one owner gets that owner's figures only.
        let owner = match (permit.scope, owner) {
            (None, asked) => asked,
            (Some(mine), None) => Some(mine),
            (Some(mine), Some(asked)) if mine == asked => Some(mine),
            (Some(_), Some(_)) => {
                return Err(Status::permission_denied(
                    "owner_id: a caller scoped to one owner gets only its own figures",
                ));
            }
        };
        let s = self.store.fleet_stats(owner).await?;
        let u = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Response::new(v1::FleetStatsResponse {
            readings_last_minute: u(s.readings_last_minute),
            readings_per_second: s.readings_last_minute as f64 / 60.0,
            devices_reporting: u(s.devices_reporting),
            devices_silent: u(s.devices_seen - s.devices_reporting),
            series: u(s.series),
        }))
    }
}

/// The export writer's output: each write goes to the caller as parts of
/// at most [`EXPORT_PART`] bytes, waiting while the caller is behind. It
/// runs on the writer's blocking thread.
struct PartSink {
    tx: tokio::sync::mpsc::Sender<Result<v1::ExportChunk, Status>>,
}

impl std::io::Write for PartSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for part in buf.chunks(EXPORT_PART) {
            let chunk = v1::ExportChunk {
                data: part.to_vec(),
            };
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An export's failure as the status the other RPCs would answer it with.
fn export_status(e: ArchiveError) -> Status {
    match e {
        ArchiveError::Db(e) => WriterError::Db(e).into(),
        ArchiveError::Pool(e) => WriterError::Pool(e).into(),
        e => WriterError::Archive(e).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let t = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        assert_eq!(parse_cursor(&cursor(t)), Some(t));
        assert_eq!(parse_cursor("x1"), None);
        assert_eq!(parse_cursor("t"), None);
    }

    #[test]
    fn integer_means_are_the_decimal_divisions_own() {
        use proptest::prelude::*;
        let by_decimal = |sum: Decimal, count: i64| {
            (sum / Decimal::from(count))
                .round_dp_with_strategy(AVG_SCALE, RoundingStrategy::MidpointAwayFromZero)
        };
        let same = |sum: Decimal, count: i64| {
            let (fast, slow) = (mean(sum, count), by_decimal(sum, count));
            assert_eq!(fast, slow, "{sum} / {count}");
            assert_eq!(
                fast.to_f64().map(f64::to_bits),
                slow.to_f64().map(f64::to_bits),
                "{sum} / {count}"
            );
        };
        // Ties both ways, both signs, sums of fewer places, and sums the
        // integer path leaves to the decimal division.
        for (sum, count) in [
            ("0.0001", 2),
            ("-0.0001", 2),
            ("0.0003", 2),
            ("-0.0003", 2),
            ("1", 3),
            ("-2.5", 4),
            ("43", 2),
            ("0", 7),
            ("1.00005", 2),
            ("12345678901234567890.1234", 1),
            ("79228162514264337593543950335", 3),
        ] {
            same(sum.parse().unwrap(), count);
        }
        assert_eq!(mean(Decimal::ONE, 0), Decimal::ZERO);
        proptest!(|(m in -99_999_999_999_999i64..99_999_999_999_999, scale in 0u32..=4, count in 1i64..2_000_000)| {
            same(Decimal::new(m, scale), count);
        });
    }

    #[test]
    fn means_are_rounded_to_the_readings_scale_and_sums_kept_exact() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let agg = |count: i64, sum: &str| Agg {
            count,
            sum: sum.parse().unwrap(),
            min: Decimal::ZERO,
            max: Decimal::ONE,
        };
        let m = metric(t, agg(3, "1"));
        assert_eq!((m.avg, m.sum.as_str(), m.count), (0.3333, "1", 3));
        // 1.00015 is a midpoint: away from zero, as PostgreSQL rounds.
        assert_eq!(metric(t, agg(2, "2.0003")).avg, 1.0002);
        assert_eq!(metric(t, agg(2, "-2.0003")).avg, -1.0002);
        assert_eq!(metric(t, agg(5, "110")).avg, 22.0);
        assert_eq!(metric(t, agg(0, "0")).avg, 0.0);
    }

    #[test]
    fn problems_name_their_fields() {
        let mut p = Problems::default();
        p.uuid("device_uuid", "nope");
        p.sensor("sensor_name", "bad name");
        p.range(None, None);
        let msg = Status::from(p.finish().unwrap_err()).message().to_owned();
        for field in ["device_uuid:", "sensor_name:", "start:", "end:"] {
            assert!(msg.contains(field), "{msg}");
        }
    }
}
