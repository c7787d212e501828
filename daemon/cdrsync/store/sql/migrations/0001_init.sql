-- cdrsync schema, version 1: calls, sync_state, rejects and the analyst views.
-- Names are unqualified: the migration runner sets search_path to the configured schema.

CREATE TABLE calls (
    vendor          text        NOT NULL,
    account         text        NOT NULL,
    call_key        text        NOT NULL,
    call_id         text,
    call_uuid       text,
    direction       text,
    status          text,
    started_at      timestamptz,
    answered_at     timestamptz,
    ended_at        timestamptz,
    duration_s      integer,
    talk_s          integer,
    ring_s          integer,
    agent_name      text,
    agent_number    text,
    customer_number text,
    line_number     text,
    department      text,
    hangup_cause    text,
    recording_url   text,
    service         text,
    description     text,
    local_date      date,
    raw             jsonb       NOT NULL,
    content_hash    bytea       NOT NULL,
    fetched_at      timestamptz NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vendor, account, call_key)
);

CREATE INDEX calls_started_at_idx ON calls (started_at);
CREATE INDEX calls_account_started_at_idx ON calls (account, started_at);
CREATE INDEX calls_local_date_idx ON calls (local_date);

COMMENT ON TABLE calls IS
    'One row per call of every vendor (Acefone, Ozonetel CloudAgent, VCC Live), normalized: '
    'times in UTC, durations in seconds, the vendor''s own record beside it in raw. '
    'A call appears once per (vendor, account, call_key); a re-fetched changed record updates '
    'its row in place, an unchanged one writes nothing.';
COMMENT ON COLUMN calls.vendor IS
    'Telephony vendor: acefone, ozonetel or vcclive.';
COMMENT ON COLUMN calls.account IS
    'The vendor account name as configured in cdrsync (one company may have several).';
COMMENT ON COLUMN calls.call_key IS
    'The vendor''s unique id of the call: Acefone "id", Ozonetel "UCID" '
    '("monitorUCID" in callbacks), VCC Live "uuid". Unique within (vendor, account).';
COMMENT ON COLUMN calls.call_id IS
    'The vendor''s secondary call id where it has one (Acefone "call_id"); may repeat.';
COMMENT ON COLUMN calls.call_uuid IS
    'The vendor''s call UUID where it differs from call_key (Acefone "uuid").';
COMMENT ON COLUMN calls.direction IS
    'inbound or outbound (other vendor values, e.g. Acefone clicktocall, kept as given).';
COMMENT ON COLUMN calls.status IS
    'Outcome of the call: answered or missed (other vendor outcomes kept in lower case, '
    'e.g. failed); the vendor''s finer detail stays in raw.';
COMMENT ON COLUMN calls.started_at IS
    'When the call started, in UTC.';
COMMENT ON COLUMN calls.answered_at IS
    'When the call was answered, in UTC; NULL when it was not answered or the vendor does '
    'not say.';
COMMENT ON COLUMN calls.ended_at IS
    'When the call ended, in UTC.';
COMMENT ON COLUMN calls.duration_s IS
    'Whole call length in seconds, ringing included.';
COMMENT ON COLUMN calls.talk_s IS
    'Conversation time in seconds (0 for a missed call).';
COMMENT ON COLUMN calls.ring_s IS
    'Seconds from start until answer (or until hang-up for a missed call).';
COMMENT ON COLUMN calls.agent_name IS
    'Name of the agent who handled (or last missed) the call; NULL when no agent was involved.';
COMMENT ON COLUMN calls.agent_number IS
    'Phone number or extension of that agent.';
COMMENT ON COLUMN calls.customer_number IS
    'The customer''s phone number (caller for inbound, callee for outbound calls).';
COMMENT ON COLUMN calls.line_number IS
    'The company number (DID / virtual number) the call came in on or went out from.';
COMMENT ON COLUMN calls.department IS
    'Department, skill, campaign or project the call belongs to, as the vendor names it.';
COMMENT ON COLUMN calls.hangup_cause IS
    'Why the call ended, as the vendor reports it (e.g. a SIP or Q.850 cause, HangupBy).';
COMMENT ON COLUMN calls.recording_url IS
    'Link to the call recording where one exists (may need a vendor login to open).';
COMMENT ON COLUMN calls.service IS
    'Vendor service or call type (e.g. IVR, dialer mode) as the vendor names it.';
COMMENT ON COLUMN calls.description IS
    'Free-text description of the call flow as the vendor gives it.';
COMMENT ON COLUMN calls.local_date IS
    'The date the call started on, in the account''s own time zone (e.g. IST): use it to '
    'group calls by the business day the account works in.';
COMMENT ON COLUMN calls.raw IS
    'The vendor''s record as received (JSON), with secrets such as API keys removed.';
COMMENT ON COLUMN calls.content_hash IS
    'Digest of raw; cdrsync compares it to skip re-fetched records that did not change.';
COMMENT ON COLUMN calls.fetched_at IS
    'When cdrsync fetched this version of the record from the vendor, in UTC; an older '
    'fetch never replaces a newer one.';
COMMENT ON COLUMN calls.first_seen_at IS
    'When cdrsync first stored this call, in UTC.';
COMMENT ON COLUMN calls.updated_at IS
    'When cdrsync last changed this row (the vendor changed the record), in UTC.';

CREATE TABLE sync_state (
    stream          text        PRIMARY KEY,
    vendor          text        NOT NULL,
    account         text        NOT NULL,
    kind            text        NOT NULL,
    watermark       timestamptz,
    cursor          jsonb,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    rows_inserted   bigint      NOT NULL DEFAULT 0,
    rows_updated    bigint      NOT NULL DEFAULT 0,
    cycles          bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sync_state IS
    'Progress of each cdrsync stream (one vendor account and source): how far it has read and '
    'how its last cycle went. cdrsync status reads this table.';
COMMENT ON COLUMN sync_state.stream IS
    'Stream name, e.g. acefone:main:records.';
COMMENT ON COLUMN sync_state.vendor IS
    'Telephony vendor of the stream (acefone, ozonetel, vcclive).';
COMMENT ON COLUMN sync_state.account IS
    'Vendor account name as configured in cdrsync.';
COMMENT ON COLUMN sync_state.kind IS
    'What the stream reads: window (list endpoint), lookup (per-call endpoint) or outbox.';
COMMENT ON COLUMN sync_state.watermark IS
    'UTC time up to which every call has been stored, committed with those rows; it never '
    'moves backwards. The next cycle re-reads a lookback window before it.';
COMMENT ON COLUMN sync_state.cursor IS
    'Vendor-specific resume position (JSON), committed with the watermark.';
COMMENT ON COLUMN sync_state.last_success_at IS
    'When the stream last finished a cycle without error, in UTC.';
COMMENT ON COLUMN sync_state.last_error IS
    'The error of the last failed cycle (secrets removed); kept after later successes.';
COMMENT ON COLUMN sync_state.last_error_at IS
    'When that error happened, in UTC.';
COMMENT ON COLUMN sync_state.rows_inserted IS
    'Calls this stream has inserted, since the stream was created.';
COMMENT ON COLUMN sync_state.rows_updated IS
    'Calls this stream has updated because the vendor changed them, since it was created.';
COMMENT ON COLUMN sync_state.cycles IS
    'Cycles this stream has completed (successful or not).';
COMMENT ON COLUMN sync_state.updated_at IS
    'When this row last changed, in UTC.';

CREATE TABLE rejects (
    id            bigserial   PRIMARY KEY,
    vendor        text        NOT NULL,
    account       text        NOT NULL,
    stream        text        NOT NULL,
    call_key      text,
    reason        text        NOT NULL,
    payload       text        NOT NULL,
    payload_hash  bytea       NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    integer     NOT NULL DEFAULT 1,
    UNIQUE (vendor, account, payload_hash)
);

CREATE INDEX rejects_last_seen_at_idx ON rejects (last_seen_at);

COMMENT ON TABLE rejects IS
    'Vendor records cdrsync could not normalize, with the reason. The same bad record read '
    'again is counted (seen_count), not stored twice. Fixing the parser and re-syncing '
    'the period brings such calls into calls.';
COMMENT ON COLUMN rejects.id IS
    'Row id.';
COMMENT ON COLUMN rejects.vendor IS
    'Telephony vendor the record came from.';
COMMENT ON COLUMN rejects.account IS
    'Vendor account name as configured in cdrsync.';
COMMENT ON COLUMN rejects.stream IS
    'The stream that read the record.';
COMMENT ON COLUMN rejects.call_key IS
    'The record''s call id when it could be read, else NULL.';
COMMENT ON COLUMN rejects.reason IS
    'Why the record was rejected (which field was missing or malformed).';
COMMENT ON COLUMN rejects.payload IS
    'The record as received (JSON text where it parsed), with secrets removed.';
COMMENT ON COLUMN rejects.payload_hash IS
    'SHA-256 of payload; identifies the same bad record across cycles.';
COMMENT ON COLUMN rejects.first_seen_at IS
    'When cdrsync first met this record, in UTC.';
COMMENT ON COLUMN rejects.last_seen_at IS
    'When cdrsync last met this record, in UTC.';
COMMENT ON COLUMN rejects.seen_count IS
    'How many times cdrsync has read this record.';

CREATE VIEW calls_daily AS
SELECT
    vendor,
    account,
    local_date AS day,
    count(*) AS calls,
    count(*) FILTER (WHERE status = 'answered') AS answered,
    count(*) FILTER (WHERE status = 'missed') AS missed,
    count(*) FILTER (WHERE direction = 'inbound') AS inbound,
    count(*) FILTER (WHERE direction = 'outbound') AS outbound,
    coalesce(sum(talk_s), 0) AS talk_s,
    round(avg(talk_s) FILTER (WHERE status = 'answered'), 1) AS avg_talk_s,
    round(count(*) FILTER (WHERE status = 'answered')::numeric / count(*), 4) AS answer_rate
FROM calls
GROUP BY vendor, account, local_date;

COMMENT ON VIEW calls_daily IS
    'Calls per vendor account and day, the day being the call''s start date in the account''s '
    'time zone (calls.local_date).';
COMMENT ON COLUMN calls_daily.vendor IS 'Telephony vendor.';
COMMENT ON COLUMN calls_daily.account IS 'Vendor account name.';
COMMENT ON COLUMN calls_daily.day IS 'Start date of the calls in the account''s time zone.';
COMMENT ON COLUMN calls_daily.calls IS 'Number of calls.';
COMMENT ON COLUMN calls_daily.answered IS 'Calls with status answered.';
COMMENT ON COLUMN calls_daily.missed IS 'Calls with status missed.';
COMMENT ON COLUMN calls_daily.inbound IS 'Calls with direction inbound.';
COMMENT ON COLUMN calls_daily.outbound IS 'Calls with direction outbound.';
COMMENT ON COLUMN calls_daily.talk_s IS 'Total conversation time in seconds.';
COMMENT ON COLUMN calls_daily.avg_talk_s IS
    'Average conversation time of answered calls, in seconds (NULL when none was answered).';
COMMENT ON COLUMN calls_daily.answer_rate IS 'answered / calls, between 0 and 1.';

CREATE VIEW calls_daily_utc AS
SELECT
    vendor,
    account,
    (started_at AT TIME ZONE 'UTC')::date AS day,
    count(*) AS calls,
    count(*) FILTER (WHERE status = 'answered') AS answered,
    count(*) FILTER (WHERE status = 'missed') AS missed,
    count(*) FILTER (WHERE direction = 'inbound') AS inbound,
    count(*) FILTER (WHERE direction = 'outbound') AS outbound,
    coalesce(sum(talk_s), 0) AS talk_s,
    round(avg(talk_s) FILTER (WHERE status = 'answered'), 1) AS avg_talk_s,
    round(count(*) FILTER (WHERE status = 'answered')::numeric / count(*), 4) AS answer_rate
FROM calls
GROUP BY vendor, account, (started_at AT TIME ZONE 'UTC')::date;

COMMENT ON VIEW calls_daily_utc IS
    'Calls per vendor account and UTC day of started_at: compares accounts in different time '
    'zones on one clock.';
COMMENT ON COLUMN calls_daily_utc.vendor IS 'Telephony vendor.';
COMMENT ON COLUMN calls_daily_utc.account IS 'Vendor account name.';
COMMENT ON COLUMN calls_daily_utc.day IS 'Start date of the calls in UTC.';
COMMENT ON COLUMN calls_daily_utc.calls IS 'Number of calls.';
COMMENT ON COLUMN calls_daily_utc.answered IS 'Calls with status answered.';
COMMENT ON COLUMN calls_daily_utc.missed IS 'Calls with status missed.';
COMMENT ON COLUMN calls_daily_utc.inbound IS 'Calls with direction inbound.';
COMMENT ON COLUMN calls_daily_utc.outbound IS 'Calls with direction outbound.';
COMMENT ON COLUMN calls_daily_utc.talk_s IS 'Total conversation time in seconds.';
COMMENT ON COLUMN calls_daily_utc.avg_talk_s IS
    'Average conversation time of answered calls, in seconds (NULL when none was answered).';
COMMENT ON COLUMN calls_daily_utc.answer_rate IS 'answered / calls, between 0 and 1.';

CREATE VIEW agent_daily AS
SELECT
    vendor,
    account,
    local_date AS day,
    agent_name,
    count(*) AS calls,
    count(*) FILTER (WHERE status = 'answered') AS answered,
    coalesce(sum(talk_s), 0) AS talk_s,
    round(avg(talk_s) FILTER (WHERE status = 'answered'), 1) AS avg_talk_s
FROM calls
GROUP BY vendor, account, local_date, agent_name;

COMMENT ON VIEW agent_daily IS
    'Calls and talk time per agent, vendor account and day (the account''s local date). '
    'Calls no agent touched are grouped under agent_name NULL.';
COMMENT ON COLUMN agent_daily.vendor IS 'Telephony vendor.';
COMMENT ON COLUMN agent_daily.account IS 'Vendor account name.';
COMMENT ON COLUMN agent_daily.day IS 'Start date of the calls in the account''s time zone.';
COMMENT ON COLUMN agent_daily.agent_name IS 'Agent name (NULL: no agent involved).';
COMMENT ON COLUMN agent_daily.calls IS 'Calls handled or missed by the agent.';
COMMENT ON COLUMN agent_daily.answered IS 'Calls the agent answered.';
COMMENT ON COLUMN agent_daily.talk_s IS 'Total conversation time in seconds.';
COMMENT ON COLUMN agent_daily.avg_talk_s IS
    'Average conversation time of answered calls, in seconds (NULL when none was answered).';
