-- cdrsync schema, version 6: every source's copy of a call is kept, and each column takes the
-- best source that has a value (issue 9, part 2). Until now the list's copy replaced a pushed
-- or looked-up copy whole, raw included, so fields only the push carried were lost (VCC
-- Live's agent name and disposition, Ozonetel's AgentPhoneNumber).

ALTER TABLE calls
    ADD COLUMN raw_other jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN fetched_other jsonb NOT NULL DEFAULT '{}'::jsonb;

COMMENT ON COLUMN calls.raw_other IS
    'The records of this call from the sources other than source, keyed by source name '
    '(e.g. {"push": {...}}), as received, secrets removed: raw and raw_other together keep '
    'every source''s copy. E.g. raw_other->''push''->>''AgentPhoneNumber''.';
COMMENT ON COLUMN calls.fetched_other IS
    'When each copy in raw_other was fetched (UTC), keyed by source: an older copy of a '
    'source never replaces a newer one.';
COMMENT ON COLUMN calls.source IS
    'The best source that has described this call, whose record is in raw: list (the '
    'vendor''s bulk list, the source of truth), lookup (a per-call endpoint) or push (a '
    'webhook, visible seconds after the call); list > lookup > push. Each column takes the '
    'value of the best source that has one (agent_name: the push''s first, as VCC Live''s CDR '
    'names the agent by user id only); a later copy never erases a value.';
COMMENT ON COLUMN calls.raw IS
    'The record of the best source (column source) as received (JSON), with secrets such as '
    'API keys removed; the other sources'' records are in raw_other.';
COMMENT ON COLUMN calls.content_hash IS
    'Digest of raw; cdrsync compares it to skip re-fetched records that did not change '
    '(raw_other is compared as it is).';

CREATE FUNCTION source_rank(source text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE source WHEN 'list' THEN 2 WHEN 'lookup' THEN 1 ELSE 0 END $$;
COMMENT ON FUNCTION source_rank(text) IS
    'Rank of a calls.source: list 2, lookup 1, push 0 (used by cdrsync''s upsert).';

CREATE FUNCTION merge_value(
    incoming_source text, stored_source text, incoming anyelement, stored anyelement
) RETURNS anyelement
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN source_rank(incoming_source) >= source_rank(stored_source)
                      THEN coalesce(incoming, stored)
                      ELSE coalesce(stored, incoming) END $$;
COMMENT ON FUNCTION merge_value(text, text, anyelement, anyelement) IS
    'One column of a merged call: the value of the copy from the better source (the incoming '
    'one on a tie), else the other''s; a copy that lacks a value never erases one '
    '(cdrsync''s upsert).';
