"""Secret scrubbing of log events, log rendering, and the systemd notify protocol."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
from pathlib import Path

import pytest
import structlog

from cdrsync.ops.observability import (
    SecretScrubber,
    StatusBoard,
    configure_logging,
    sd_notify,
    syslog_priority,
    watchdog_interval,
)


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("GET https://customer.servetel.in/file/rec?callId=1&token=6a49cfa0f9", "6a49cfa0f9"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ('{"Apikey": "KK1234567890", "x": 1}', "KK1234567890"),
        ("postgresql://cdrsync:hunter22@db/cdrsync", "hunter22"),
        ("apiKey=abcdef123&userName=acme", "abcdef123"),
        ("password=s3cr3t-pass", "s3cr3t-pass"),
    ],
)  # fmt: skip
def test_secret_looking_values_are_masked(text, leak):
    """Token query values, bearer tokens, api keys and URL passwords are masked in any text."""
    scrubbed = SecretScrubber().scrub(text)
    assert leak not in scrubbed
    assert "***" in scrubbed


def test_configured_secrets_are_masked_everywhere_in_an_event():
    """A configured secret is masked in nested fields and exception text, not just messages."""
    scrub = SecretScrubber(["plain-token-XYZ"])
    event = scrub(
        None,
        "info",
        {
            "event": "x",
            "nested": {"list": ["a plain-token-XYZ b"]},
            "error": ValueError("bad plain-token-XYZ"),
            "n": 3,
        },
    )
    assert "plain-token-XYZ" not in json.dumps(event)
    assert event["n"] == 3


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (["bench-a0001"], "token bench-a0001 refused", "token *** refused"),
        (["bench-a0001"], "bench-a0001", "***"),  # the whole text
        (["bench-a0001"], "xbench-a0001x", "x***x"),  # inside a word
        (["bench-a0001"], "bench-a000", "bench-a000"),  # a prefix is not the secret
        (["abcd", "abcdef"], "abcdef abcd", "*** ***"),  # longest first: masked whole
        (["cdef1", "abcdef"], "abcdef12", "***12"),  # overlapping: the longer one first
        (["pass-1", "pass-2"], "pass-2 then pass-1", "*** then ***"),  # a shared prefix
        ([], "nothing here", "nothing here"),
    ],
)  # fmt: skip
def test_configured_secrets_are_masked_wherever_they_occur(secrets, text, expected):
    """Every configured secret is masked wherever it occurs, the longer of two first."""
    assert SecretScrubber(secrets).scrub(text) == expected


def test_one_secret_among_a_thousand_is_masked():
    """With a thousand accounts' tokens configured, each one is still found and masked."""
    scrub = SecretScrubber([f"bench-a{i:04d}" for i in range(1, 1001)])
    for i in (1, 500, 1000):
        assert scrub.scrub(f"refused: bench-a{i:04d}.") == "refused: ***."


def test_short_secrets_do_not_mask_ordinary_words():
    """A one- to three-character 'secret' is not used for masking (it would mask words)."""
    assert SecretScrubber(["a"]).scrub("a call") == "a call"


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state; put the defaults back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_off_a_terminal_with_secrets_scrubbed():
    """Off a terminal each event is one JSON line, secrets (and tracebacks) scrubbed."""
    out = io.StringIO()
    configure_logging(level="info", fmt="auto", secrets=["tok-SECRET-42"], stream=out)
    log = structlog.get_logger("t")

    def fail() -> None:
        raise RuntimeError("failed with tok-SECRET-42")

    try:
        fail()
    except RuntimeError:
        log.exception("thing.failed", account="acme-in", url="https://x/?token=abc123def")
    import logging

    logging.getLogger("aiohttp.client").warning("stdlib says tok-SECRET-42")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["thing.failed", "stdlib says ***"]
    assert lines[0]["account"] == "acme-in"
    assert "tok-SECRET-42" not in out.getvalue()
    assert "abc123def" not in out.getvalue()


def test_sd_notify_sends_datagrams_to_notify_socket(tmp_path):
    """READY=1 reaches a real NOTIFY_SOCKET datagram socket; without one nothing is sent."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert sd_notify("READY=1", "STATUS=ok", environ={"NOTIFY_SOCKET": path})
        assert server.recv(100) == b"READY=1\nSTATUS=ok"
    assert not sd_notify("READY=1", environ={})


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ],
)
def test_watchdog_interval_table(environ, interval):
    """Pings go at half of WatchdogSec, only when systemd asked this very process for them."""
    assert watchdog_interval(environ) == interval


def test_status_line_summarizes_streams():
    """STATUS= names the stream count, failures, the worst lag and the rows written."""
    board = StatusBoard()
    board.update("a/list", ok=True, lag_s=12.0, rows=100)
    line = board.update("b/list", ok=False, lag_s=63.4, rows=5)
    assert line == "2 streams, 1 failing; max lag 63s (b/list); 105 rows written"


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        # The worst stream catches up: the next worst is shown.
        ([("a", True, 90.0), ("b", True, 30.0), ("a", True, 5.0)],
         "2 streams, 0 failing; max lag 30s (b); 0 rows written"),
        # Its lag becomes unknown: the other stream's is shown.
        ([("a", True, 90.0), ("b", True, 30.0), ("a", False, None)],
         "2 streams, 1 failing; max lag 30s (b); 0 rows written"),
        # No stream has a lag any more.
        ([("a", True, 90.0), ("a", True, None)], "1 streams, 0 failing; 0 rows written"),
        # A failing stream recovers.
        ([("a", False, 10.0), ("a", True, 10.0)],
         "1 streams, 0 failing; max lag 10s (a); 0 rows written"),
        # Equal lags: the later name wins, as before.
        ([("b", True, 7.0), ("a", True, 7.0)],
         "2 streams, 0 failing; max lag 7s (b); 0 rows written"),
    ],
)  # fmt: skip
def test_status_line_follows_lags_that_shrink(updates, expected):
    """The worst lag shown is always the worst of the streams' latest cycles."""
    board = StatusBoard()
    line = ""
    for stream, ok, lag in updates:
        line = board.update(stream, ok=ok, lag_s=lag, rows=0)
    assert line == expected


def test_status_line_equals_a_full_recount_over_many_streams():
    """Over a thousand streams' cycles the summary always equals a recount from scratch."""
    board = StatusBoard()
    latest: dict[str, tuple[bool, float | None]] = {}
    for step in range(5000):
        stream = f"a{(step * 7919) % 1000:04d}/list"
        lag = None if step % 13 == 0 else float((step * 104729) % 977)
        ok = step % 17 != 0
        latest[stream] = (ok, lag)
        line = board.update(stream, ok=ok, lag_s=lag, rows=1)
        lags = [(v, k) for k, (_, v) in latest.items() if v is not None]
        failing = sum(1 for o, _ in latest.values() if not o)
        text = f"{len(latest)} streams, {failing} failing"
        if lags:
            worst, name = max(lags)
            text += f"; max lag {worst:.0f}s ({name})"
        assert line == f"{text}; {step + 1} rows written"


def journal_stream(path):
    """A file standing for the journal's stream, and the $JOURNAL_STREAM systemd would set."""
    out = open(path, "w+", encoding="utf-8")  # noqa: SIM115 (closed by the caller)
    stat = os.fstat(out.fileno())
    return out, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def emit_each_level() -> None:
    """One event per level, through structlog and through a stdlib logger (as aiohttp logs)."""
    log = structlog.get_logger("t")
    log.debug("e.debug")
    log.info("e.info")
    log.warning("e.warning")
    log.error("e.error")
    logging.getLogger("asyncpg").warning("stdlib warning")


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_journal_lines_carry_their_syslog_priority(tmp_path, fmt):
    """With stdout on the journal, each line starts with its level's syslog priority (<7> debug,
    <6> info, <4> warning, <3> error) so `journalctl -p warning` filters; JSON lines parse once
    the prefix is stripped (journald strips it)."""
    out, environ = journal_stream(tmp_path / "journal")
    with out:
        configure_logging(level="debug", fmt=fmt, stream=out, environ=environ)
        emit_each_level()
        lines = Path(out.name).read_text(encoding="utf-8").splitlines()
    prefixes = [re.match(r"<(\d)>", line) for line in lines]
    assert all(prefixes), lines
    assert [int(m.group(1)) for m in prefixes if m] == [7, 6, 4, 3, 4]
    if fmt == "json":
        events = [json.loads(line[3:]) for line in lines]
        assert [(e["event"], e["level"]) for e in events] == [
            ("e.debug", "debug"), ("e.info", "info"), ("e.warning", "warning"),
            ("e.error", "error"), ("stdlib warning", "warning"),
        ]  # fmt: skip


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    "journal",
    [
        None,  # not under systemd
        "elsewhere",  # under systemd, but stdout redirected to a file (`cdrsync status > f`)
    ],
)
def test_no_prefix_off_the_journal(tmp_path, journal):
    """Without $JOURNAL_STREAM, or when it names another stream, lines are unchanged JSON."""
    out = open(tmp_path / "log", "w+", encoding="utf-8")  # noqa: SIM115
    environ = {}
    if journal == "elsewhere":
        other, environ = journal_stream(tmp_path / "journal")
        other.close()
    with out:
        configure_logging(level="debug", fmt="json", stream=out, environ=environ)
        emit_each_level()
        lines = Path(out.name).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["level"] for line in lines] == [
        "debug", "info", "warning", "error", "warning",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [
        (logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3),
        (logging.CRITICAL, 2), (logging.INFO + 5, 6), (logging.NOTSET, 7),
    ],
)  # fmt: skip
def test_syslog_priority_table(levelno, priority):
    """Python log levels map onto the syslog priorities journald understands."""
    assert syslog_priority(levelno) == priority


@pytest.mark.parametrize(
    ("forgotten", "expected"),
    [
        # The worst and failing stream is removed: the next worst is shown.
        (["b"], "2 streams, 0 failing; max lag 30s (c); 0 rows written"),
        (["a", "c"], "1 streams, 1 failing; max lag 90s (b); 0 rows written"),
        (["a", "b", "c"], "0 streams, 0 failing; 0 rows written"),
        (["not-running"], "3 streams, 1 failing; max lag 90s (b); 0 rows written"),
    ],
)
def test_status_line_forgets_streams_a_reload_removed(forgotten, expected):
    """Streams of an account removed by a reload leave the summary: count, failures, lag."""
    board = StatusBoard()
    for stream, ok, lag in [("a", True, 5.0), ("b", False, 90.0), ("c", True, 30.0)]:
        board.update(stream, ok=ok, lag_s=lag, rows=0)
    board.forget(forgotten)
    assert board.line() == expected


def test_after_forgetting_the_worst_stream_the_next_worst_is_shown():
    """Once the laggiest stream is forgotten, the next laggiest is named, even when another
    stream's cycle ends first."""
    board = StatusBoard()
    for stream, lag in [("a", 5.0), ("b", 90.0), ("c", 30.0)]:
        board.update(stream, ok=True, lag_s=lag, rows=0)
    board.forget(["b"])
    assert "max lag 30s (c)" in board.update("a", ok=True, lag_s=5.0, rows=0)


def test_a_line_logged_while_a_reload_adds_secrets_is_still_masked():
    """A log line scrubbed while ``add`` builds the new secret index (a reload, with streams
    logging meanwhile) still has the old secrets masked."""
    scrubber = SecretScrubber(["old-secret-AAAA"])
    seen: list[str] = []

    class LogsMidway(str):
        """A new secret whose indexing logs a line: the instant the index is being built."""

        __slots__ = ()

        def __getitem__(self, key):
            if not seen:
                seen.append(scrubber.scrub("401 for old-secret-AAAA"))
            return str.__getitem__(self, key)

    scrubber.add([LogsMidway("a-much-longer-new-secret-BBBB")])
    assert seen == ["401 for ***"]
    assert scrubber.scrub("old-secret-AAAA a-much-longer-new-secret-BBBB") == "*** ***"
