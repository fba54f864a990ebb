//! The alert rule language on arbitrary text: the parser may refuse it but
//! never panic, and whatever it accepts evaluates without panicking.
#![no_main]

use iot_domain::expr::{Reading, eval, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = parse(src) {
        for value in [0.0, -1.5, 1e300, f64::NAN] {
            let _ = eval(
                &e,
                &Reading {
                    value,
                    sensor_name: "temperature",
                    ..Default::default()
                },
            );
        }
    }
});
