-- cdrsync schema, version 5: recent grants of the scarce rate limits, so that a restarted
-- process knows what the one before it already spent in the vendor's current window.

CREATE TABLE rate_grants (
    account    text        NOT NULL,
    grp        text        NOT NULL,
    granted_at timestamptz NOT NULL
);
CREATE INDEX rate_grants_idx ON rate_grants (account, grp, granted_at);

COMMENT ON TABLE rate_grants IS
    'Requests recently sent under a scarce rate limit (at most one a second on average, e.g. '
    'Ozonetel''s 2 bulk reports a minute): a restarted cdrsync counts them before sending more. '
    'Internal bookkeeping; rows older than a day are deleted.';
COMMENT ON COLUMN rate_grants.account IS 'The cdrsync account.';
COMMENT ON COLUMN rate_grants.grp IS 'The rate-limit group (bulk, list, lookup, token, ...).';
COMMENT ON COLUMN rate_grants.granted_at IS 'When the request was let through, UTC.';
