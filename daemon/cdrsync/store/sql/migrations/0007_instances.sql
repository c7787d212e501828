-- cdrsync schema, version 7: the running daemons (instances) and their heartbeats, so that
-- several instances on one database share the streams out instead of one taking them all.

CREATE TABLE instances (
    id           text        PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started      timestamptz NOT NULL,
    heartbeat    timestamptz NOT NULL,
    lock_pid     integer     NOT NULL,
    lock_started timestamptz NOT NULL,
    streams      text[]      NOT NULL DEFAULT '{}',
    owned        integer     NOT NULL DEFAULT 0
);

COMMENT ON TABLE instances IS
    'Running cdrsync daemons (cdrsync run). Each refreshes its row every few seconds; a row '
    'whose heartbeat is older than daemon.instance_timeout is a dead or hung instance: another '
    'instance deletes it and ends its lock session, and its streams are shared out again.';
COMMENT ON COLUMN instances.id IS 'host:pid:start, unique per daemon process.';
COMMENT ON COLUMN instances.host IS 'The host name the daemon runs on.';
COMMENT ON COLUMN instances.pid IS 'The daemon''s process id on that host.';
COMMENT ON COLUMN instances.started IS 'When the daemon started, UTC.';
COMMENT ON COLUMN instances.heartbeat IS 'The database''s clock at the last heartbeat.';
COMMENT ON COLUMN instances.lock_pid IS
    'The backend pid of the session holding the daemon''s stream locks (pg_locks.pid).';
COMMENT ON COLUMN instances.lock_started IS
    'backend_start of that session, so a reused pid is never mistaken for it.';
COMMENT ON COLUMN instances.streams IS 'The streams the daemon runs (its configuration).';
COMMENT ON COLUMN instances.owned IS 'How many stream locks it held at the last heartbeat.';
