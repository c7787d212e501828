-- cdrsync schema, version 8: the indexes of calls, each one for a query that reads it (issue 11).
-- Every index is written on every insert, so each must serve a query. EXPLAIN of the
-- documented queries (docs/queries.md) on the benchmark's table (make bench) showed:
-- - calls_local_date_idx and calls_account_started_at_idx: read by no documented query and by
--   none of cdrsync's own (the daily views aggregate whole ranges; cdrsync reads calls by key);
-- - calls_started_at_idx: the time-range queries (the last 7 or 30 days) need it only once the
--   table holds much more history than the range. Calls arrive in start-time order (windows are
--   read oldest first, live calls are recent), so a BRIN index serves those ranges at a small
--   fraction of a btree's size and write cost.
-- The primary key stays: it is the upsert's ON CONFLICT key.

DROP INDEX IF EXISTS calls_local_date_idx;
DROP INDEX IF EXISTS calls_account_started_at_idx;
DROP INDEX IF EXISTS calls_started_at_idx;
CREATE INDEX calls_started_at_brin ON calls USING brin (started_at);

COMMENT ON INDEX calls_started_at_brin IS
    'Calls by start time, for ranges such as the last 7 days (docs/queries.md 2 and 8); BRIN, '
    'as calls are stored roughly in start-time order.';
