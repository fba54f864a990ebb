//! Loss the gateway cannot prevent must at least be seen: the broker's own
//! count of PUBLISH packets it received (Mosquitto's
//! `$SYS/broker/publish/messages/received`) against the gateway's count of
//! the first deliveries it got. Every replica with `split = "hashed"` gets
//! every device message, so each compares the whole count.
//!
//! The balance (broker's received minus gateway's, since the first sample)
//! stays within what is in flight while nothing is lost; it grows with
//! every message the broker took and never delivered. A backlog (devices
//! publishing faster than the gateway takes messages) holds it up too,
//! until it drains, so the alarm looks at the lowest balance of the last
//! [`ALARM_SAMPLES`] samples: a loss keeps it up, a passing backlog does
//! not. Publishes on topics
//! the gateway does not read (the registry's dynamic-security commands,
//! other applications) add to it too, so the alarm threshold sits well above
//! those; brokers without this `$SYS` topic never send a sample and the
//! check stays silent. A broker restart resets its counter: the first
//! sample after it counts from zero.

use std::collections::VecDeque;

use iot_telemetry::prometheus::IntGauge;

/// Samples whose every balance must pass the threshold for the alarm: a
/// minute at Mosquitto's default `sys_interval` of 10 s.
pub const ALARM_SAMPLES: usize = 6;

pub struct BrokerCheck {
    topic: String,
    threshold: i64,
    /// First deliveries the gateway received (redeliveries carry DUP).
    received: u64,
    /// (broker count, gateway count) at the last sample.
    last: Option<(u64, u64)>,
    balance: i64,
    /// The balances of the last `ALARM_SAMPLES` samples.
    recent: VecDeque<i64>,
    gauge: IntGauge,
    alarm: IntGauge,
}

impl BrokerCheck {
    pub fn new(topic: String, threshold: u64, gauge: IntGauge, alarm: IntGauge) -> Self {
        Self {
            topic,
            threshold: i64::try_from(threshold).unwrap_or(i64::MAX),
            received: 0,
            last: None,
            balance: 0,
            recent: VecDeque::with_capacity(ALARM_SAMPLES),
            gauge,
            alarm,
        }
    }

    /// The `$SYS` topic to subscribe to, if the check is on.
    pub fn topic(&self) -> Option<&str> {
        (!self.topic.is_empty()).then_some(self.topic.as_str())
    }

    pub fn is_sample(&self, topic: &[u8]) -> bool {
        !self.topic.is_empty() && topic == self.topic.as_bytes()
    }

    /// A device message arrived (counted once: redeliveries carry DUP).
    pub fn delivered(&mut self, dup: bool) {
        if !dup {
            self.received += 1;
        }
    }

    /// A sample of the broker's count arrived.
    pub fn sample(&mut self, payload: &[u8]) {
        let Some(broker) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return;
        };
        if let Some((last_broker, last_gateway)) = self.last {
            // Below the last sample: the broker restarted and counts anew.
            let took = if broker >= last_broker {
                broker - last_broker
            } else {
                broker
            };
            let got = self.received - last_gateway;
            self.balance +=
                i64::try_from(took).unwrap_or(i64::MAX) - i64::try_from(got).unwrap_or(i64::MAX);
        }
        self.last = Some((broker, self.received));
        self.gauge.set(self.balance.max(0));
        if self.recent.len() == ALARM_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(self.balance);
        let lowest = self.recent.iter().copied().min().unwrap_or(0);
        let alarmed = self.recent.len() == ALARM_SAMPLES && lowest > self.threshold;
        if alarmed && self.alarm.get() == 0 {
            tracing::error!(
                unreceived = lowest,
                samples = ALARM_SAMPLES,
                "the broker received more messages than reached the gateway, \
                 sample after sample: messages may be lost at the broker, \
                 or queued there behind a backlog that does not drain"
            );
        }
        self.alarm.set(i64::from(alarmed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(threshold: u64) -> BrokerCheck {
        let g = || IntGauge::new("g", "g").unwrap_or_else(|_| unreachable!());
        BrokerCheck::new("$SYS/x".into(), threshold, g(), g())
    }

    #[test]
    fn in_flight_messages_do_not_accumulate() {
        let mut c = check(50);
        c.sample(b"1000");
        // 100 taken by the broker; 90 arrived by the sample, 10 later.
        for _ in 0..90 {
            c.delivered(false);
        }
        c.sample(b"1100");
        assert_eq!(c.gauge.get(), 10);
        for _ in 0..10 {
            c.delivered(false);
        }
        // A redelivery is not a new message.
        c.delivered(true);
        c.sample(b"1100");
        assert_eq!(c.gauge.get(), 0);
        assert_eq!(c.alarm.get(), 0);
    }

    #[test]
    fn messages_the_broker_kept_to_itself_raise_the_alarm() {
        let mut c = check(50);
        c.sample(b"10");
        c.sample(b"70");
        assert_eq!((c.gauge.get(), c.alarm.get()), (60, 0));
        for _ in 1..ALARM_SAMPLES {
            c.sample(b"70");
        }
        assert_eq!((c.gauge.get(), c.alarm.get()), (60, 1));
        // The broker restarts: its count starts again from zero.
        for _ in 0..100 {
            c.delivered(false);
        }
        c.sample(b"40");
        assert_eq!((c.gauge.get(), c.alarm.get()), (0, 0));
        assert!(c.is_sample(b"$SYS/x") && !c.is_sample(b"sensors/x"));
        c.sample(b"not a number");
        assert_eq!(c.gauge.get(), 0);
    }

    #[test]
    fn a_backlog_that_drains_raises_no_alarm() {
        let mut c = check(50);
        c.sample(b"0");
        // A burst: the broker takes 500 a sample, the gateway gets 400.
        let mut broker = 0;
        for _ in 0..ALARM_SAMPLES - 1 {
            broker += 500;
            for _ in 0..400 {
                c.delivered(false);
            }
            c.sample(broker.to_string().as_bytes());
        }
        assert!(c.gauge.get() > 50);
        // It drains within the window.
        for _ in 0..c.gauge.get() {
            c.delivered(false);
        }
        c.sample(broker.to_string().as_bytes());
        assert_eq!((c.gauge.get(), c.alarm.get()), (0, 0));
        // A backlog that never drains does.
        for _ in 0..=ALARM_SAMPLES {
            broker += 500;
            for _ in 0..400 {
                c.delivered(false);
            }
            c.sample(broker.to_string().as_bytes());
        }
        assert_eq!(c.alarm.get(), 1);
    }
}
