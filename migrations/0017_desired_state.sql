-- device-registry: per device, the state the owner wants (versioned, for
-- optimistic concurrency) and the state the device last reported.

CREATE TABLE IF NOT EXISTS device_state (
    device_id         UUID PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    desired           JSONB NOT NULL DEFAULT '{}',
    desired_version   BIGINT NOT NULL DEFAULT 0,
    desired_at        TIMESTAMPTZ,
    -- The newest desired version the broker holds as the retained message;
    -- below desired_version, it is published (again) until it does.
    published_version BIGINT NOT NULL DEFAULT 0,
    reported          JSONB,
    reported_at       TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS device_state_unpublished
    ON device_state (device_id) WHERE published_version < desired_version;
