//! Every parser of outside input, on arbitrary bytes: none may panic, and
//! whatever they accept must pass or fail validation without panicking.
#![no_main]

use iot_domain::{Limits, parse_batch, parse_senml, parse_single, parse_topic, validate_reading};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let now = chrono::Utc::now();
    let mut entries = Vec::new();
    entries.push(parse_single("t", data, &limits));
    entries.extend(parse_batch(data, &limits).unwrap_or_default());
    entries.extend(parse_senml(data, &limits, now).unwrap_or_default());
    for input in entries.into_iter().flatten() {
        let _ = validate_reading(uuid::Uuid::nil(), "d", input, now, &limits);
    }
    if let Ok(topic) = std::str::from_utf8(data) {
        let _ = parse_topic("sensors", topic);
    }
});
