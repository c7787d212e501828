-- cdrsync schema, version 9: the stored list copies of a window, by start time (issue 11).
-- Before reading a window's pages, a window stream reads the content hashes of that window's
-- stored list copies (query list_hashes), so an unchanged re-read normalizes and writes
-- nothing. calls_started_at_brin cannot serve it: BRIN summarizes new pages only at VACUUM,
-- and until then every unsummarized page is read; on a freshly loaded table of 200 000 calls
-- each window's lookup read the whole table (EXPLAIN: "Heap Blocks: lossy=49872", ~200 ms).
-- Partial (list copies only) and covering (content_hash), so it answers from the index.

CREATE INDEX calls_list_started_at_idx ON calls (vendor, account, started_at)
    INCLUDE (content_hash) WHERE source = 'list';

COMMENT ON INDEX calls_list_started_at_idx IS
    'The content hashes of an account''s list copies by start time: the window streams read '
    'them to skip records identical to their stored copy (a re-read of unchanged calls).';
