-- The broker took the command (its PUBACK).
UPDATE device_commands
SET status = 'sent', sent_at = now(),
    seq = nextval('device_commands_seq'), changed_at = now()
WHERE id = $1 AND status = 'queued'
