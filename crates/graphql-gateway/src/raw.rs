//! Pre-rendered JSON for large lists.
//!
//! async-graphql builds every answer as a tree of `Value`s (an `IndexMap`
//! per object) and serializes that tree afterwards. For a year of hourly
//! metrics that is 8,760 maps built, walked and freed, which took longer
//! than the query behind it. A resolver that knows its output's exact shape
//! can instead render it straight to JSON text once, hand the text to
//! [`RawJson::put`] and return the placeholder string it gets back; the
//! HTTP handler serializes the response as usual and [`RawJson::splice`]
//! puts each text in place of its placeholder.
//!
//! Placeholders carry a random 128-bit nonce of the request, so no value a
//! client sends or stores can look like one. Only the HTTP handler provides
//! a [`RawJson`]; where there is none (WebSocket operations), resolvers
//! build `Value`s as usual.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};

/// The pre-rendered JSON texts of one HTTP request.
pub struct RawJson {
    nonce: u128,
    parts: Mutex<Vec<Vec<u8>>>,
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
    pub fn put(&self, json: Vec<u8>) -> String {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.push(json);
        self.placeholder(parts.len() - 1)
    }

    /// `body` (a serialized response) with every placeholder string
    /// replaced by its JSON text. A placeholder that is not in the body
    /// (its field was nulled by an error) is dropped.
    pub fn splice(&self, body: Vec<u8>) -> Vec<u8> {
        let parts = std::mem::take(&mut *self.parts.lock().unwrap_or_else(|e| e.into_inner()));
        if parts.is_empty() {
            return body;
        }
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
        let extra: usize = found.iter().map(|&(_, _, i)| parts[i].len()).sum();
        let mut out = Vec::with_capacity(body.len() + extra);
        let mut at = 0;
        for (pos, len, i) in found {
            out.extend_from_slice(&body[at..pos]);
            out.extend_from_slice(&parts[i]);
            at = pos + len;
        }
        out.extend_from_slice(&body[at..]);
        out
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

/// Appends `v` as async-graphql renders an `f64` (`null` when not finite).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// Appends `v` as a JSON number.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let _ = write!(out, "{v}");
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
