-- Plain PostgreSQL has kept its rollups in tables the writer maintains since
-- 0004; 0014 brings TimescaleDB to the same design. Nothing to do here.
SELECT 1;
