//! The topics a service creates carry the configured `min.insync.replicas`
//! to the real broker, which accepts them; creating them again is a no-op.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_testkit as kit;

#[tokio::test]
async fn topics_are_created_with_min_insync_replicas_and_once() {
    let mut kafka = kit::kafka_config();
    kafka.min_insync_replicas = Some(1);
    assert!(kafka.problems("kafka").is_empty());
    kafka.ensure_topics().await.unwrap();
    kafka.ensure_topics().await.unwrap();
    // More than the replication factor is refused before any broker is
    // asked.
    kafka.min_insync_replicas = Some(2);
    assert_eq!(kafka.problems("kafka").len(), 1);
}
