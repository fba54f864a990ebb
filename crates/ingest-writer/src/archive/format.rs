//! The archive's file format: raw readings as Parquet, one row per reading,
//! in the archive's order (time, device, sensor). Values keep the
//! database's NUMERIC(10,4) as DECIMAL(10,4) and times are microseconds in
//! UTC, so DuckDB, pyarrow and Spark read them without conversion.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{Array, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::ArchiveError;
use crate::store::Row;

/// NUMERIC(10,4), as `sensor_readings.value`.
pub const PRECISION: u8 = 10;
pub const SCALE: i8 = 4;
/// Rows per Arrow batch, built and written as one: bounds the memory of a
/// writer or reader whatever the size of a file.
pub const BATCH_ROWS: usize = 8_192;
/// Rows per Parquet row group (what a reader skips by statistics).
const ROW_GROUP_ROWS: usize = 128 * 1024;

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("sensor_name", DataType::Utf8, false),
        Field::new("value", DataType::Decimal128(PRECISION, SCALE), false),
        Field::new("unit", DataType::Utf8, true),
        Field::new("quality", DataType::Utf8, true),
    ]))
}

/// The order of rows in a file and of every merge: by time, then device,
/// then sensor name (bytes), as the SQL's `ORDER BY time, device_id,
/// sensor_name COLLATE "C"`.
pub fn key(r: &Row) -> (DateTime<Utc>, Uuid, &str) {
    (r.time, r.device_id, r.sensor_name.as_str())
}

/// Builds Arrow batches from rows.
pub struct BatchBuilder {
    schema: SchemaRef,
    time: TimestampMicrosecondBuilder,
    device: StringBuilder,
    sensor: StringBuilder,
    value: Decimal128Builder,
    unit: StringBuilder,
    quality: StringBuilder,
    len: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self {
            schema: schema(),
            time: TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS),
            device: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 36),
            sensor: StringBuilder::new(),
            value: Decimal128Builder::with_capacity(BATCH_ROWS),
            unit: StringBuilder::new(),
            quality: StringBuilder::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, r: &Row) -> Result<(), ArchiveError> {
        let mut v = r.value;
        v.rescale(SCALE as u32);
        if v.scale() != SCALE as u32 || v.mantissa().unsigned_abs() >= 10u128.pow(PRECISION.into())
        {
            return Err(ArchiveError::Value(r.value));
        }
        self.time.append_value(r.time.timestamp_micros());
        let mut buf = Uuid::encode_buffer();
        self.device
            .append_value(r.device_id.hyphenated().encode_lower(&mut buf));
        self.sensor.append_value(&r.sensor_name);
        self.value.append_value(v.mantissa());
        self.unit.append_option(r.unit.as_deref());
        self.quality.append_option(r.quality.as_deref());
        self.len += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArchiveError> {
        self.len = 0;
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(self.time.finish().with_timezone("UTC")),
            Arc::new(self.device.finish()),
            Arc::new(self.sensor.finish()),
            Arc::new(
                self.value
                    .finish()
                    .with_precision_and_scale(PRECISION, SCALE)?,
            ),
            Arc::new(self.unit.finish()),
            Arc::new(self.quality.finish()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// A Parquet writer of rows, to any `Write` (a file, stdout).
pub struct RowWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    batch: BatchBuilder,
    rows: u64,
}

impl<W: Write + Send> RowWriter<W> {
    pub fn new(out: W) -> Result<Self, ArchiveError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(ROW_GROUP_ROWS)
            .set_created_by("iot-platform ingest-writer archive".into())
            .build();
        Ok(Self {
            writer: ArrowWriter::try_new(out, schema(), Some(props))?,
            batch: BatchBuilder::new(),
            rows: 0,
        })
    }

    pub fn push(&mut self, r: &Row) -> Result<(), ArchiveError> {
        self.batch.push(r)?;
        self.rows += 1;
        if self.batch.len() >= BATCH_ROWS {
            self.writer.write(&self.batch.finish()?)?;
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer; returns the underlying writer.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        if !self.batch.is_empty() {
            self.writer.write(&self.batch.finish()?)?;
        }
        Ok(self.writer.into_inner()?)
    }
}

/// Sums of NUMERIC(10,4) values keep their scale and need more digits
/// than one value: the widest decimal Parquet has.
const SUM_PRECISION: u8 = 38;

/// One rollup bucket of one sensor, as `iotctl export --rollup` writes it.
pub struct RollupRow {
    pub bucket: DateTime<Utc>,
    pub device_id: Uuid,
    pub sensor_name: String,
    pub readings: i64,
    pub sum_value: Decimal,
    pub min_value: Decimal,
    pub max_value: Decimal,
}

/// The columns of a rollup export, named as in its CSV and JSON lines.
pub fn rollup_schema() -> SchemaRef {
    let decimal =
        |name: &str, precision| Field::new(name, DataType::Decimal128(precision, SCALE), false);
    Arc::new(Schema::new(vec![
        Field::new(
            "bucket",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("sensor_name", DataType::Utf8, false),
        Field::new("readings", DataType::Int64, false),
        decimal("sum_value", SUM_PRECISION),
        decimal("min_value", PRECISION),
        decimal("max_value", PRECISION),
    ]))
}

/// `value` as the mantissa of a decimal of `precision` digits at the
/// archive's scale.
fn scaled(value: Decimal, precision: u8) -> Result<i128, ArchiveError> {
    let mut v = value;
    v.rescale(SCALE as u32);
    if v.scale() != SCALE as u32 || v.mantissa().unsigned_abs() >= 10u128.pow(precision.into()) {
        return Err(ArchiveError::Value(value));
    }
    Ok(v.mantissa())
}

/// A Parquet writer of rollup rows, to any `Write`, in batches of
/// [`BATCH_ROWS`].
pub struct RollupWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    bucket: TimestampMicrosecondBuilder,
    device: StringBuilder,
    sensor: StringBuilder,
    readings: Int64Builder,
    sum: Decimal128Builder,
    min: Decimal128Builder,
    max: Decimal128Builder,
    pending: usize,
}

impl<W: Write + Send> RollupWriter<W> {
    pub fn new(out: W) -> Result<Self, ArchiveError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by("iot-platform iotctl export".into())
            .build();
        Ok(Self {
            writer: ArrowWriter::try_new(out, rollup_schema(), Some(props))?,
            bucket: TimestampMicrosecondBuilder::new(),
            device: StringBuilder::new(),
            sensor: StringBuilder::new(),
            readings: Int64Builder::new(),
            sum: Decimal128Builder::new(),
            min: Decimal128Builder::new(),
            max: Decimal128Builder::new(),
            pending: 0,
        })
    }

    pub fn push(&mut self, r: &RollupRow) -> Result<(), ArchiveError> {
        let (sum, min, max) = (
            scaled(r.sum_value, SUM_PRECISION)?,
            scaled(r.min_value, PRECISION)?,
            scaled(r.max_value, PRECISION)?,
        );
        self.bucket.append_value(r.bucket.timestamp_micros());
        let mut buf = Uuid::encode_buffer();
        self.device
            .append_value(r.device_id.hyphenated().encode_lower(&mut buf));
        self.sensor.append_value(&r.sensor_name);
        self.readings.append_value(r.readings);
        self.sum.append_value(sum);
        self.min.append_value(min);
        self.max.append_value(max);
        self.pending += 1;
        if self.pending >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ArchiveError> {
        self.pending = 0;
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(self.bucket.finish().with_timezone("UTC")),
            Arc::new(self.device.finish()),
            Arc::new(self.sensor.finish()),
            Arc::new(self.readings.finish()),
            Arc::new(
                self.sum
                    .finish()
                    .with_precision_and_scale(SUM_PRECISION, SCALE)?,
            ),
            Arc::new(
                self.min
                    .finish()
                    .with_precision_and_scale(PRECISION, SCALE)?,
            ),
            Arc::new(
                self.max
                    .finish()
                    .with_precision_and_scale(PRECISION, SCALE)?,
            ),
        ];
        self.writer
            .write(&RecordBatch::try_new(rollup_schema(), columns)?)?;
        Ok(())
    }

    /// Writes the footer; returns the underlying writer.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        if self.pending > 0 {
            self.flush_batch()?;
        }
        Ok(self.writer.into_inner()?)
    }
}

/// Rows back from an Arrow batch of the archive's schema.
pub fn rows_of(batch: &RecordBatch) -> Result<Vec<Row>, ArchiveError> {
    fn col<T: 'static>(b: &RecordBatch, i: usize) -> Result<&T, ArchiveError> {
        b.column(i)
            .as_any()
            .downcast_ref::<T>()
            .ok_or(ArchiveError::Schema(i))
    }
    let time = col::<TimestampMicrosecondArray>(batch, 0)?;
    let device = col::<StringArray>(batch, 1)?;
    let sensor = col::<StringArray>(batch, 2)?;
    let value = col::<Decimal128Array>(batch, 3)?;
    let unit = col::<StringArray>(batch, 4)?;
    let quality = col::<StringArray>(batch, 5)?;
    let scale = u32::try_from(value.scale()).map_err(|_| ArchiveError::Schema(3))?;
    let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
    (0..batch.num_rows())
        .map(|i| {
            Ok(Row {
                time: DateTime::from_timestamp_micros(time.value(i))
                    .ok_or(ArchiveError::Schema(0))?,
                device_id: Uuid::parse_str(device.value(i)).map_err(|_| ArchiveError::Schema(1))?,
                sensor_name: sensor.value(i).to_owned(),
                value: Decimal::from_i128_with_scale(value.value(i), scale),
                unit: opt(unit, i),
                quality: opt(quality, i),
            })
        })
        .collect()
}

/// The rows of one archive file, in its order, a batch at a time.
pub struct FileRows {
    reader: ParquetRecordBatchReader,
    current: std::vec::IntoIter<Row>,
}

impl FileRows {
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let file = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(BATCH_ROWS)
            .build()?;
        Ok(Self {
            reader,
            current: Vec::new().into_iter(),
        })
    }
}

impl Iterator for FileRows {
    type Item = Result<Row, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.current.next() {
                return Some(Ok(r));
            }
            match self.reader.next()? {
                Ok(batch) => match rows_of(&batch) {
                    Ok(rows) => self.current = rows.into_iter(),
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

/// The row count a file's footer records.
pub fn footer_rows(path: &Path) -> Result<i64, ArchiveError> {
    let file = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
        .metadata()
        .file_metadata()
        .num_rows())
}

/// Merges two streams of rows in the archive's order into one, keeping one
/// row of each key (the first stream's where both have it).
pub struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A, B> Merge<A, B>
where
    A: Iterator<Item = Result<Row, ArchiveError>>,
    B: Iterator<Item = Result<Row, ArchiveError>>,
{
    pub fn new(a: A, b: B) -> Self {
        Self {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = Result<Row, ArchiveError>>,
    B: Iterator<Item = Result<Row, ArchiveError>>,
{
    type Item = Result<Row, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        let order = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => Ordering::Less,
            (None, Some(_)) | (_, Some(Err(_))) => Ordering::Greater,
            (Some(Ok(x)), Some(Ok(y))) => key(x).cmp(&key(y)),
        };
        match order {
            Ordering::Less => self.a.next(),
            Ordering::Greater => self.b.next(),
            Ordering::Equal => {
                self.b.next();
                self.a.next()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn row(secs: i64, sensor: &str, value: &str) -> Row {
        Row {
            time: DateTime::from_timestamp(secs, 0).unwrap(),
            device_id: Uuid::nil(),
            sensor_name: sensor.into(),
            value: Decimal::from_str(value).unwrap(),
            unit: Some("C".into()),
            quality: None,
        }
    }

    #[test]
    fn rows_round_trip_with_their_scale() {
        let rows = vec![
            row(1, "a", "-999999.9999"),
            row(2, "b", "1.5"),
            row(3, "c", "0"),
        ];
        let mut w = RowWriter::new(Vec::new()).unwrap();
        for r in &rows {
            w.push(r).unwrap();
        }
        let bytes = bytes::Bytes::from(w.finish().unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let back: Vec<Row> = reader.flat_map(|b| rows_of(&b.unwrap()).unwrap()).collect();
        assert_eq!(back, rows);
        assert_eq!(back[1].value.to_string(), "1.5000");
    }

    #[test]
    fn a_value_beyond_numeric_10_4_is_refused() {
        let mut b = BatchBuilder::new();
        assert!(matches!(
            b.push(&row(1, "a", "1000000")),
            Err(ArchiveError::Value(_))
        ));
    }

    #[test]
    fn merge_keeps_order_and_one_row_per_key() {
        let ok = |v: Vec<Row>| v.into_iter().map(Ok);
        let a = ok(vec![row(1, "a", "1"), row(3, "a", "3"), row(3, "b", "3")]);
        let b = ok(vec![row(2, "a", "2"), row(3, "a", "3"), row(4, "a", "4")]);
        let merged: Vec<(i64, String)> = Merge::new(a, b)
            .map(|r| {
                let r = r.unwrap();
                (r.time.timestamp(), r.sensor_name)
            })
            .collect();
        assert_eq!(
            merged,
            [(1, "a"), (2, "a"), (3, "a"), (3, "b"), (4, "a")].map(|(t, s)| (t, s.to_string()))
        );
    }
}
