-- Each alert carries its device's owner, so the alerts API and the alert
-- stream scope to a tenant without a join (a device's owner never changes).
ALTER TABLE device_alerts ADD COLUMN IF NOT EXISTS owner_id UUID;
UPDATE device_alerts a SET owner_id = d.owner_id
    FROM devices d WHERE d.id = a.device_id AND a.owner_id IS NULL;
ALTER TABLE device_alerts ALTER COLUMN owner_id SET NOT NULL;
CREATE INDEX IF NOT EXISTS idx_device_alerts_owner
    ON device_alerts (owner_id, created_at DESC);
