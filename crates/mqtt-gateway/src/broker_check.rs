//! Loss the gateway cannot prevent must at least be seen: the broker's own
//! count of PUBLISH packets it received (Mosquitto's
//! `$SYS/broker/publish/messages/received`) against the gateway's count of
//! the first deliveries it got. Every replica with `split = "hashed"` gets
//! every device message, so each compares the whole count.
//!
//! The balance is what the broker took and the gateway has not received:
//! as of the last sample, less what reached the gateway since. While
//! nothing is lost it is what is in flight or queued for the gateway, and
//! it comes down as a backlog drains; every message the broker took and
//! never delivered keeps it up for good. So the alarm goes up only when the
//! balance has stayed above the threshold for a whole `hold`: a burst the
//! gateway is still working through is not a loss. Mosquitto publishes the
//! count only when it changes, so a loss followed by quiet brings no
//! further sample: the check is also evaluated on a timer ([`tick`]).
//! Publishes on topics the gateway does not read (the registry's
//! dynamic-security commands, other applications) add to the balance too,
//! so the threshold sits well above those; brokers without this `$SYS`
//! topic never send a sample and the check stays silent. A broker restart
//! resets its counter: the first sample after it counts from zero.
//!
//! [`tick`]: BrokerCheck::tick

use std::time::{Duration, Instant};

use iot_telemetry::prometheus::IntGauge;

pub struct BrokerCheck {
    topic: String,
    threshold: i64,
    hold: Duration,
    /// First deliveries the gateway received (redeliveries carry DUP).
    received: u64,
    /// (broker count, gateway count) at the last sample.
    last: Option<(u64, u64)>,
    /// The balance as of the last sample.
    balance: i64,
    /// Since when the balance has been above the threshold.
    above_since: Option<Instant>,
    gauge: IntGauge,
    alarm: IntGauge,
    /// The broker's count at the last sample (0 until the first): shows
    /// from when the balance is known.
    broker: IntGauge,
}

impl BrokerCheck {
    pub fn new(
        topic: String,
        threshold: u64,
        hold: Duration,
        gauge: IntGauge,
        alarm: IntGauge,
        broker: IntGauge,
    ) -> Self {
        Self {
            topic,
            threshold: i64::try_from(threshold).unwrap_or(i64::MAX),
            hold,
            received: 0,
            last: None,
            balance: 0,
            above_since: None,
            gauge,
            alarm,
            broker,
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
    pub fn sample(&mut self, payload: &[u8], now: Instant) {
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
        self.broker
            .set(i64::try_from(broker).unwrap_or(i64::MAX).max(1));
        self.tick(now);
    }

    /// The balance now: as of the last sample, less what arrived since.
    fn live(&self) -> i64 {
        self.last.map_or(0, |(_, at)| {
            self.balance - i64::try_from(self.received - at).unwrap_or(i64::MAX)
        })
    }

    /// Updates the gauge and the alarm; called with each sample and on a
    /// timer.
    pub fn tick(&mut self, now: Instant) {
        let live = self.live();
        self.gauge.set(live.max(0));
        if live <= self.threshold {
            self.above_since = None;
        } else if self.above_since.is_none() {
            self.above_since = Some(now);
        }
        let alarmed = self
            .above_since
            .is_some_and(|since| now.duration_since(since) >= self.hold);
        if alarmed && self.alarm.get() == 0 {
            tracing::error!(
                unreceived = live,
                for_secs = self.hold.as_secs(),
                "the broker received more messages than reached the gateway, and the \
                 difference has not come down: messages may be lost at the broker"
            );
        }
        self.alarm.set(i64::from(alarmed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(60);

    fn check(threshold: u64) -> BrokerCheck {
        let g = || IntGauge::new("g", "g").unwrap_or_else(|_| unreachable!());
        BrokerCheck::new("$SYS/x".into(), threshold, HOLD, g(), g(), g())
    }

    #[test]
    fn in_flight_messages_do_not_accumulate() {
        let t = Instant::now();
        let mut c = check(50);
        c.sample(b"1000", t);
        // 100 taken by the broker; 90 arrived by the sample, 10 later.
        for _ in 0..90 {
            c.delivered(false);
        }
        c.sample(b"1100", t);
        assert_eq!(c.gauge.get(), 10);
        for _ in 0..10 {
            c.delivered(false);
        }
        // A redelivery is not a new message.
        c.delivered(true);
        c.tick(t);
        assert_eq!(c.gauge.get(), 0);
        c.sample(b"1100", t);
        assert_eq!(c.gauge.get(), 0);
        assert_eq!(c.alarm.get(), 0);
    }

    #[test]
    fn a_backlog_that_drains_raises_no_alarm() {
        let t = Instant::now();
        let mut c = check(50);
        c.sample(b"0", t);
        // A burst of 10,000 the gateway works through for most of the hold.
        c.sample(b"10000", t);
        assert_eq!((c.gauge.get(), c.alarm.get()), (10_000, 0));
        for i in 1..=10_000u64 {
            c.delivered(false);
            if i % 1000 == 0 {
                c.tick(t + HOLD * u32::try_from(i).unwrap_or(0) / 11_000);
            }
        }
        assert_eq!(c.gauge.get(), 0);
        // The broker's next count shows nothing new: still no alarm, and
        // none later either.
        c.sample(b"10000", t + HOLD);
        c.tick(t + 3 * HOLD);
        assert_eq!((c.gauge.get(), c.alarm.get()), (0, 0));
    }

    #[test]
    fn messages_the_broker_kept_to_itself_raise_the_alarm_after_the_hold() {
        let t = Instant::now();
        let mut c = check(50);
        c.sample(b"10", t);
        c.sample(b"70", t);
        assert_eq!((c.gauge.get(), c.alarm.get()), (60, 0));
        // No further sample comes (the count does not move): the timer
        // raises it.
        c.tick(t + HOLD / 2);
        assert_eq!(c.alarm.get(), 0);
        c.tick(t + HOLD);
        assert_eq!((c.gauge.get(), c.alarm.get()), (60, 1));
        // The broker restarts: its count starts again from zero.
        for _ in 0..100 {
            c.delivered(false);
        }
        c.sample(b"40", t + HOLD);
        assert_eq!((c.gauge.get(), c.alarm.get()), (0, 0));
        assert!(c.is_sample(b"$SYS/x") && !c.is_sample(b"sensors/x"));
        c.sample(b"not a number", t + HOLD);
        assert_eq!(c.gauge.get(), 0);
    }

    /// The shipped settings: a loss past the threshold is raised once the
    /// hold has passed, with no further sample; a million-message burst
    /// drained within the hold raises nothing.
    #[test]
    fn the_shipped_settings_raise_a_loss_and_not_a_drained_burst() {
        let shipped = crate::config::MqttConfig::default();
        let hold = Duration::from_secs(shipped.unreceived_alarm_after_secs);
        let g = || IntGauge::new("g", "g").unwrap_or_else(|_| unreachable!());
        let check = || {
            BrokerCheck::new(
                shipped.broker_received_topic.clone(),
                shipped.unreceived_alarm,
                hold,
                g(),
                g(),
                g(),
            )
        };
        let t = Instant::now();
        let lost = shipped.unreceived_alarm + 1;
        let mut c = check();
        c.sample(b"0", t);
        c.sample(lost.to_string().as_bytes(), t);
        c.tick(t + hold - Duration::from_secs(1));
        assert_eq!(c.alarm.get(), 0);
        c.tick(t + hold);
        assert_eq!(c.alarm.get(), 1);

        let mut c = check();
        c.sample(b"0", t);
        c.sample(b"1000000", t);
        for i in 1..=1_000_000u32 {
            c.delivered(false);
            if i % 10_000 == 0 {
                c.tick(t + hold * (i / 10_000) / 101);
            }
        }
        c.tick(t + 2 * hold);
        assert_eq!((c.gauge.get(), c.alarm.get()), (0, 0));
    }
}
