-- Writers wait while retention counts and drops archived days (a moment:
-- the rows counted are the ones about to go); readers do not. A writer's
-- long transaction in the way fails this run after lock_timeout rather
-- than stall every writer queued behind the lock; the next run tries again.
SET LOCAL lock_timeout = '10s';
LOCK TABLE sensor_readings IN SHARE ROW EXCLUSIVE MODE;
