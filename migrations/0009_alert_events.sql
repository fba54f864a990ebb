-- alert-engine owns this table: every change of an alert (raised,
-- acknowledged, resolved) as the alert then was, written in the same
-- transaction as the change (a transactional outbox). A relay publishes
-- the events to the alerts topic in order and marks them published, so an
-- alert is never in the database and not on Kafka (or the reverse) after a
-- crash; subscribers of the gRPC stream read the same log, whichever
-- replica raised the alert. Published events are trimmed after a day.
CREATE TABLE IF NOT EXISTS alert_events (
    seq          BIGSERIAL PRIMARY KEY,
    alert_id     UUID        NOT NULL,
    device_id    UUID        NOT NULL,
    kind         TEXT        NOT NULL,
    alert        BYTEA       NOT NULL,  -- iot.v1.Alert, as of this change
    at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS alert_events_unpublished ON alert_events (seq)
    WHERE published_at IS NULL;
