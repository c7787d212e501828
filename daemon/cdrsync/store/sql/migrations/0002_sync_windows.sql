-- Closed windows and the vendor's count for each, for the window audit: a window whose count
-- later differs from the one recorded here is read again (calls that surface after the
-- lookback, e.g. an Acefone call listed only when it ends, long after it started).
CREATE TABLE sync_windows (
    stream       text        NOT NULL REFERENCES sync_state (stream) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    vendor_count integer     NOT NULL,
    read_at      timestamptz NOT NULL,
    checked_at   timestamptz NOT NULL,
    PRIMARY KEY (stream, window_start, window_end)
);
CREATE INDEX sync_windows_checked ON sync_windows (stream, checked_at);

COMMENT ON TABLE sync_windows IS
    'Time windows a stream has read completely, with the vendor''s count of calls in each; '
    'cdrsync re-asks the count of recent closed windows and reads a window again when it moved. '
    'Internal bookkeeping: analysts need not query it.';
COMMENT ON COLUMN sync_windows.stream IS 'The stream (sync_state.stream) that read the window.';
COMMENT ON COLUMN sync_windows.window_start IS 'Start of the window, UTC, inclusive.';
COMMENT ON COLUMN sync_windows.window_end IS 'End of the window, UTC.';
COMMENT ON COLUMN sync_windows.vendor_count IS
    'How many calls the vendor counted in the window when it was last read completely.';
COMMENT ON COLUMN sync_windows.read_at IS 'When the window was last read completely.';
COMMENT ON COLUMN sync_windows.checked_at IS
    'When the vendor''s count of the window was last compared with vendor_count.';
