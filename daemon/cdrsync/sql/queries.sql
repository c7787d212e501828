-- Named queries of cdrsync.store. Each starts at a "-- name: <name>" line and runs with
-- search_path set to the configured schema (names are unqualified).

-- name: bootstrap_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS
    'Schema versions of cdrsync applied to this database (cdrsync migrate).';

-- name: migration_lock
-- One lock per schema, in the single-bigint key space (stream locks use two int4 keys).
SELECT pg_advisory_xact_lock(hashtextextended('cdrsync.migrate:' || $1::text, 0));

-- name: migration_applied
SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1);

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, now());

-- name: create_temp_calls
-- Once per connection; ON COMMIT DELETE ROWS empties it at the end of every batch.
CREATE TEMP TABLE IF NOT EXISTS cdrsync_calls_in (LIKE calls INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;

-- name: upsert_calls
-- $1: the batch's time (first_seen_at of new rows, updated_at of changed ones).
-- A row changes only when its content differs and the copy is not older than the stored one.
WITH up AS (
    INSERT INTO calls AS c (
        vendor, account, call_key, call_id, call_uuid, direction, status,
        started_at, answered_at, ended_at, duration_s, talk_s, ring_s,
        agent_name, agent_number, customer_number, line_number, department,
        hangup_cause, recording_url, service, description, local_date,
        raw, content_hash, fetched_at, first_seen_at, updated_at
    )
    SELECT
        vendor, account, call_key, call_id, call_uuid, direction, status,
        started_at, answered_at, ended_at, duration_s, talk_s, ring_s,
        agent_name, agent_number, customer_number, line_number, department,
        hangup_cause, recording_url, service, description, local_date,
        raw, content_hash, fetched_at, $1::timestamptz, $1::timestamptz
    FROM cdrsync_calls_in
    -- Rows are locked in key order, so two batches sharing keys (a webhook and a list
    -- stream of one account) wait for each other instead of deadlocking.
    ORDER BY vendor, account, call_key
    ON CONFLICT (vendor, account, call_key) DO UPDATE SET
        call_id = EXCLUDED.call_id,
        call_uuid = EXCLUDED.call_uuid,
        direction = EXCLUDED.direction,
        status = EXCLUDED.status,
        started_at = EXCLUDED.started_at,
        answered_at = EXCLUDED.answered_at,
        ended_at = EXCLUDED.ended_at,
        duration_s = EXCLUDED.duration_s,
        talk_s = EXCLUDED.talk_s,
        ring_s = EXCLUDED.ring_s,
        agent_name = EXCLUDED.agent_name,
        agent_number = EXCLUDED.agent_number,
        customer_number = EXCLUDED.customer_number,
        line_number = EXCLUDED.line_number,
        department = EXCLUDED.department,
        hangup_cause = EXCLUDED.hangup_cause,
        recording_url = EXCLUDED.recording_url,
        service = EXCLUDED.service,
        description = EXCLUDED.description,
        local_date = EXCLUDED.local_date,
        raw = EXCLUDED.raw,
        content_hash = EXCLUDED.content_hash,
        fetched_at = EXCLUDED.fetched_at,
        updated_at = EXCLUDED.updated_at
    WHERE c.content_hash IS DISTINCT FROM EXCLUDED.content_hash
      AND c.fetched_at <= EXCLUDED.fetched_at
    RETURNING (c.xmax = 0) AS inserted
)
SELECT
    count(*) FILTER (WHERE inserted)::int AS inserted,
    count(*) FILTER (WHERE NOT inserted)::int AS updated
FROM up;

-- name: upsert_rejects
-- $1..$7: columns as arrays (already collapsed by payload_hash); $8: now; $9: times seen.
INSERT INTO rejects AS r (
    vendor, account, stream, call_key, reason, payload, payload_hash,
    first_seen_at, last_seen_at, seen_count
)
SELECT v, a, s, k, why, p, h, $8::timestamptz, $8::timestamptz, n
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[],
    $9::int[]
) AS t (v, a, s, k, why, p, h, n)
ON CONFLICT (vendor, account, payload_hash) DO UPDATE SET
    seen_count = r.seen_count + EXCLUDED.seen_count,
    last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at),
    stream = EXCLUDED.stream,
    reason = EXCLUDED.reason,
    call_key = coalesce(EXCLUDED.call_key, r.call_key);

-- name: advance_state
-- $1 stream, $2 inserted, $3 updated, $4 advance_to (NULL: keep), $5 cursor, $6 set cursor?,
-- $7 now. The watermark never moves backwards.
UPDATE sync_state SET
    rows_inserted = rows_inserted + $2::bigint,
    rows_updated = rows_updated + $3::bigint,
    watermark = GREATEST(watermark, $4::timestamptz),
    cursor = CASE WHEN $6::boolean THEN $5::jsonb ELSE cursor END,
    updated_at = $7::timestamptz
WHERE stream = $1::text
RETURNING stream;

-- name: ensure_stream
INSERT INTO sync_state (stream, vendor, account, kind)
VALUES ($1, $2, $3, $4)
ON CONFLICT (stream) DO UPDATE SET
    vendor = EXCLUDED.vendor,
    account = EXCLUDED.account,
    kind = EXCLUDED.kind
RETURNING *;

-- name: load_state
SELECT * FROM sync_state WHERE stream = $1;

-- name: all_states
SELECT * FROM sync_state ORDER BY stream;

-- name: record_cycle
-- $3 NULL: a successful cycle; else its error (last_error is kept after later successes).
UPDATE sync_state SET
    cycles = cycles + 1,
    last_success_at = CASE WHEN $3::text IS NULL THEN $2::timestamptz ELSE last_success_at END,
    last_error = coalesce($3::text, last_error),
    last_error_at = CASE WHEN $3::text IS NULL THEN last_error_at ELSE $2::timestamptz END,
    updated_at = $2::timestamptz
WHERE stream = $1::text
RETURNING stream;

-- name: call_count
SELECT count(*)
FROM calls
WHERE ($1::text IS NULL OR vendor = $1::text)
  AND ($2::text IS NULL OR account = $2::text);

-- name: try_stream_lock
-- Two int4 keys (schema, stream): separate from the migration lock's bigint key space.
SELECT pg_try_advisory_lock(hashtext($1::text), hashtext($2::text));

-- name: stream_unlock
SELECT pg_advisory_unlock(hashtext($1::text), hashtext($2::text));

-- name: call_hashes
SELECT call_key, content_hash FROM calls WHERE vendor = $1 AND account = $2;

-- name: reject_count
SELECT count(*)
FROM rejects
WHERE ($1::text IS NULL OR vendor = $1::text)
  AND ($2::text IS NULL OR account = $2::text);

-- name: record_windows
-- $1 stream, $2 starts, $3 ends, $4 vendor counts (arrays, one entry a window), $5 now.
INSERT INTO sync_windows (stream, window_start, window_end, vendor_count, read_at, checked_at)
SELECT $1, s, e, c, $5, $5
FROM unnest($2::timestamptz[], $3::timestamptz[], $4::int[]) AS t (s, e, c)
ON CONFLICT (stream, window_start, window_end) DO UPDATE SET
    vendor_count = EXCLUDED.vendor_count,
    read_at = EXCLUDED.read_at,
    checked_at = EXCLUDED.checked_at;

-- name: windows_due
-- $1 stream, $2 oldest start, $3 latest end, $4 checked before, $5 how many.
-- Newest first: late calls surface mostly in recent windows. A window checked now is not due
-- again for an interval, so older windows get their turn (the per-cycle budget is sized for it).
SELECT window_start, window_end, vendor_count
FROM sync_windows
WHERE stream = $1 AND window_start >= $2 AND window_end <= $3 AND checked_at < $4
ORDER BY window_start DESC
LIMIT $5;

-- name: window_checked
UPDATE sync_windows SET checked_at = $4 WHERE stream = $1 AND window_start = $2 AND window_end = $3;

-- name: forget_windows
-- Windows that fell out of the audit horizon are not checked again.
DELETE FROM sync_windows WHERE stream = $1 AND window_end < $2;

-- name: rows_since
-- Calls first stored since $1, per vendor and account (for `cdrsync status`: rows today).
SELECT vendor, account, count(*)::bigint AS rows
FROM calls
WHERE first_seen_at >= $1
GROUP BY vendor, account;
