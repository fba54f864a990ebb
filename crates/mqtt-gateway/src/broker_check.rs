//! Loss the gateway cannot prevent must at least be seen: the broker's own
//! count of PUBLISH packets it received (Mosquitto's
//! `$SYS/broker/publish/messages/received`) against the gateway's count of
//! the first deliveries it got. Every replica with `split = "hashed"` gets
//! every device message, so each compares the whole count.
//!
//! The balance (broker's received minus gateway's, since the first sample)
//! stays within what is in flight while nothing is lost; it grows with
//! every message the broker took and never delivered. Publishes on topics
//! the gateway does not read (the registry's dynamic-security commands,
//! other applications) add to it too, so the alarm threshold sits well above
//! those; brokers without this `$SYS` topic never send a sample and the
//! check stays silent. A broker restart resets its counter: the first
//! sample after it counts from zero.

use iot_telemetry::prometheus::IntGauge;

pub struct BrokerCheck {
    topic: String,
    threshold: i64,
    /// First deliveries the gateway received (redeliveries carry DUP).
    received: u64,
    /// (broker count, gateway count) at the last sample.
    last: Option<(u64, u64)>,
    balance: i64,
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
        let alarmed = self.balance > self.threshold;
        if alarmed && self.alarm.get() == 0 {
            tracing::error!(
                unreceived = self.balance,
                "the broker received more messages than reached the gateway: messages may be lost at the broker"
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
}
