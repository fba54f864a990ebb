-- device-registry owns this table: each device's MQTT credentials. Only a
-- salted hash of the password is kept (the password is returned once, when
-- issued); the broker's dynamic-security plugin holds its own copy.
CREATE TABLE IF NOT EXISTS device_credentials (
    device_id     UUID PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    username      VARCHAR(100) NOT NULL UNIQUE,
    password_hash TEXT         NOT NULL,
    issued_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ
);
