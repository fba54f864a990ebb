-- alert-engine: the episodes of duration rules ("above 100 for 2 minutes")
-- in progress, so a restarted engine, or a replica taking over a
-- partition, goes on counting from where the condition started to hold
-- instead of starting again. Written only when an episode starts (or a
-- late reading moves its start back) and deleted when it ends: not once per
-- reading. An episode counts only for the rule version it was recorded
-- under (a changed rule starts afresh).
CREATE TABLE IF NOT EXISTS alert_rule_episodes (
    rule_id      UUID NOT NULL,
    rule_version TIMESTAMPTZ NOT NULL,
    device_id    UUID NOT NULL,
    sensor_name  VARCHAR(100) NOT NULL,
    -- The time of the earliest reading of the episode.
    since        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rule_id, device_id, sensor_name)
);
