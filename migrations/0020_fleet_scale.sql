-- device-registry owns these. What a large registry needs: status counts
-- and the online count answered without reading every device, and device
-- listings in keyset order read from an index.

-- Devices per owner and status, kept by the triggers below: a status
-- summary reads a few rows, not the fleet.
CREATE TABLE IF NOT EXISTS device_status_counts (
    owner_id UUID NOT NULL,
    status   VARCHAR(50) NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (owner_id, status)
);

-- Inserts and deletes are counted per statement (a bulk import of
-- thousands of devices is one change per owner and status), in key order
-- so that concurrent statements lock the counters in the same order. Both
-- triggers name their transition table `changed`: inserted rows count up,
-- deleted ones down.
CREATE OR REPLACE FUNCTION device_counts_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_status_counts (owner_id, status, n)
    SELECT owner_id, status, count(*) * CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END
    FROM changed GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (owner_id, status) DO UPDATE SET n = device_status_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

-- A status or owner change moves one device between counters; it fires
-- only when one of them changes, not on heartbeats.
CREATE OR REPLACE FUNCTION device_counts_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_status_counts (owner_id, status, n)
    SELECT o, s, d FROM (VALUES (OLD.owner_id, OLD.status, -1), (NEW.owner_id, NEW.status, 1))
        AS c(o, s, d) ORDER BY 1, 2
    ON CONFLICT (owner_id, status) DO UPDATE SET n = device_status_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION device_counts_cleared() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_status_counts;
    RETURN NULL;
END $$;

-- The counters start from the devices there are, with writers held off
-- until the triggers that keep them are in place.
LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE;
DROP TRIGGER IF EXISTS devices_counted_in ON devices;
DROP TRIGGER IF EXISTS devices_counted_out ON devices;
DROP TRIGGER IF EXISTS devices_counted_moved ON devices;
DROP TRIGGER IF EXISTS devices_counted_cleared ON devices;
CREATE TRIGGER devices_counted_in AFTER INSERT ON devices
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION device_counts_changed();
CREATE TRIGGER devices_counted_out AFTER DELETE ON devices
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION device_counts_changed();
CREATE TRIGGER devices_counted_moved AFTER UPDATE OF status, owner_id ON devices
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.owner_id IS DISTINCT FROM NEW.owner_id)
    EXECUTE FUNCTION device_counts_moved();
CREATE TRIGGER devices_counted_cleared AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION device_counts_cleared();
DELETE FROM device_status_counts;
INSERT INTO device_status_counts (owner_id, status, n)
SELECT owner_id, status, count(*) FROM devices GROUP BY 1, 2;

-- `online_until`: the moment the device is (or was) offline by the
-- platform's one definition (iot_domain::presence::OfflinePolicy, whose
-- constants are the 5, 10 and 300 here; a test holds the two equal).
-- '-infinity' for a device never heard from. Online means
-- `online_until > now()`, so counting online devices reads only the
-- online ones' index entries.
CREATE OR REPLACE FUNCTION device_online_until(
    heartbeat TIMESTAMPTZ, disconnected TIMESTAMPTZ, read_interval INT
) RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN heartbeat IS NULL THEN '-infinity'::timestamptz
        WHEN disconnected IS NOT NULL AND disconnected >= heartbeat THEN disconnected
        ELSE heartbeat + (CASE WHEN COALESCE(read_interval, 0) > 0
                               THEN GREATEST(read_interval::bigint * 5, 10)
                               ELSE 300 END) * INTERVAL '1 second'
    END
$$;

ALTER TABLE devices ADD COLUMN IF NOT EXISTS online_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity';

CREATE OR REPLACE FUNCTION devices_set_online_until() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.online_until := device_online_until(
        NEW.last_heartbeat, NEW.disconnected_at,
        (SELECT c.read_interval FROM device_config c WHERE c.device_id = NEW.id));
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION device_config_sets_online_until() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    device UUID := CASE WHEN TG_OP = 'DELETE' THEN OLD.device_id ELSE NEW.device_id END;
    interval_secs INT := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.read_interval END;
BEGIN
    UPDATE devices d
    SET online_until = device_online_until(d.last_heartbeat, d.disconnected_at, interval_secs)
    -- A device never heard from stays '-infinity' whatever its interval
    -- (every new device's config, so creating one writes no second row).
    WHERE d.id = device AND d.last_heartbeat IS NOT NULL;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS devices_online_until ON devices;
CREATE TRIGGER devices_online_until BEFORE INSERT OR UPDATE OF last_heartbeat, disconnected_at
    ON devices FOR EACH ROW EXECUTE FUNCTION devices_set_online_until();
DROP TRIGGER IF EXISTS device_config_online_until ON device_config;
CREATE TRIGGER device_config_online_until AFTER INSERT OR DELETE OR UPDATE OF read_interval
    ON device_config FOR EACH ROW EXECUTE FUNCTION device_config_sets_online_until();

UPDATE devices d
SET online_until = device_online_until(d.last_heartbeat, d.disconnected_at,
    (SELECT c.read_interval FROM device_config c WHERE c.device_id = d.id))
WHERE d.last_heartbeat IS NOT NULL;

-- Every heartbeat moves `online_until`, so each is a new row version with
-- new entries in the indexes below, and the old ones stay until a vacuum:
-- vacuum `devices` after 2 % of it changed, not the default 20 %.
ALTER TABLE devices SET (autovacuum_vacuum_scale_factor = 0.02,
                         autovacuum_analyze_scale_factor = 0.02);

-- Online counts, per owner and over every owner.
CREATE INDEX IF NOT EXISTS idx_devices_online_by_owner ON devices (owner_id, online_until)
    WHERE status = 'active';
CREATE INDEX IF NOT EXISTS idx_devices_online ON devices (online_until) WHERE status = 'active';

-- Listings page in (created_at, id) order, within an owner or over all;
-- the owner's index also serves what the owner_id index did.
CREATE INDEX IF NOT EXISTS idx_devices_owner_created ON devices (owner_id, created_at, id);
CREATE INDEX IF NOT EXISTS idx_devices_created ON devices (created_at, id);
DROP INDEX IF EXISTS idx_devices_owner_id;
