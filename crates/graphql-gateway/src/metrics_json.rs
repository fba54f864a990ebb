//! `sensorMetrics` straight from ingest-writer's protobuf answer to the
//! GraphQL response's JSON text.
//!
//! A year of hourly metrics is 8,760 buckets. Decoding them into
//! `v1::SensorMetric`s (a `String` per bucket for its exact sum, a vector
//! grown by doubling), rendering those as JSON and freeing them was most of
//! what the gateway added to such a query. When the selection is plain
//! ([`plain_selection`]) and the request came over HTTP, the gateway
//! instead calls `StreamMetrics` with [`iot_proto::WireCodec`], which keeps
//! each part of the answer as the bytes that arrived, and [`fetch`] reads
//! that wire format once per part as the parts come, writing each bucket's
//! selected fields as it goes, exactly as async-graphql would render them
//! (tests compare the two). The text reaches the response through
//! [`crate::raw`] without being copied.

use async_graphql::Positioned;
use async_graphql::parser::types::Selection;
use prost::bytes::Bytes;

use crate::raw::{TimeWriter, put_digits, short_decimal, write_f64, write_str};

/// The fields of `SensorMetric` a plain selection may hold.
const FIELDS: [&str; 8] = [
    "time",
    "sensor_name",
    "avg_value",
    "min_value",
    "max_value",
    "sum_value",
    "reading_count",
    "__typename",
];

/// `(response key, field name)` of each selected field, when the selection
/// is plain: known fields only, no fragments, no directives, no key twice
/// (async-graphql merges those; the general path does it).
pub fn plain_selection(items: &[Positioned<Selection>]) -> Option<Vec<(&str, &str)>> {
    let fields: Vec<(&str, &str)> = items
        .iter()
        .map(|s| match &s.node {
            Selection::Field(f)
                if f.node.directives.is_empty() && FIELDS.contains(&f.node.name.node.as_str()) =>
            {
                Some((
                    f.node.response_key().node.as_str(),
                    f.node.name.node.as_str(),
                ))
            }
            _ => None,
        })
        .collect::<Option<_>>()?;
    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1]).then_some(fields)
}

enum Field {
    Time,
    Sensor,
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Typename,
}

/// What to write for each bucket: the keys (with their separators) and
/// field kinds, worked out once per list, and the sensor's name as JSON.
pub struct Plan {
    fields: Vec<(Key, Field)>,
    sensor: Vec<u8>,
}

/// Keys up to this long (with separator and colon) are copied as one
/// fixed-size block.
const KEY_MAX: usize = 32;

enum Key {
    Short([u8; KEY_MAX], usize),
    Long(Vec<u8>),
}

impl Key {
    fn len(&self) -> usize {
        match self {
            Self::Short(_, n) => *n,
            Self::Long(k) => k.len(),
        }
    }
}

impl Plan {
    pub fn new(fields: &[(&str, &str)], sensor: &str) -> Self {
        let fields = fields
            .iter()
            .enumerate()
            .map(|(i, (key, name))| {
                let mut k = if i == 0 { Vec::new() } else { b",".to_vec() };
                write_str(&mut k, key);
                k.push(b':');
                let k = if k.len() <= KEY_MAX {
                    let mut padded = [0u8; KEY_MAX];
                    padded[..k.len()].copy_from_slice(&k);
                    Key::Short(padded, k.len())
                } else {
                    Key::Long(k)
                };
                let field = match *name {
                    "time" => Field::Time,
                    "sensor_name" => Field::Sensor,
                    "avg_value" => Field::Avg,
                    "min_value" => Field::Min,
                    "max_value" => Field::Max,
                    "sum_value" => Field::Sum,
                    "reading_count" => Field::Count,
                    _ => Field::Typename,
                };
                (k, field)
            })
            .collect();
        let mut s = Vec::new();
        write_str(&mut s, sensor);
        Self { fields, sensor: s }
    }

    /// Bytes of JSON per bucket, roughly, to size the output once.
    fn bucket_len(&self) -> usize {
        2 + self
            .fields
            .iter()
            .map(|(k, f)| {
                k.len()
                    + match f {
                        Field::Time => 27,
                        Field::Sensor => self.sensor.len(),
                        Field::Typename => 14,
                        _ => 12,
                    }
            })
            .sum::<usize>()
    }
}

/// An answer (or part) was not a well-formed `QueryMetricsResponse`.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed metrics answer: {}", self.0)
    }
}

/// Protobuf wire format, read from a slice.
struct Wire<'a> {
    b: &'a [u8],
}

impl<'a> Wire<'a> {
    fn done(&self) -> bool {
        self.b.is_empty()
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for (i, &byte) in self.b.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.b = &self.b[i + 1..];
                return Ok(v);
            }
        }
        Err(Malformed("bad varint"))
    }

    fn fixed64(&mut self) -> Result<u64, Malformed> {
        let (head, rest) = self
            .b
            .split_first_chunk::<8>()
            .ok_or(Malformed("truncated fixed64"))?;
        self.b = rest;
        Ok(u64::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(self.varint()?).map_err(|_| Malformed("bad length"))?;
        if n > self.b.len() {
            return Err(Malformed("length past the end"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u64, u8), Malformed> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    /// Skips the value of a field this reader does not know.
    fn skip(&mut self, wire: u8) -> Result<(), Malformed> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed64().map(drop),
            2 => self.bytes().map(drop),
            5 => {
                let rest = self.b.get(4..).ok_or(Malformed("truncated fixed32"))?;
                self.b = rest;
                Ok(())
            }
            _ => Err(Malformed("unsupported wire type")),
        }
    }
}

/// One `SensorMetric` as it is on the wire (proto3: absent fields are
/// zero, the last occurrence of a field wins, message fields merge).
#[derive(Default)]
struct Bucket<'a> {
    time: Option<iot_proto::Timestamp>,
    count: u64,
    avg: f64,
    min: f64,
    max: f64,
    sum: &'a [u8],
}

fn bucket(b: &[u8]) -> Result<Bucket<'_>, Malformed> {
    let mut w = Wire { b };
    let mut m = Bucket::default();
    let expect = |got: u8, want: u8| {
        if got == want {
            Ok(())
        } else {
            Err(Malformed("wrong wire type"))
        }
    };
    while !w.done() {
        match w.key()? {
            (1, t) => {
                expect(t, 2)?;
                let mut ts = Wire { b: w.bytes()? };
                let time = m.time.get_or_insert_with(Default::default);
                while !ts.done() {
                    match ts.key()? {
                        (1, t) => {
                            expect(t, 0)?;
                            time.seconds = ts.varint()? as i64;
                        }
                        (2, t) => {
                            expect(t, 0)?;
                            time.nanos = ts.varint()? as i32;
                        }
                        (_, t) => ts.skip(t)?,
                    }
                }
            }
            (2, t) => {
                expect(t, 0)?;
                m.count = w.varint()?;
            }
            (n @ 3..=5, t) => {
                expect(t, 1)?;
                let v = f64::from_bits(w.fixed64()?);
                match n {
                    3 => m.avg = v,
                    4 => m.min = v,
                    _ => m.max = v,
                }
            }
            (6, t) => {
                expect(t, 2)?;
                m.sum = w.bytes()?;
            }
            (_, t) => w.skip(t)?,
        }
    }
    Ok(m)
}

/// The JSON list of the buckets in an encoded `QueryMetricsResponse`, in
/// one buffer.
#[cfg(test)]
pub fn render(plan: &Plan, answer: &[u8]) -> Result<Vec<u8>, Malformed> {
    let items = elements(plan, answer, Vec::new())?;
    Ok([&b"["[..], items.get(1..).unwrap_or_default(), b"]"].concat())
}

/// The JSON list of the buckets in ingest-writer's answer to `req`,
/// fetched with `StreamMetrics` and each part rendered as it arrives,
/// while the next is on its way (the last part's rendering is all that is
/// left once the answer is in). A writer without `StreamMetrics` (one
/// older than this gateway, during a rolling upgrade) is asked with
/// `QueryMetrics`, whose one answer is rendered as a single part. A
/// malformed answer is an `INTERNAL` status.
pub async fn fetch(
    up: &crate::upstream::Upstreams,
    scope: &iot_proto::Scope,
    plan: &Plan,
    req: iot_proto::v1::QueryMetricsRequest,
) -> Result<Vec<Bytes>, tonic::Status> {
    match up.stream_metrics_wire(scope, req.clone()).await {
        Ok(parts) => render_parts(plan, parts.into_inner()).await,
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let answer = up.query_metrics_wire(scope, req).await?.into_inner();
            render_parts(plan, futures::stream::iter([Ok(answer)])).await
        }
        Err(s) => Err(s),
    }
}

/// The JSON list of the buckets in the encoded `QueryMetricsResponse`
/// parts of a stream, each rendered as it comes. Rendering a part (512
/// buckets, a tenth of a millisecond) takes less time than the next takes
/// to arrive, and is done right here: handing parts to other threads cost
/// more in thread switches than it saved.
pub async fn render_parts(
    plan: &Plan,
    parts: impl futures::Stream<Item = Result<Bytes, tonic::Status>>,
) -> Result<Vec<Bytes>, tonic::Status> {
    let mut parts = std::pin::pin!(parts);
    let mut texts = Vec::new();
    while let Some(part) = futures::StreamExt::next(&mut parts).await {
        let text =
            elements(plan, &part?, pooled()).map_err(|e| tonic::Status::internal(e.to_string()))?;
        texts.push(Bytes::from_owner(Pooled(text)));
    }
    Ok(bracketed(texts))
}

/// `[`, the `texts` of [`elements`] without the first one's leading
/// comma, and `]`, as pieces.
fn bracketed(texts: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut out = vec![Bytes::from_static(b"[")];
    for t in texts.into_iter().filter(|t| !t.is_empty()) {
        out.push(if out.len() == 1 { t.slice(1..) } else { t });
    }
    out.push(Bytes::from_static(b"]"));
    out
}

/// Output buffers, kept for the next list: a fresh megabyte costs a page
/// fault per 4 KiB as it is first written (about 230 per year of hourly
/// buckets), a large share of rendering it. At most [`POOL_BYTES`] of
/// capacity is kept.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const POOL_BYTES: usize = 8 << 20;

/// An empty buffer from [`POOL`], or a new one.
fn pooled() -> Vec<u8> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.pop().unwrap_or_default()
}

/// A rendered text that goes back to [`POOL`] once sent.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = pool.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= POOL_BYTES {
            pool.push(buf);
        }
    }
}

/// The buckets among `fields` (whole top-level fields of an encoded
/// `QueryMetricsResponse`) as JSON objects, each after a comma (so that
/// texts rendered apart join without a piece between them), written to
/// `out` (empty).
fn elements(plan: &Plan, fields: &[u8], mut out: Vec<u8>) -> Result<Vec<u8>, Malformed> {
    // A bucket is at least ~40 bytes on the wire; capacity that is never
    // written costs no memory.
    out.reserve((fields.len() / 40 + 1) * plan.bucket_len());
    let mut o = Blocks::new(&mut out);
    let mut times = TimeWriter::default();
    let mut w = Wire { b: fields };
    while !w.done() {
        let (field, wire) = w.key()?;
        if field != 1 {
            w.skip(wire)?;
            continue;
        }
        if wire != 2 {
            return Err(Malformed("wrong wire type"));
        }
        let m = bucket(w.bytes()?)?;
        if !m.time.as_ref().is_some_and(|t| times.prepare(t)) {
            continue;
        }
        o.fixed(b",{");
        for (key, field) in &plan.fields {
            match key {
                Key::Short(k, n) => o.padded(k, *n),
                Key::Long(k) => o.bytes(k),
            }
            match field {
                Field::Time => match times.fixed() {
                    Some(text) => o.fixed(&text),
                    None => o.with_vec(|v| times.write(v)),
                },
                Field::Sensor => o.bytes(&plan.sensor),
                Field::Avg => o.f64(m.avg),
                Field::Min => o.f64(m.min),
                Field::Max => o.f64(m.max),
                Field::Sum => {
                    let text =
                        std::str::from_utf8(m.sum).map_err(|_| Malformed("sum is not UTF-8"))?;
                    o.f64(crate::schema::decimal(text));
                }
                Field::Count => {
                    let mut t = [0u8; 20];
                    let n = put_digits(&mut t, m.count);
                    o.padded(&t, n);
                }
                Field::Typename => o.fixed(b"\"SensorMetric\""),
            }
        }
        o.fixed(b"}");
    }
    o.flush();
    Ok(out)
}

/// Text is gathered in a block on the stack and appended to the output a
/// block at a time: a bucket is a dozen short pieces, and appending each
/// to the `Vec` (a capacity check and a `memcpy` call apiece) cost more
/// than writing them. Pieces of a known size are copied as fixed blocks.
struct Blocks<'a> {
    out: &'a mut Vec<u8>,
    block: [u8; BLOCK],
    n: usize,
    /// For the rare values written the general way.
    spare: Vec<u8>,
}

const BLOCK: usize = 1024;

impl<'a> Blocks<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            block: [0; BLOCK],
            n: 0,
            spare: Vec::new(),
        }
    }

    fn flush(&mut self) {
        self.out.extend_from_slice(&self.block[..self.n]);
        self.n = 0;
    }

    fn room(&mut self, k: usize) {
        if self.n + k > BLOCK {
            self.flush();
        }
    }

    fn fixed<const N: usize>(&mut self, b: &[u8; N]) {
        self.room(N);
        self.block[self.n..self.n + N].copy_from_slice(b);
        self.n += N;
    }

    /// The first `len` bytes of `b`, copied as the whole block `b`.
    fn padded<const N: usize>(&mut self, b: &[u8; N], len: usize) {
        self.fixed(b);
        self.n -= N - len.min(N);
    }

    fn bytes(&mut self, b: &[u8]) {
        if b.len() > BLOCK / 4 {
            self.flush();
            self.out.extend_from_slice(b);
        } else {
            self.room(b.len());
            self.block[self.n..self.n + b.len()].copy_from_slice(b);
            self.n += b.len();
        }
    }

    fn f64(&mut self, v: f64) {
        match short_decimal(v) {
            Some((text, n)) => self.padded(&text, n),
            None => self.with_vec(|s| write_f64(s, v)),
        }
    }

    /// Whatever `write` appends to a `Vec`.
    fn with_vec(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut spare = std::mem::take(&mut self.spare);
        spare.clear();
        write(&mut spare);
        self.bytes(&spare);
        self.spare = spare;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_proto::v1;
    use prost::Message as _;

    fn plan() -> Plan {
        Plan::new(
            &[
                ("t", "time"),
                ("avg_value", "avg_value"),
                ("sum_value", "sum_value"),
                ("reading_count", "reading_count"),
            ],
            "temperature",
        )
    }

    fn metric(seconds: i64, avg: f64, sum: &str) -> v1::SensorMetric {
        v1::SensorMetric {
            bucket: Some(iot_proto::Timestamp { seconds, nanos: 0 }),
            count: 4,
            avg,
            min: avg - 1.0,
            max: avg + 1.0,
            sum: sum.into(),
        }
    }

    fn encode(m: &[v1::SensorMetric]) -> Vec<u8> {
        v1::QueryMetricsResponse {
            metrics: m.to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn fields_in_any_order_and_unknown_fields_read_as_prost_reads_them() {
        let want = render(&plan(), &encode(&[metric(3_600, 21.5, "86")])).unwrap();
        assert_eq!(
            String::from_utf8(want.clone()).unwrap(),
            r#"[{"t":"1970-01-01T01:00:00+00:00","avg_value":21.5,"sum_value":86.0,"reading_count":4}]"#
        );
        // The same bucket hand-written: fields reversed, an unknown field of
        // each wire type, a stale count and time overwritten by later ones.
        let mut b = Vec::new();
        b.extend_from_slice(&[0x32, 2, b'8', b'6']); // sum "86"
        b.extend_from_slice(&[0x10, 9]); // count 9, overwritten below
        b.push(0x19); // avg, fixed64
        b.extend_from_slice(&21.5f64.to_bits().to_le_bytes());
        b.extend_from_slice(&[0x0a, 2, 0x08, 1]); // bucket: seconds 1
        b.extend_from_slice(&[0x0a, 3, 0x08, 0x90, 0x1c]); // bucket: seconds 3600
        b.extend_from_slice(&[0x10, 4]); // count 4
        b.extend_from_slice(&[0x78, 7]); // field 15, varint
        b.extend_from_slice(&[0x79, 0, 0, 0, 0, 0, 0, 0, 0]); // field 15, fixed64
        b.extend_from_slice(&[0x7a, 1, 0]); // field 15, bytes
        b.extend_from_slice(&[0x7d, 0, 0, 0, 0]); // field 15, fixed32
        let mut answer = vec![0x10, 1]; // unknown top-level field 2
        answer.push(0x0a);
        answer.push(b.len() as u8);
        answer.extend_from_slice(&b);
        assert_eq!(render(&plan(), &answer).unwrap(), want);
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_a_guess() {
        let good = encode(&[metric(0, 1.0, "4"), metric(3_600, 2.0, "8")]);
        // Every truncation of a good answer either ends between buckets
        // (fewer buckets) or fails.
        for n in 0..good.len() {
            if let Ok(json) = render(&plan(), &good[..n]) {
                let s = String::from_utf8(json).unwrap();
                assert!(s == "[]" || s.matches('{').count() == 1, "{n}: {s}");
            }
        }
        for bad in [
            &[0x0a, 5, 0x10][..],                            // length past the end
            &[0x0b][..],                                     // group wire type
            &[0x09, 1, 2][..],                               // metrics as fixed64
            &[0x0a, 2, 0x19, 0][..],                         // truncated double
            &[0x0a, 2, 0x0a, 0x08][..],                      // bucket length past the end
            &[0x0a, 7, 0x0a, 2, 0x08, 1, 0x32, 1, 0xff][..], // sum not UTF-8
            &[0x80; 11][..],                                 // varint too long
        ] {
            assert!(render(&plan(), bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn parts_rendered_as_they_come_are_the_whole_answers_text() {
        let p = plan();
        let many: Vec<v1::SensorMetric> = (0..5_000)
            .map(|i| {
                let mut m = metric(i * 3_600, f64::from(i as u32) / 8.0, "12.5");
                // Buckets without a time: scattered, a whole part's worth
                // (1024..2048), and the first bucket of a part.
                if i % 7 == 0 || (1_024..2_048).contains(&i) || i == 3_072 {
                    m.bucket = None;
                }
                m
            })
            .collect();
        // The text of `metrics` sent in parts of `size`.
        let in_parts = async |metrics: &[v1::SensorMetric], size: usize| {
            let parts = metrics
                .chunks(size)
                .map(|c| Ok(Bytes::from(encode(c))))
                .collect::<Vec<_>>();
            render_parts(&p, futures::stream::iter(parts))
                .await
                .unwrap()
                .concat()
        };
        let whole = render(&p, &encode(&many)).unwrap();
        for size in [1, 1_024, 1_000, 5_000] {
            assert_eq!(in_parts(&many, size).await, whole, "parts of {size}");
        }
        // A first part with no bucket to show: no stray comma.
        let mut none_first = many.clone();
        for m in &mut none_first[..1_100] {
            m.bucket = None;
        }
        let text = in_parts(&none_first, 1_024).await;
        assert_eq!(text, render(&p, &encode(&none_first)).unwrap());
        assert!(text.starts_with(b"[{"));
        // Nothing to show: in no part, one empty part, or a large part
        // whose buckets have no time.
        let none = render_parts(&p, futures::stream::iter(Vec::new())).await;
        assert_eq!(none.unwrap().concat(), b"[]");
        let empty = render_parts(&p, futures::stream::iter([Ok(Bytes::new())])).await;
        assert_eq!(empty.unwrap().concat(), b"[]");
        let timeless = Bytes::from(encode(&vec![v1::SensorMetric::default(); 3_000]));
        let timeless = render_parts(&p, futures::stream::iter([Ok(timeless)])).await;
        assert_eq!(timeless.unwrap().concat(), b"[]");
        // A malformed part, or the stream failing after some parts, is an
        // error, never a shorter list.
        let mut bad = encode(&many[..10]);
        bad.truncate(bad.len() - 3);
        let parts = [Ok(Bytes::from(encode(&many[..10]))), Ok(Bytes::from(bad))];
        let e = render_parts(&p, futures::stream::iter(parts)).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::Internal);
        let mut bad = encode(&many);
        bad.truncate(bad.len() - 3);
        let e = render_parts(&p, futures::stream::iter([Ok(Bytes::from(bad))])).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::Internal);
        let parts = [
            Ok(Bytes::from(encode(&many[..10]))),
            Err(tonic::Status::unavailable("gone")),
        ];
        let e = render_parts(&p, futures::stream::iter(parts)).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::Unavailable);
    }

    #[test]
    fn a_bucket_without_a_time_is_left_out() {
        let mut m = metric(0, 1.0, "4");
        m.bucket = None;
        let json = render(&plan(), &encode(&[m, metric(60, 2.0, "8")])).unwrap();
        assert_eq!(String::from_utf8(json).unwrap().matches('{').count(), 1);
    }
}
