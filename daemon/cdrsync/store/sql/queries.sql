-- Named queries of cdrsync.store.store. Each starts at a "-- name: <name>" line and runs with
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
-- Sources rank list > lookup > push (source_rank). Each column takes the value of the best
-- copy that has one, and no copy erases a value (merge_value): a push or a lookup has
-- another shape than the list record, and fields only one of them carries must survive the
-- other (VCC Live's agent name and disposition are in its webhook only, Ozonetel's
-- AgentPhoneNumber is not in its bulk records). agent_name is the exception: a push's name
-- comes first, because VCC Live's CDR names the agent by user id only.
-- raw holds the best copy's record, raw_other every other source's. A row changes only when
-- a copy brings something new: a higher source; the same source with other content and not
-- older than the stored copy; a lower source with another record than the one kept for it,
-- not older than that one. An unchanged re-read writes nothing, whatever its key order.
WITH up AS (
    INSERT INTO calls AS c (
        vendor, account, call_key, call_id, call_uuid, direction, status,
        started_at, answered_at, ended_at, duration_s, talk_s, ring_s,
        agent_name, agent_number, customer_number, line_number, department,
        hangup_cause, recording_url, service, description, local_date,
        raw, content_hash, fetched_at, source, first_seen_at, updated_at
    )
    SELECT
        vendor, account, call_key, call_id, call_uuid, direction, status,
        started_at, answered_at, ended_at, duration_s, talk_s, ring_s,
        agent_name, agent_number, customer_number, line_number, department,
        hangup_cause, recording_url, service, description, local_date,
        raw, content_hash, fetched_at, source, $1::timestamptz, $1::timestamptz
    FROM cdrsync_calls_in
    -- Rows are locked in key order, so two batches sharing keys (a webhook and a list
    -- stream of one account) wait for each other instead of deadlocking.
    ORDER BY vendor, account, call_key
    ON CONFLICT (vendor, account, call_key) DO UPDATE SET
        call_id = merge_value(EXCLUDED.source, c.source, EXCLUDED.call_id, c.call_id),
        call_uuid = merge_value(EXCLUDED.source, c.source, EXCLUDED.call_uuid, c.call_uuid),
        direction = merge_value(EXCLUDED.source, c.source, EXCLUDED.direction, c.direction),
        status = merge_value(EXCLUDED.source, c.source, EXCLUDED.status, c.status),
        started_at = merge_value(EXCLUDED.source, c.source, EXCLUDED.started_at, c.started_at),
        answered_at = merge_value(EXCLUDED.source, c.source, EXCLUDED.answered_at, c.answered_at),
        ended_at = merge_value(EXCLUDED.source, c.source, EXCLUDED.ended_at, c.ended_at),
        duration_s = merge_value(EXCLUDED.source, c.source, EXCLUDED.duration_s, c.duration_s),
        talk_s = merge_value(EXCLUDED.source, c.source, EXCLUDED.talk_s, c.talk_s),
        ring_s = merge_value(EXCLUDED.source, c.source, EXCLUDED.ring_s, c.ring_s),
        agent_number = merge_value(
            EXCLUDED.source, c.source, EXCLUDED.agent_number, c.agent_number),
        customer_number = merge_value(
            EXCLUDED.source, c.source, EXCLUDED.customer_number, c.customer_number),
        line_number = merge_value(EXCLUDED.source, c.source, EXCLUDED.line_number, c.line_number),
        department = merge_value(EXCLUDED.source, c.source, EXCLUDED.department, c.department),
        hangup_cause = merge_value(
            EXCLUDED.source, c.source, EXCLUDED.hangup_cause, c.hangup_cause),
        recording_url = merge_value(
            EXCLUDED.source, c.source, EXCLUDED.recording_url, c.recording_url),
        service = merge_value(EXCLUDED.source, c.source, EXCLUDED.service, c.service),
        description = merge_value(EXCLUDED.source, c.source, EXCLUDED.description, c.description),
        local_date = merge_value(EXCLUDED.source, c.source, EXCLUDED.local_date, c.local_date),
        agent_name = CASE
            WHEN EXCLUDED.source = 'push' THEN coalesce(EXCLUDED.agent_name, c.agent_name)
            WHEN c.source = 'push' OR c.raw_other ? 'push'
                THEN coalesce(c.agent_name, EXCLUDED.agent_name)
            ELSE coalesce(EXCLUDED.agent_name, c.agent_name)
        END,
        raw = CASE WHEN source_rank(EXCLUDED.source) >= source_rank(c.source)
                   THEN EXCLUDED.raw ELSE c.raw END,
        content_hash = CASE WHEN source_rank(EXCLUDED.source) >= source_rank(c.source)
                            THEN EXCLUDED.content_hash ELSE c.content_hash END,
        fetched_at = CASE WHEN source_rank(EXCLUDED.source) >= source_rank(c.source)
                          THEN EXCLUDED.fetched_at ELSE c.fetched_at END,
        source = CASE WHEN source_rank(EXCLUDED.source) >= source_rank(c.source)
                      THEN EXCLUDED.source ELSE c.source END,
        -- A higher copy moves the stored best one into raw_other; a lower one lands there.
        raw_other = CASE
            WHEN EXCLUDED.source = c.source THEN c.raw_other
            WHEN source_rank(EXCLUDED.source) > source_rank(c.source)
                THEN c.raw_other || jsonb_build_object(c.source, c.raw)
            ELSE c.raw_other || jsonb_build_object(EXCLUDED.source, EXCLUDED.raw)
        END,
        fetched_other = CASE
            WHEN EXCLUDED.source = c.source THEN c.fetched_other
            WHEN source_rank(EXCLUDED.source) > source_rank(c.source)
                THEN c.fetched_other || jsonb_build_object(c.source, c.fetched_at)
            ELSE c.fetched_other || jsonb_build_object(EXCLUDED.source, EXCLUDED.fetched_at)
        END,
        updated_at = EXCLUDED.updated_at
    WHERE source_rank(EXCLUDED.source) > source_rank(c.source)
    OR (
        EXCLUDED.source = c.source
        AND c.content_hash IS DISTINCT FROM EXCLUDED.content_hash
        -- The hash is of the vendor's bytes (Acefone), or of sorted-key JSON (older versions):
        -- the same record with its keys reordered, or hashed the older way, is equal as jsonb.
        AND c.raw IS DISTINCT FROM EXCLUDED.raw
        AND c.fetched_at <= EXCLUDED.fetched_at
    ) OR (
        source_rank(EXCLUDED.source) < source_rank(c.source)
        AND c.raw_other -> EXCLUDED.source IS DISTINCT FROM EXCLUDED.raw
        AND coalesce((c.fetched_other ->> EXCLUDED.source)::timestamptz, '-infinity')
            <= EXCLUDED.fetched_at
    )
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

-- name: advance_window_state
-- The end of a window stream's batch, in one statement: advance_state ($1..$7), and the
-- windows read completely recorded with the vendor's count for the audit ($8 starts, $9 ends,
-- $10 counts: arrays, one entry a window, empty for none; read and checked at $7).
WITH advanced AS (
    UPDATE sync_state SET
        rows_inserted = rows_inserted + $2::bigint,
        rows_updated = rows_updated + $3::bigint,
        watermark = GREATEST(watermark, $4::timestamptz),
        cursor = CASE WHEN $6::boolean THEN $5::jsonb ELSE cursor END,
        updated_at = $7::timestamptz
    WHERE stream = $1::text
    RETURNING stream
),
recorded AS (
    INSERT INTO sync_windows AS w (
        stream, window_start, window_end, vendor_count, read_at, checked_at
    )
    SELECT a.stream, s, e, LEAST(c, 2147483647)::int, $7::timestamptz, $7::timestamptz
    FROM advanced AS a,
         unnest($8::timestamptz[], $9::timestamptz[], $10::bigint[]) AS t (s, e, c)
    ON CONFLICT (stream, window_start, window_end) DO UPDATE SET
        vendor_count = EXCLUDED.vendor_count,
        read_at = EXCLUDED.read_at,
        checked_at = EXCLUDED.checked_at
)
SELECT stream FROM advanced;

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
RETURNING *;

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

-- name: list_hashes
-- The content hashes of one account's list copies that started in [$3, $4): a re-read skips
-- every record whose bytes hash to one of them. Copies from a push or a lookup are left out:
-- a list record must still be merged into those. $5: at most this many (NULL: all).
SELECT content_hash FROM calls
WHERE vendor = $1 AND account = $2 AND source = 'list' AND started_at >= $3 AND started_at < $4
LIMIT $5::bigint;

-- name: reject_count
SELECT count(*)
FROM rejects
WHERE ($1::text IS NULL OR vendor = $1::text)
  AND ($2::text IS NULL OR account = $2::text);

-- name: reject_counts
-- Distinct rejected records per vendor/account (metrics: a reject seen again is not new).
SELECT vendor, account, count(*)::bigint AS rows FROM rejects GROUP BY vendor, account;

-- name: windows_due
-- $1 stream, $2 oldest start, $3 latest end, $4 checked before, $5 how many.
-- Windows that fell out of the audit horizon (ending before $2) are forgotten on the way.
-- Newest first: late calls surface mostly in recent windows. A window checked now is not due
-- again for an interval, so older windows get their turn (the per-cycle budget is sized for it).
-- One row with NULL window columns when none is due. least_checked: the oldest check of the
-- windows that can still come due (the stream skips the query until one can be due); a window
-- straddling $2 never can ($2 only moves forward), and counted it would keep the query running
-- on every cycle of a live stream, whose horizon start falls inside a window.
WITH forgotten AS (
    DELETE FROM sync_windows WHERE stream = $1 AND window_end < $2
),
kept AS (
    SELECT window_start, window_end, vendor_count, checked_at
    FROM sync_windows WHERE stream = $1 AND window_end >= $2
),
due AS (
    SELECT window_start, window_end, vendor_count FROM kept
    WHERE window_start >= $2 AND window_end <= $3 AND checked_at < $4
    ORDER BY window_start DESC
    LIMIT $5
)
SELECT due.window_start, due.window_end, due.vendor_count,
       (SELECT min(checked_at) FROM kept WHERE window_start >= $2) AS least_checked
FROM (SELECT) AS one LEFT JOIN due ON true
ORDER BY due.window_start DESC;

-- name: window_checked
UPDATE sync_windows SET checked_at = $4 WHERE stream = $1 AND window_start = $2 AND window_end = $3;

-- name: rows_since
-- Calls first stored since $1, per vendor and account (for `cdrsync status`: rows today).
SELECT vendor, account, count(*)::bigint AS rows
FROM calls
WHERE first_seen_at >= $1
GROUP BY vendor, account;

-- name: enqueue_lookups
-- $1 vendor, $2 account, $3 kinds, $4 call keys, $5 contexts (json text), $6 not_before, $7 now.
-- A lookup already queued keeps its attempts; a pending one becomes due at the earlier time.
-- A finished one stays finished: its call was confirmed (or given up) already.
INSERT INTO lookups AS l (
    vendor, account, kind, call_key, context, next_attempt_at, created_at, updated_at
)
SELECT $1, $2, k, ck, ctx::jsonb, nb, $7, $7
FROM unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS t (k, ck, ctx, nb)
ORDER BY k, ck
ON CONFLICT (vendor, account, kind, call_key) DO UPDATE SET
    context = l.context || EXCLUDED.context,
    next_attempt_at = LEAST(l.next_attempt_at, EXCLUDED.next_attempt_at),
    updated_at = EXCLUDED.updated_at
WHERE l.state = 'pending';

-- name: due_lookups
-- $1 vendor, $2 account, $3 kinds, $4 now, $5 how many. Oldest due first.
SELECT id, vendor, account, kind, call_key, context, attempts, created_at, next_attempt_at
FROM lookups
WHERE vendor = $1 AND account = $2 AND kind = ANY($3::text[]) AND state = 'pending'
  AND next_attempt_at <= $4
ORDER BY next_attempt_at, id
LIMIT $5
FOR UPDATE SKIP LOCKED;

-- name: next_lookup_due
SELECT min(next_attempt_at)
FROM lookups
WHERE vendor = $1 AND account = $2 AND kind = ANY($3::text[]) AND state = 'pending';

-- name: finish_lookup
-- $1 id, $2 state, $3 counted (attempts + 1), $4 next attempt, $5 note, $6 now.
UPDATE lookups SET
    state = $2,
    attempts = attempts + CASE WHEN $3::boolean THEN 1 ELSE 0 END,
    next_attempt_at = coalesce($4::timestamptz, next_attempt_at),
    last_error = $5,
    updated_at = $6,
    finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $6::timestamptz END
WHERE id = $1;

-- name: lookups_confirmed_by_list
-- Pending lookups whose call the list stream has stored since: nothing left to confirm.
UPDATE lookups l SET state = 'done', last_error = 'confirmed by the list poller',
    updated_at = $3, finished_at = $3
FROM calls c
WHERE l.vendor = $1 AND l.account = $2 AND l.state = 'pending' AND l.kind = ANY($4::text[])
  AND c.vendor = l.vendor AND c.account = l.account AND c.call_key = l.call_key
  AND c.source = 'list';

-- name: queue_depths
-- Pending lookups and outbox rows per vendor/account (status and metrics).
SELECT vendor, account, 'lookups' AS queue, state, count(*)::bigint AS rows
FROM lookups GROUP BY vendor, account, state
UNION ALL
SELECT 'vcclive', account, 'outbox', state, count(*)::bigint
FROM vcclive_outbox GROUP BY account, state;

-- name: delete_events
DELETE FROM call_events
WHERE vendor = $1 AND account = $2
  AND (projectid, numberid) IN (SELECT * FROM unnest($3::bigint[], $4::bigint[]));

-- name: insert_events
INSERT INTO call_events (
    vendor, account, projectid, numberid, seq, call_uuid, type, dispositionid, state, userid,
    description, created_at, raw, fetched_at
)
SELECT $1, $2, p, n, s, u, t, d, st, us, de, ca, r::jsonb, $13
FROM unnest(
    $3::bigint[], $4::bigint[], $5::int[], $6::text[], $7::text[], $8::bigint[], $9::text[],
    $10::bigint[], $11::text[], $12::timestamptz[], $14::text[]
) AS x (p, n, s, u, t, d, st, us, de, ca, r);

-- name: outbox_recover
-- $1 account, $2 now, $3 sent before (NULL: any). At start and after a failed cycle: rows left
-- "sending" by a process that died mid-request (or a write-back that failed). Their answer is
-- lost, so they may or may not be in VCC Live: "unknown" until checked, never sent blindly
-- again. Rows sent after $3 may still be in flight in another instance: left alone.
UPDATE vcclive_outbox SET state = 'unknown', updated_at = $2,
    error = 'cdrsync stopped while this row was being sent; checking VCC Live before resending'
WHERE account = $1 AND state = 'sending' AND ($3::timestamptz IS NULL OR sent_at < $3)
RETURNING id;

-- name: outbox_sending
SELECT count(*) FROM vcclive_outbox WHERE account = $1 AND state = 'sending';

-- name: outbox_claim
-- $1 account, $2 now, $3 batch size, $4 batch id. The oldest due row's project, up to $3 rows
-- of it (one request per project), marked sending in the same statement.
WITH head AS (
    SELECT projectid FROM vcclive_outbox
    WHERE account = $1 AND state = 'pending' AND next_attempt_at <= $2
    ORDER BY id LIMIT 1
), picked AS (
    SELECT o.id FROM vcclive_outbox o, head
    WHERE o.account = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2
      AND o.projectid = head.projectid
    ORDER BY o.id LIMIT $3
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE vcclive_outbox o SET state = 'sending', attempts = attempts + 1, sent_at = $2,
    updated_at = $2, batch = $4
FROM picked WHERE o.id = picked.id
RETURNING o.id, o.projectid, o.payload, o.attempts;

-- name: outbox_delivered
UPDATE vcclive_outbox o SET state = 'delivered', numberid = t.n, error = NULL,
    delivered_at = $3, updated_at = $3
FROM unnest($1::bigint[], $2::bigint[]) AS t (i, n)
WHERE o.id = t.i;

-- name: outbox_set_state
-- $1 ids, $2 state, $3 error, $4 next attempt (NULL: keep), $5 now.
UPDATE vcclive_outbox SET state = $2, error = $3,
    next_attempt_at = coalesce($4::timestamptz, next_attempt_at), updated_at = $5
WHERE id = ANY($1::bigint[]);

-- name: outbox_unknown
SELECT id, projectid, payload, attempts, sent_at, updated_at FROM vcclive_outbox
WHERE account = $1 AND state = 'unknown' ORDER BY id LIMIT $2;

-- name: outbox_probe_bounds
-- $1 account, $2 projectid, $3 when the earliest row in doubt was sent, $4 the latest.
-- Where the records of rows in doubt can lie: after the highest numberid delivered by a batch
-- sent before them, below the lowest one delivered by a batch sent after them (NULL: none
-- yet), except the numberids other rows own already (never claimed twice).
WITH d AS (
    SELECT numberid, sent_at FROM vcclive_outbox
    WHERE account = $1 AND projectid = $2 AND state = 'delivered' AND numberid IS NOT NULL
), b AS (
    SELECT coalesce((SELECT max(numberid) FROM d WHERE sent_at < $3), 0) AS after,
           (SELECT min(numberid) FROM d WHERE sent_at > $4) AS until
)
SELECT b.after, b.until,
    array(SELECT numberid FROM d
          WHERE numberid > b.after AND (b.until IS NULL OR numberid < b.until)) AS taken
FROM b;

-- name: next_outbox_due
SELECT min(next_attempt_at) FROM vcclive_outbox WHERE account = $1 AND state = 'pending';

-- name: request_backfill
-- The same range asked again (a backfill "up to now" run again later) reaches further: the
-- request is extended, and reopened if it had finished short of the new end.
INSERT INTO backfills AS b (stream, account, start_at, until_at, requested_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (stream) DO UPDATE SET
    until_at = GREATEST(b.until_at, EXCLUDED.until_at),
    finished_at = CASE WHEN EXCLUDED.until_at > b.until_at THEN NULL ELSE b.finished_at END,
    requested_at = CASE WHEN EXCLUDED.until_at > b.until_at THEN EXCLUDED.requested_at
                        ELSE b.requested_at END;

-- name: open_backfills
SELECT stream, account, start_at, until_at FROM backfills
WHERE finished_at IS NULL AND account = ANY($1::text[])
ORDER BY requested_at;

-- name: backfill_finished
-- $3: the end the daemon's stream ran to; a request extended meanwhile stays open.
UPDATE backfills SET finished_at = $2
WHERE stream = $1 AND finished_at IS NULL AND until_at <= $3;

-- name: backfill_done
SELECT finished_at IS NOT NULL AND until_at >= $2 FROM backfills WHERE stream = $1;

-- name: outbox_add
INSERT INTO vcclive_outbox (account, projectid, payload)
SELECT $1, $2, p::jsonb FROM unnest($3::text[]) WITH ORDINALITY AS t (p, n) ORDER BY n
RETURNING id;

-- name: outbox_rows
SELECT id, projectid, state, attempts, numberid, payload, error FROM vcclive_outbox
WHERE account = $1 ORDER BY id;

-- name: take_grant
-- One statement (migration 0010): the sliding-window check and the grant under the group's
-- advisory lock; answers 0 (granted) or the seconds to wait.
SELECT take_rate_grant($1::text, $2::text, $3::int, $4::float8);

-- name: grant_ages
-- Seconds since each grant of the last $3 seconds, on the database's clock, oldest first.
SELECT extract(epoch FROM clock_timestamp() - granted_at)::float8 AS age FROM rate_grants
WHERE account = $1 AND grp = $2
  AND granted_at > clock_timestamp() - make_interval(secs => $3::float8)
ORDER BY granted_at;

-- name: prune_grants
DELETE FROM rate_grants WHERE granted_at < $1;

-- name: instance_beat
-- An instance's heartbeat, on its lock session (whose backend the others may end if it hangs).
INSERT INTO instances AS i (id, host, pid, started, heartbeat, lock_pid, lock_started, streams,
                            owned)
SELECT $1, $2, $3, $4, now(), pg_backend_pid(), a.backend_start, $5, $6
FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()
ON CONFLICT (id) DO UPDATE SET
    heartbeat = now(), lock_pid = EXCLUDED.lock_pid, lock_started = EXCLUDED.lock_started,
    streams = EXCLUDED.streams, owned = EXCLUDED.owned;

-- name: instances
-- Every registered instance, its heartbeat's age on the database's clock, and whether its lock
-- session is still connected (a killed process's session ends with its socket).
SELECT i.id, i.host, i.pid, i.started, i.streams, i.owned, i.heartbeat, now() AS now,
       EXISTS (SELECT 1 FROM pg_stat_activity a
               WHERE a.pid = i.lock_pid
                 -- NULL: another role's session, details hidden without pg_read_all_stats.
                 AND (a.backend_start IS NULL OR a.backend_start = i.lock_started)) AS connected
FROM instances i
ORDER BY i.id;

-- name: instance_reap
-- Delete one stale instance (only one of the instances that notice it wins the row) and end
-- its lock session if it is still that one, so its advisory locks are freed.
WITH gone AS (
    DELETE FROM instances
    WHERE id = $1 AND heartbeat < now() - make_interval(secs => $2)
    RETURNING lock_pid, lock_started
)
SELECT coalesce(bool_or(pg_terminate_backend(a.pid)), false) AS ended,
       (SELECT count(*) FROM gone) AS deleted
FROM gone JOIN pg_stat_activity a ON a.pid = gone.lock_pid AND a.backend_start = gone.lock_started;

-- name: instance_leave
DELETE FROM instances WHERE id = $1;

-- name: stream_holders
-- Which backend holds each stream lock (the two-key advisory locks of try_stream_lock), and the
-- instance of that session if it is a registered daemon.
SELECT s.stream, i.id, i.host, i.pid, i.started
FROM sync_state s
JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.classid = hashtext($1::text)::oid AND l.objid = hashtext(s.stream)::oid
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LEFT JOIN instances i ON i.lock_pid = l.pid
ORDER BY s.stream;
