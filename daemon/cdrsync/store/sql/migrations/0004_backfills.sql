-- cdrsync schema, version 4: backfills handed to a running daemon, so that they share the
-- account's rate budget (one process, one set of limiters) instead of doubling it.

CREATE TABLE backfills (
    stream       text        PRIMARY KEY REFERENCES sync_state (stream) ON DELETE CASCADE,
    account      text        NOT NULL,
    start_at     timestamptz NOT NULL,
    until_at     timestamptz NOT NULL,
    requested_at timestamptz NOT NULL,
    finished_at  timestamptz
);

COMMENT ON TABLE backfills IS
    'Bounded syncs asked for with `cdrsync backfill` while a daemon owned the account: the '
    'daemon runs them with the rate budget it already holds, live data first.';
COMMENT ON COLUMN backfills.stream IS 'The backfill''s stream (sync_state.stream).';
COMMENT ON COLUMN backfills.account IS 'The account to backfill.';
COMMENT ON COLUMN backfills.start_at IS 'Calls that started from this instant (UTC) ...';
COMMENT ON COLUMN backfills.until_at IS '... up to this instant (UTC, exclusive).';
COMMENT ON COLUMN backfills.requested_at IS 'When it was asked for.';
COMMENT ON COLUMN backfills.finished_at IS 'When the range was complete (NULL: still running).';
