-- Commands past their deadline: delivered ones timed out, the others
-- expired (the broker drops their message: its expiry is the deadline).
UPDATE device_commands
SET status = CASE WHEN status = 'delivered' THEN 'timed_out' ELSE 'expired' END,
    finished_at = now(),
    seq = nextval('device_commands_seq'), changed_at = now()
WHERE status IN ('queued', 'sent', 'delivered') AND deadline <= now()
