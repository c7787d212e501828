-- cdrsync schema, version 3: where a call's copy came from, the per-call lookup queue, VCC Live
-- record events, and the VCC Live outbox.

ALTER TABLE calls ADD COLUMN source text NOT NULL DEFAULT 'list'
    CHECK (source IN ('list', 'lookup', 'push'));
COMMENT ON COLUMN calls.source IS
    'Where the stored copy came from: list (the vendor''s bulk list, the source of truth), '
    'lookup (a per-call endpoint) or push (a webhook, visible seconds after the call). A copy '
    'from a lower source never replaces one from a higher: list > lookup > push.';

CREATE TABLE lookups (
    id              bigserial   PRIMARY KEY,
    vendor          text        NOT NULL,
    account         text        NOT NULL,
    kind            text        NOT NULL,
    call_key        text        NOT NULL,
    context         jsonb       NOT NULL DEFAULT '{}',
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'done', 'gave_up')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    UNIQUE (vendor, account, kind, call_key)
);
CREATE INDEX lookups_due_idx ON lookups (vendor, account, next_attempt_at)
    WHERE state = 'pending';

COMMENT ON TABLE lookups IS
    'Durable queue of per-call vendor requests (Ozonetel CDR in CallBacks, VCC Live CDR by uuid '
    'and record detail), fed by webhooks. cdrsync works through it within the vendor''s rate '
    'limit and the vendor''s schedule rules.';
COMMENT ON COLUMN lookups.id IS 'Queue position (increasing).';
COMMENT ON COLUMN lookups.vendor IS 'Telephony vendor: ozonetel or vcclive.';
COMMENT ON COLUMN lookups.account IS 'The cdrsync account name.';
COMMENT ON COLUMN lookups.kind IS
    'What is fetched: ozonetel.cdr (by UCID), vcclive.cdr (by uuid), vcclive.record '
    '(record detail by projectid/numberid, once per call of the record).';
COMMENT ON COLUMN lookups.call_key IS
    'The id looked up (UCID, uuid, or projectid/numberid/uuid of the call that queued it).';
COMMENT ON COLUMN lookups.context IS 'What the request needs besides the id (e.g. the call date).';
COMMENT ON COLUMN lookups.state IS
    'pending (waiting for next_attempt_at), done, or gave_up (last_error says why).';
COMMENT ON COLUMN lookups.attempts IS 'Requests sent so far (waits that sent nothing not counted).';
COMMENT ON COLUMN lookups.next_attempt_at IS 'When the next attempt is due, UTC.';
COMMENT ON COLUMN lookups.last_error IS 'Why it is waiting or gave up, in words.';
COMMENT ON COLUMN lookups.created_at IS 'When the lookup was first queued (the push arrived), UTC.';
COMMENT ON COLUMN lookups.updated_at IS 'When the row last changed, UTC.';
COMMENT ON COLUMN lookups.finished_at IS 'When it became done or gave_up, UTC.';

CREATE TABLE call_events (
    vendor        text        NOT NULL,
    account       text        NOT NULL,
    projectid     bigint      NOT NULL,
    numberid      bigint      NOT NULL,
    seq           integer     NOT NULL,
    call_uuid     text,
    type          text,
    dispositionid bigint,
    state         text,
    userid        bigint,
    description   text,
    created_at    timestamptz,
    raw           jsonb       NOT NULL,
    fetched_at    timestamptz NOT NULL,
    PRIMARY KEY (vendor, account, projectid, numberid, seq)
);
CREATE INDEX call_events_call_idx ON call_events (vendor, account, call_uuid);

COMMENT ON TABLE call_events IS
    'Events (dispositions, recycles, user changes) of a VCC Live record, from the record detail '
    'endpoint, fetched for records that got a disposition webhook. Join to calls on '
    'call_events.call_uuid = calls.call_key (vendor vcclive, same account).';
COMMENT ON COLUMN call_events.vendor IS 'Telephony vendor (vcclive).';
COMMENT ON COLUMN call_events.account IS 'The cdrsync account name.';
COMMENT ON COLUMN call_events.projectid IS 'VCC Live project of the record.';
COMMENT ON COLUMN call_events.numberid IS 'VCC Live record id (calls.call_id holds it as text).';
COMMENT ON COLUMN call_events.seq IS 'Position of the event in the vendor''s list, from 0.';
COMMENT ON COLUMN call_events.call_uuid IS 'The call the event was set on (calls.call_key).';
COMMENT ON COLUMN call_events.type IS 'disposition, recycle or user_change.';
COMMENT ON COLUMN call_events.dispositionid IS 'The disposition set (VCC Live id).';
COMMENT ON COLUMN call_events.state IS 'The agent''s state when it was set, e.g. CALL, AFTERWORK.';
COMMENT ON COLUMN call_events.userid IS 'Who set it: -2 supervisor, -1 system, else the agent.';
COMMENT ON COLUMN call_events.description IS 'Comment on the disposition.';
COMMENT ON COLUMN call_events.created_at IS 'When the event was created, UTC.';
COMMENT ON COLUMN call_events.raw IS 'The vendor''s event object as received.';
COMMENT ON COLUMN call_events.fetched_at IS 'When cdrsync fetched it, UTC.';

CREATE TABLE vcclive_outbox (
    id              bigserial   PRIMARY KEY,
    account         text        NOT NULL,
    projectid       bigint      NOT NULL,
    payload         jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'sending', 'delivered', 'failed',
                                                 'unknown')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    numberid        bigint,
    error           text,
    batch           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    delivered_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vcclive_outbox_due_idx ON vcclive_outbox (account, next_attempt_at)
    WHERE state = 'pending';

COMMENT ON TABLE vcclive_outbox IS
    'Records to add to VCC Live projects: INSERT (account, projectid, payload) and cdrsync '
    'delivers each row once with POST /v2/projects/{projectid}/records, batched, then writes '
    'back the numberid or the error.';
COMMENT ON COLUMN vcclive_outbox.id IS 'Row id (delivery follows it, oldest first).';
COMMENT ON COLUMN vcclive_outbox.account IS 'The cdrsync account (vendor vcclive) to deliver with.';
COMMENT ON COLUMN vcclive_outbox.projectid IS 'VCC Live project the record is added to.';
COMMENT ON COLUMN vcclive_outbox.payload IS
    'The record as VCC Live''s Add record takes it (form, contacts, disposition, ...).';
COMMENT ON COLUMN vcclive_outbox.state IS
    'pending (waiting), sending (in a request right now), delivered (numberid set), failed '
    '(refused by VCC Live: error says why; not retried), unknown (the answer was lost: cdrsync '
    'checks VCC Live for the record before anything is sent again).';
COMMENT ON COLUMN vcclive_outbox.attempts IS 'Requests that carried this row.';
COMMENT ON COLUMN vcclive_outbox.next_attempt_at IS 'When a pending row is sent next, UTC.';
COMMENT ON COLUMN vcclive_outbox.numberid IS 'The record id VCC Live gave the row.';
COMMENT ON COLUMN vcclive_outbox.error IS 'The last error (kept on a failed row).';
COMMENT ON COLUMN vcclive_outbox.batch IS 'The request the row was last sent in.';
COMMENT ON COLUMN vcclive_outbox.created_at IS 'When the row was inserted, UTC.';
COMMENT ON COLUMN vcclive_outbox.sent_at IS 'When it was last sent, UTC.';
COMMENT ON COLUMN vcclive_outbox.delivered_at IS 'When VCC Live confirmed it, UTC.';
COMMENT ON COLUMN vcclive_outbox.updated_at IS 'When the row last changed, UTC.';
