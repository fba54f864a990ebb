-- alert-engine owns alert_rules: conditions in the rule language
-- (alert_engine::expr), stored as text, parsed and evaluated by the engine
-- in memory; never part of an SQL statement.
CREATE TABLE IF NOT EXISTS alert_rules (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: a platform-wide rule (admin scope); else the owner's devices only.
    owner_id        UUID,
    -- Becomes the alert_type of the alerts the rule raises.
    name            VARCHAR(50) NOT NULL,
    condition       TEXT NOT NULL,
    -- Hysteresis: an open alert resolves only once this holds (NULL: as
    -- soon as the condition no longer holds).
    clear_condition TEXT,
    severity        VARCHAR(50) NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message         TEXT,
    -- The condition must hold this long (every reading of the series)
    -- before the alert is raised.
    for_secs        INTEGER NOT NULL DEFAULT 0 CHECK (for_secs >= 0),
    -- Only devices of this type (NULL: all).
    device_type     VARCHAR(50),
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS alert_rules_owner_name
    ON alert_rules (COALESCE(owner_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid), name);

-- The rule that raised an alert (NULL: a built-in condition).
ALTER TABLE device_alerts
    ADD COLUMN IF NOT EXISTS rule_id UUID REFERENCES alert_rules (id) ON DELETE SET NULL;
