-- ingest-writer owns these. Every batch updates the rollup rows of the
-- current buckets of its series and each series' latest reading, so the
-- same rows are rewritten again and again, one row per series at each
-- width for a large fleet. Such an update changes no indexed column: with
-- room on its page it stays there (a HOT update: no new index entries,
-- and the old version is reclaimed by the next reader of the page, with
-- or without a vacuum). The room only applies to pages written from now.
ALTER TABLE sensor_readings_1h SET (fillfactor = 70);
ALTER TABLE sensor_readings_1d SET (fillfactor = 70);
ALTER TABLE sensor_readings_1w SET (fillfactor = 70);

-- The latest reading's time was indexed for the fleet's "devices heard in
-- the last 5 minutes", a count that reads most of the table anyway, as the
-- two counts beside it do. Unindexed, a newer reading can be a HOT update.
DROP INDEX IF EXISTS sensor_latest_time;
ALTER TABLE sensor_latest SET (fillfactor = 70);
