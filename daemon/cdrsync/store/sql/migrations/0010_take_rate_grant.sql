-- cdrsync schema, version 10: a scarce rate grant is one statement (issue 10, part 2).
-- Until now each grant was a transaction of four round trips (BEGIN, an advisory lock, the
-- check-and-insert, COMMIT): with a thousand Acefone accounts, whose 60 list requests a minute
-- count as scarce, a quarter of the daemon's statements. The function does the same under the
-- same lock, so budgets shared by several processes are still never exceeded.

CREATE FUNCTION take_rate_grant(
    grant_account text, grant_group text, grant_limit integer, window_s double precision
) RETURNS double precision
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    span constant interval := make_interval(secs => window_s);
    now_at timestamptz;
    taken integer;
    oldest timestamptz;
BEGIN
    -- One decision at a time per (account, group) across every process sharing the schema; a
    -- transaction lock in the single-bigint key space (stream locks use two int4 keys), held
    -- until the caller's transaction (the statement, in autocommit) ends, after its insert is
    -- visible to the next holder.
    PERFORM pg_advisory_xact_lock(
        hashtextextended('cdrsync.rate:' || current_schema() || ':' || grant_account || '/'
                         || grant_group, 0));
    -- Each statement below takes a new snapshot (READ COMMITTED, a volatile function), so it
    -- sees the grant the previous lock holder committed. The database's clock, which every
    -- process shares; clock_timestamp(), as now() is when the statement began, before the lock.
    now_at := clock_timestamp();
    -- Older grants of the group are forgotten on the way (an index range): about grant_limit
    -- rows stay per group.
    DELETE FROM rate_grants
    WHERE account = grant_account AND grp = grant_group AND granted_at <= now_at - span;
    SELECT count(*), min(recent.granted_at) INTO taken, oldest
    FROM (SELECT g.granted_at FROM rate_grants AS g
          WHERE g.account = grant_account AND g.grp = grant_group AND g.granted_at > now_at - span
          ORDER BY g.granted_at DESC LIMIT grant_limit) AS recent;
    IF taken < grant_limit THEN
        INSERT INTO rate_grants (account, grp, granted_at) VALUES (grant_account, grant_group, now_at);
        RETURN 0.0;
    END IF;
    -- The budget is spent: the seconds until the oldest of the last grant_limit grants leaves
    -- the window.
    RETURN greatest(0.0, extract(epoch FROM oldest + span - now_at))::double precision;
END
$$;
COMMENT ON FUNCTION take_rate_grant(text, text, integer, double precision) IS
    'Takes one request grant of an account''s rate-limit group for every cdrsync process '
    'sharing this schema: 0 when fewer than grant_limit grants fall in the last window_s '
    'seconds (one is recorded in rate_grants), else the seconds to wait before asking again.';
