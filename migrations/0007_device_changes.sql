-- device-registry owns this table: a log of changes to devices, written in
-- the same transaction as the change, that other services watch
-- (DeviceRegistry.WatchDeviceChanges) to refresh their caches within a
-- second instead of waiting for a cache entry to expire. Trimmed to a day.
CREATE TABLE IF NOT EXISTS device_changes (
    seq         BIGSERIAL PRIMARY KEY,
    device_id   UUID         NOT NULL,
    external_id VARCHAR(100) NOT NULL,
    kind        TEXT         NOT NULL,
    at          TIMESTAMPTZ  NOT NULL DEFAULT now()
);
