-- device-registry owns these. A device's last word (heartbeat, disconnect)
-- and `online_until` move out of `devices` into a narrow row of their own.
-- `online_until` is indexed and moves with every heartbeat, so every
-- heartbeat writes a new row version and an entry in each of the table's
-- indexes: here a row of a few dozen bytes and three indexes, where the
-- registry's row is wide and has eight. `devices` is written again only
-- when a device itself changes.
--
-- Owner and status are copied here, kept by the triggers below (they
-- change rarely), so that online counts read one index, as they did.
-- Every device has its row from its creation on.
CREATE TABLE device_heartbeats (
    device_id       UUID PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    owner_id        UUID NOT NULL,
    active          BOOLEAN NOT NULL,
    last_heartbeat  TIMESTAMPTZ,
    -- When the device last disconnected, if after its last heartbeat.
    disconnected_at TIMESTAMPTZ,
    -- device_online_until(last_heartbeat, disconnected_at, read_interval)
    online_until    TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO device_heartbeats (device_id, owner_id, active, last_heartbeat, disconnected_at, online_until)
SELECT id, owner_id, status = 'active', last_heartbeat, disconnected_at, online_until FROM devices;

CREATE INDEX idx_device_heartbeats_online_by_owner ON device_heartbeats (owner_id, online_until)
    WHERE active;
CREATE INDEX idx_device_heartbeats_online ON device_heartbeats (online_until) WHERE active;

CREATE OR REPLACE FUNCTION device_heartbeats_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_heartbeats (device_id, owner_id, active)
    SELECT id, owner_id, status = 'active' FROM changed;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION device_heartbeats_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE device_heartbeats SET owner_id = NEW.owner_id, active = NEW.status = 'active'
    WHERE device_id = NEW.id;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_heartbeats_added AFTER INSERT ON devices
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION device_heartbeats_added();
CREATE TRIGGER devices_heartbeats_moved AFTER UPDATE OF status, owner_id ON devices
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.owner_id IS DISTINCT FROM NEW.owner_id)
    EXECUTE FUNCTION device_heartbeats_moved();

-- A change of a device's interval moves its `online_until`.
CREATE OR REPLACE FUNCTION device_config_sets_online_until() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    device UUID := CASE WHEN TG_OP = 'DELETE' THEN OLD.device_id ELSE NEW.device_id END;
    interval_secs INT := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.read_interval END;
BEGIN
    UPDATE device_heartbeats h
    SET online_until = device_online_until(h.last_heartbeat, h.disconnected_at, interval_secs)
    -- A device never heard from stays '-infinity' whatever its interval
    -- (every new device's config, so creating one writes no second row).
    WHERE h.device_id = device AND h.last_heartbeat IS NOT NULL;
    RETURN NULL;
END $$;

-- What kept `online_until` on `devices`.
DROP TRIGGER IF EXISTS devices_online_until ON devices;
DROP TRIGGER IF EXISTS devices_online_until_new ON devices;
DROP FUNCTION IF EXISTS devices_set_online_until();
DROP INDEX IF EXISTS idx_devices_online_by_owner;
DROP INDEX IF EXISTS idx_devices_online;
ALTER TABLE devices DROP COLUMN last_heartbeat, DROP COLUMN disconnected_at, DROP COLUMN online_until;
ALTER TABLE devices RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor);

-- A presence event's update names only the times; this sets the moment
-- they imply. The flush's statement sets `online_until` itself (0022's
-- reasoning), so this runs only when an update leaves it as it was.
CREATE OR REPLACE FUNCTION device_heartbeats_set_online_until() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.online_until := device_online_until(
        NEW.last_heartbeat, NEW.disconnected_at,
        (SELECT c.read_interval FROM device_config c WHERE c.device_id = NEW.device_id));
    RETURN NEW;
END $$;

CREATE TRIGGER device_heartbeats_online_until BEFORE UPDATE OF last_heartbeat, disconnected_at
    ON device_heartbeats FOR EACH ROW WHEN (NEW.online_until IS NOT DISTINCT FROM OLD.online_until)
    EXECUTE FUNCTION device_heartbeats_set_online_until();
