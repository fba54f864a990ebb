-- device-registry owns these. A flush of heartbeats sets `online_until` in
-- its own statement, from the same device_online_until(), so the per-row
-- trigger (a PL/pgSQL call and a lookup of the device's interval: about
-- half of what a heartbeat costs) runs only for writes that leave it as it
-- was. A write that sets it to the value it had runs the trigger, which
-- computes the same.
DROP TRIGGER IF EXISTS devices_online_until ON devices;
DROP TRIGGER IF EXISTS devices_online_until_new ON devices;
CREATE TRIGGER devices_online_until_new BEFORE INSERT ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_set_online_until();
CREATE TRIGGER devices_online_until BEFORE UPDATE OF last_heartbeat, disconnected_at ON devices
    FOR EACH ROW WHEN (NEW.online_until IS NOT DISTINCT FROM OLD.online_until)
    EXECUTE FUNCTION devices_set_online_until();
