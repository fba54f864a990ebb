-- device-registry's contract for the services that need a device's owner
-- (alert-engine stamps it on each alert; ingest-writer's per-owner fleet
-- figures): they read this view, never the registry's tables.
CREATE OR REPLACE VIEW device_owners AS
SELECT id AS device_id, owner_id
FROM devices;
