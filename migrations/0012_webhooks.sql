-- alert-engine owns alert webhooks: each owner's receivers of alert events.
CREATE TABLE IF NOT EXISTS alert_webhooks (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id     UUID NOT NULL,
    url          TEXT NOT NULL,
    -- Signs each body (X-Iot-Signature: sha256=<HMAC-SHA256 hex>).
    secret       TEXT NOT NULL,
    -- Only events of alerts at least this severe.
    min_severity VARCHAR(50) NOT NULL DEFAULT 'info'
                 CHECK (min_severity IN ('info', 'warning', 'critical')),
    enabled      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_alert_webhooks_owner ON alert_webhooks (owner_id);

-- One row per (webhook, alert event): sent, retried with backoff, and kept
-- with its outcome.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    webhook_id      UUID NOT NULL REFERENCES alert_webhooks (id) ON DELETE CASCADE,
    event_seq       BIGINT NOT NULL,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    -- Given up after the configured attempts.
    failed_at       TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_seq)
);
CREATE INDEX IF NOT EXISTS idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- When an alert event was turned into deliveries (the outbox keeps events
-- until both the Kafka relay and the webhook fan-out have them).
ALTER TABLE alert_events ADD COLUMN IF NOT EXISTS webhooks_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS idx_alert_events_webhooks ON alert_events (seq) WHERE webhooks_at IS NULL;
