//! Pre-rendered JSON for large lists.
//!
//! async-graphql builds every answer as a tree of `Value`s (an `IndexMap`
//! per object) and serializes that tree afterwards. For a year of hourly
//! metrics that is 8,760 maps built, walked and freed, which took longer
//! than the query behind it. A resolver that knows its output's exact shape
//! can instead render it straight to JSON text once, hand the text to
//! [`RawJson::put`] and return the placeholder string it gets back; the
//! HTTP handler serializes the response as usual and [`RawJson::pieces`]
//! puts each text in place of its placeholder.
//!
//! Placeholders carry a random 128-bit nonce of the request, so no value a
//! client sends or stores can look like one. Only the HTTP handler provides
//! a [`RawJson`]; where there is none (WebSocket operations), resolvers
//! build `Value`s as usual.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};

/// The pre-rendered JSON texts of one HTTP request.
pub struct RawJson {
    nonce: u128,
    /// Each part's text, in pieces.
    parts: Mutex<Vec<Vec<Bytes>>>,
}

impl RawJson {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            nonce: uuid::Uuid::new_v4().as_u128(),
            parts: Mutex::new(Vec::new()),
        })
    }

    fn placeholder(&self, i: usize) -> String {
        format!("iot-raw-json-{:032x}-{i}", self.nonce)
    }

    /// Keeps `json` (one complete JSON value) and returns the string to put
    /// in the response in its place.
    #[cfg(test)]
    pub fn put(&self, json: Vec<u8>) -> String {
        self.put_pieces(vec![Bytes::from(json)])
    }

    /// [`Self::put`] for a value whose text is `pieces` one after another.
    pub fn put_pieces(&self, pieces: Vec<Bytes>) -> String {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.push(pieces);
        self.placeholder(parts.len() - 1)
    }

    /// `body` (a serialized response) with every placeholder string
    /// replaced by its JSON text, as pieces to send one after another
    /// (nothing is copied). A placeholder that is not in the body (its
    /// field was nulled by an error) is dropped.
    pub fn pieces(&self, body: Vec<u8>) -> Vec<Bytes> {
        let parts = std::mem::take(&mut *self.parts.lock().unwrap_or_else(|e| e.into_inner()));
        // (position in body, length of the quoted placeholder, part)
        let mut found: Vec<(usize, usize, usize)> = Vec::with_capacity(parts.len());
        for i in 0..parts.len() {
            let quoted = format!("\"{}\"", self.placeholder(i));
            let mut from = 0;
            while let Some(at) = memchr::memmem::find(&body[from..], quoted.as_bytes()) {
                found.push((from + at, quoted.len(), i));
                from += at + quoted.len();
            }
        }
        found.sort_unstable();
        let body = Bytes::from(body);
        let mut out = Vec::with_capacity(2 * found.len() + 1);
        let mut at = 0;
        for (pos, len, i) in found {
            out.push(body.slice(at..pos));
            // Shared, not copied, should a part appear twice.
            out.extend(parts[i].iter().cloned());
            at = pos + len;
        }
        out.push(body.slice(at..));
        out.retain(|b| !b.is_empty());
        out
    }

    /// [`Self::pieces`] joined.
    #[cfg(test)]
    pub fn splice(&self, body: Vec<u8>) -> Vec<u8> {
        self.pieces(body).concat()
    }
}

/// Appends `t` as JSON text exactly as async-graphql renders a
/// `DateTime<Utc>` (chrono's `to_rfc3339`), without chrono's formatting
/// machinery for the common case of whole seconds in years 0 to 9999.
pub fn write_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    // Every field accessor of a `DateTime` converts it to local (UTC) time
    // again; convert once.
    let n = t.naive_utc();
    let year = n.year();
    if n.nanosecond() != 0 || !(0..=9999).contains(&year) {
        write_str(out, &t.to_rfc3339());
        return;
    }
    let two = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8])
    };
    out.push(b'"');
    let y = year as u32;
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, n.month());
    out.push(b'-');
    two(out, n.day());
    out.push(b'T');
    two(out, n.hour());
    out.push(b':');
    two(out, n.minute());
    out.push(b':');
    two(out, n.second());
    out.extend_from_slice(b"+00:00\"");
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Renders many protobuf times in a row as [`write_time`] does, formatting
/// the date part once per day (a list of buckets repeats it) and without
/// chrono's conversions for the times of a day it has seen.
#[derive(Default)]
pub struct TimeWriter {
    /// The day (since the epoch) `prefix` holds: `"YYYY-MM-DDT`.
    day: Option<i64>,
    prefix: [u8; 12],
    /// The time [`Self::prepare`] accepted last.
    current: Option<Prepared>,
}

enum Prepared {
    /// Whole seconds into the cached day.
    InDay(u32),
    /// Anything else, written the general way.
    Other(DateTime<Utc>),
}

impl TimeWriter {
    /// Whether `t` is a valid time; if so, [`Self::write`] writes it.
    pub fn prepare(&mut self, t: &iot_proto::Timestamp) -> bool {
        let (day, in_day) = (t.seconds.div_euclid(86_400), t.seconds.rem_euclid(86_400));
        if t.nanos == 0 && self.day == Some(day) {
            self.current = Some(Prepared::InDay(in_day as u32));
            return true;
        }
        let Some(dt) = iot_proto::from_timestamp(t) else {
            self.current = None;
            return false;
        };
        let mut full = Vec::with_capacity(32);
        write_time(&mut full, &dt);
        // Whole seconds in years 0 to 9999 have the fixed layout.
        if t.nanos == 0 && full.len() == 27 {
            self.day = Some(day);
            self.prefix.copy_from_slice(&full[..12]);
            self.current = Some(Prepared::InDay(in_day as u32));
        } else {
            self.current = Some(Prepared::Other(dt));
        }
        true
    }

    /// Writes the time [`Self::prepare`] accepted last.
    pub fn write(&self, out: &mut Vec<u8>) {
        match (self.fixed(), &self.current) {
            (Some(text), _) => out.extend_from_slice(&text),
            (None, Some(Prepared::Other(t))) => write_time(out, t),
            _ => out.extend_from_slice(b"null"),
        }
    }

    /// The quoted text of the time [`Self::prepare`] accepted last, when it
    /// is whole seconds into the cached day (the fixed layout).
    pub fn fixed(&self) -> Option<[u8; 27]> {
        let Some(Prepared::InDay(s)) = self.current else {
            return None;
        };
        let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
        let d = |v: u32| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
        let mut t = *b"\"YYYY-MM-DDTHH:MM:SS+00:00\"";
        t[..12].copy_from_slice(&self.prefix);
        t[12..14].copy_from_slice(&d(h));
        t[15..17].copy_from_slice(&d(m));
        t[18..20].copy_from_slice(&d(s));
        Some(t)
    }
}

/// Appends `v` as async-graphql renders an `f64` (`null` when not finite).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if !write_short_decimal(out, v) {
        let _ = serde_json::to_writer(&mut *out, &v);
    }
}

/// Writes `v` if it is the double nearest to a decimal of at most four
/// places with a magnitude from 0.001 to below 1e9 (every NUMERIC(10,4)
/// reading, and means rounded to that scale) and returns true; writes
/// nothing and returns false otherwise. For such a value the shortest text
/// that reads back as `v` (serde_json's) is that decimal: any other decimal
/// of at most four places is at least 1e-4 away, and doubles below 1e9 are
/// less than 2e-7 apart. Integer arithmetic gives it without the general
/// algorithm; the tests compare the two.
fn write_short_decimal(out: &mut Vec<u8>, v: f64) -> bool {
    match short_decimal(v) {
        Some((text, n)) => {
            out.extend_from_slice(&text[..n]);
            true
        }
        None => false,
    }
}

/// [`write_short_decimal`]'s text in a fixed buffer, and its length.
pub fn short_decimal(v: f64) -> Option<([u8; 16], usize)> {
    let a = v.abs();
    if !(1e-3..1e9).contains(&a) {
        return None;
    }
    // Truncation after adding a half rounds (a is positive), without a
    // call to libm's `round`; whatever k it gives is checked exactly.
    let k = (a * 10_000.0 + 0.5) as u64;
    if k as f64 / 10_000.0 != a {
        return None;
    }
    let (int, frac) = (k / 10_000, k % 10_000);
    let mut t = [0u8; 16];
    let mut n = 0;
    if v < 0.0 {
        t[0] = b'-';
        n = 1;
    }
    n += put_digits(&mut t[n..], int);
    t[n] = b'.';
    if frac == 0 {
        t[n + 1] = b'0';
        return Some((t, n + 2));
    }
    let digits = [frac / 1000, frac / 100 % 10, frac / 10 % 10, frac % 10];
    let mut m = 4;
    while digits[m - 1] == 0 {
        m -= 1;
    }
    for (i, d) in digits[..m].iter().enumerate() {
        t[n + 1 + i] = b'0' + *d as u8;
    }
    Some((t, n + 1 + m))
}

/// Writes the decimal digits of `x` at the start of `to` (which must have
/// room: 20 bytes hold any `u64`) and returns how many.
pub fn put_digits(to: &mut [u8], mut x: u64) -> usize {
    let mut len = 1;
    let mut p = 10u64;
    while len < 20 && x >= p {
        len += 1;
        p = p.saturating_mul(10);
    }
    for c in to[..len].iter_mut().rev() {
        *c = b'0' + (x % 10) as u8;
        x /= 10;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_chrono_does() {
        let mut t = "0001-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let step = chrono::TimeDelta::seconds(86_400 * 37 + 3_671);
        for _ in 0..100_000 {
            let mut fast = Vec::new();
            write_time(&mut fast, &t);
            assert_eq!(fast, serde_json::to_vec(&t.to_rfc3339()).unwrap(), "{t:?}");
            t += step;
        }
        for s in [
            "2026-11-28T01:02:03.5Z",
            "2026-11-28T01:02:03.000001Z",
            "1969-12-31T23:59:59Z",
        ] {
            let t: DateTime<Utc> = s.parse().unwrap();
            let mut fast = Vec::new();
            write_time(&mut fast, &t);
            assert_eq!(fast, serde_json::to_vec(&t.to_rfc3339()).unwrap());
        }
    }

    #[test]
    fn floats_render_as_async_graphql_values_do() {
        use async_graphql::ScalarType as _;
        for v in [
            0.0,
            -0.0,
            1.5,
            21.123_456_789_012_34,
            1e21,
            -3.0e-7,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut fast = Vec::new();
            write_f64(&mut fast, v);
            assert_eq!(fast, serde_json::to_vec(&v.to_value()).unwrap(), "{v}");
        }
    }

    #[test]
    fn short_decimals_render_as_serde_json_does() {
        let check = |v: f64| {
            let mut fast = Vec::new();
            write_f64(&mut fast, v);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&v).unwrap(),
                "{v:?}"
            );
        };
        // Every value of four places up to 100, both signs.
        for k in 0..1_000_000u64 {
            let v = k as f64 / 10_000.0;
            check(v);
            check(-v);
        }
        // A spread of larger ones up to the limit, and past it.
        let mut k: u64 = 1;
        while k < 20_000_000_000_000 {
            for d in [0, 1, 9, 5_000, 9_999] {
                check((k + d) as f64 / 10_000.0);
            }
            k = k * 3 + 7;
        }
        // Values that are not short decimals, and the edges.
        for v in [
            0.1 + 0.2,
            1.0 / 3.0,
            std::f64::consts::PI,
            21.123_45,
            0.000_999_9,
            0.001,
            999_999_999.999_9,
            1e9,
            1e9 + 0.5,
            123_456_789.000_1,
            5e-324,
            f64::MAX,
        ] {
            check(v);
            check(-v);
        }
    }

    #[test]
    fn a_time_writer_renders_as_write_time_does() {
        let mut writer = TimeWriter::default();
        let mut check = |t: DateTime<Utc>| {
            let p = iot_proto::timestamp(t);
            assert!(writer.prepare(&p));
            let (mut fast, mut one) = (Vec::new(), Vec::new());
            writer.write(&mut fast);
            write_time(&mut one, &t);
            assert_eq!(fast, one, "{t:?}");
        };
        // Hourly buckets over days, months and a leap day, with odd steps.
        let mut t = "1999-12-30T20:00:00Z".parse::<DateTime<Utc>>().unwrap();
        for i in 0..20_000 {
            check(t);
            t += chrono::TimeDelta::seconds(if i % 7 == 0 { 3_599 } else { 3_600 });
        }
        for s in [
            "2026-11-28T01:02:03.5Z",
            "2026-11-28T01:02:04Z",
            "1969-12-31T23:59:59Z",
            "-0001-12-31T23:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:00:00Z",
            "+10000-01-01T00:00:00Z",
        ] {
            check(s.parse().unwrap());
        }
        // Not a time: refused.
        let bad = iot_proto::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(!writer.prepare(&bad));
    }

    #[test]
    fn digits_are_those_of_to_string() {
        let mut values = vec![0, 1, 9, u64::MAX];
        let mut p = 10u64;
        while let Some(next) = p.checked_mul(10) {
            values.extend([p - 1, p, p + 1]);
            p = next;
        }
        for v in values {
            let mut t = [0u8; 20];
            let n = put_digits(&mut t, v);
            assert_eq!(std::str::from_utf8(&t[..n]).unwrap(), v.to_string());
        }
    }

    #[test]
    fn placeholders_are_replaced_wherever_they_are() {
        let raw = RawJson::new();
        let a = raw.put(b"[1,2]".to_vec());
        let b = raw.put(b"{\"x\":null}".to_vec());
        let unused = raw.put(b"[3]".to_vec());
        let body = format!(
            r#"{{"data":{{"second":"{b}","first":"{a}","text":"iot-raw-json-not-ours-0"}}}}"#
        )
        .into_bytes();
        let out = String::from_utf8(raw.splice(body)).unwrap();
        assert_eq!(
            out,
            r#"{"data":{"second":{"x":null},"first":[1,2],"text":"iot-raw-json-not-ours-0"}}"#
        );
        assert!(!out.contains(&unused));
        // A request that rendered nothing keeps its body as it is.
        assert_eq!(RawJson::new().splice(b"{}".to_vec()), b"{}");
    }
}
