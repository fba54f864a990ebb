-- The device $2 (external id) answers its command $1 with $3: `delivered`
-- (receipt), `succeeded` or `failed` (with the body $4). Changes nothing
-- when the command is not that device's or is past that stage.
UPDATE device_commands c
SET status = $3,
    result = CASE WHEN $3 = 'delivered' THEN c.result ELSE $4 END,
    sent_at = coalesce(c.sent_at, now()),
    delivered_at = coalesce(c.delivered_at, now()),
    finished_at = CASE WHEN $3 = 'delivered' THEN NULL ELSE now() END,
    seq = nextval('device_commands_seq'), changed_at = now()
FROM devices d
WHERE c.id = $1 AND d.id = c.device_id AND d.device_id = $2
  AND (c.status IN ('queued', 'sent')
       OR (c.status = 'delivered' AND $3 <> 'delivered'))
RETURNING c.id
