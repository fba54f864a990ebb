-- device-registry: commands sent to devices, and their lifecycle.
-- A command row is the promise: once inserted it is published until the
-- broker takes it, and it ends in exactly one final status (succeeded,
-- failed, timed_out, expired); see docs/design/commands.md.

CREATE SEQUENCE IF NOT EXISTS device_commands_seq;

CREATE TABLE IF NOT EXISTS device_commands (
    id           UUID PRIMARY KEY,
    device_id    UUID NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    owner_id     UUID NOT NULL,
    name         VARCHAR(100) NOT NULL,
    payload      JSONB NOT NULL,
    status       VARCHAR(20) NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'sent', 'delivered', 'succeeded',
                                   'failed', 'timed_out', 'expired')),
    -- The device's answer body (succeeded or failed).
    result       JSONB,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Undelivered by then: expired; delivered and unanswered: timed_out.
    deadline     TIMESTAMPTZ NOT NULL,
    sent_at      TIMESTAMPTZ,
    delivered_at TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    -- A publisher holds a queued command until then; after it, another
    -- publish (this replica's or another's) may take it.
    lease_until  TIMESTAMPTZ,
    -- Order of changes, for watchers: every change takes the next value.
    seq          BIGINT NOT NULL DEFAULT nextval('device_commands_seq'),
    changed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS device_commands_device
    ON device_commands (device_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS device_commands_open
    ON device_commands (deadline) WHERE status IN ('queued', 'sent', 'delivered');
CREATE INDEX IF NOT EXISTS device_commands_seq_idx
    ON device_commands (device_id, seq);
