//! Poison input never holds the platform: what Kafka refuses for good is
//! dead-lettered (truncated when it is too large for a record) instead of
//! being retried forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iot_domain::{RejectReason, Rejection};
use iot_kafka::DeadLetters;
use iot_testkit as kit;
use sha2::Digest as _;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_too_large_for_a_record_go_truncated() {
    let mut kafka = kit::kafka_config();
    kafka.ensure_topics().await.unwrap();
    let letters = |kafka: &iot_kafka::KafkaConfig| {
        DeadLetters::new(
            kafka.producer("test").unwrap(),
            kafka.dead_letter_topic.clone(),
            "test",
        )
    };
    let rejection = Rejection::new(RejectReason::PayloadTooLarge, "too large");
    // Above the letter limit: truncated before it is sent.
    let huge = payload(1_500_000);
    letters(&kafka)
        .send(&rejection, "sensors/d/t", &huge)
        .await
        .unwrap();
    // Within the letter limit, but above this producer's record limit:
    // refused for good, then sent truncated.
    let large = payload(300_000);
    kafka
        .properties
        .insert("message.max.bytes".into(), "200000".into());
    letters(&kafka)
        .send(&rejection, "sensors/d/u", &large)
        .await
        .unwrap();
    // A small one goes whole.
    let small = payload(100);
    letters(&kafka)
        .send(&rejection, "sensors/d/v", &small)
        .await
        .unwrap();

    let mut got = kit::dead_letters(&kafka.dead_letter_topic, 3, Duration::from_secs(30)).await;
    got.sort_by(|a, b| a.origin.cmp(&b.origin));
    assert_eq!(got.len(), 3);
    for (letter, original) in got.iter().zip([&huge, &large, &small]) {
        assert_eq!(letter.payload_size, original.len() as u64);
        assert_eq!(
            letter.payload_sha256,
            sha2::Sha256::digest(original).to_vec()
        );
        assert_eq!(letter.reason, "payload_too_large");
        let kept = original.len().min(iot_kafka::TRUNCATED_PREFIX);
        let truncated = original.len() > iot_kafka::TRUNCATED_PREFIX;
        assert_eq!(letter.payload_truncated, truncated, "{}", letter.origin);
        assert_eq!(letter.payload, original[..kept]);
    }
}
