"""The status report and the backfill progress line (pure formatting)."""

from __future__ import annotations

import datetime as dt
import io

import orjson
import pytest

from cdrsync.config import parse
from cdrsync.engine.balance import Member
from cdrsync.engine.window import Progress
from cdrsync.model import StreamState
from cdrsync.ops.status import ProgressPrinter, render_status
from cdrsync.store.members import Holder

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
SETTINGS = parse(
    {
        "accounts": [
            {"name": "acme-in", "vendor": "acefone", "base_url": "https://api.acefone.in",
             "token": "t0ken-value", "start": "2026-11-01"}
        ]
    },
    source="<test>",
    environ={},
)  # fmt: skip


def state(**kw) -> StreamState:
    base = {"stream": "acme-in/list", "vendor": "acefone", "account": "acme-in", "kind": "list",
            "watermark": NOW - dt.timedelta(minutes=3), "last_success_at": NOW,
            "rows_inserted": 10, "rows_updated": 2, "cycles": 5}  # fmt: skip
    return StreamState(**{**base, **kw})


def test_healthy_stream_table_and_exit_ok():
    """A stream close to now with a recent success is 'ok' and the report exits 0."""
    text, unhealthy = render_status([state()], SETTINGS, now=NOW)
    assert "acme-in/list" in text
    assert "ok" in text
    assert "180s" in text
    assert not unhealthy


def test_failing_stream_is_reported_with_its_error():
    """An error newer than the last success makes the stream 'failing' (exit 1) with the error."""
    bad = state(
        last_error="acefone.call_records: 401, check the token",
        last_error_at=NOW,
        last_success_at=NOW - dt.timedelta(minutes=5),
    )
    text, unhealthy = render_status([bad], SETTINGS, now=NOW + dt.timedelta(seconds=1))
    assert "failing" in text
    assert "check the token" in text
    assert unhealthy


def test_rows_today_per_account_in_table_and_json():
    """Calls first stored today are shown per stream, from its vendor and account."""
    today = {("acefone", "acme-in"): 42}
    text, _ = render_status([state()], SETTINGS, now=NOW, today=today)
    header, row = text.splitlines()
    assert row[header.index("TODAY") :].split()[0] == "42"
    data, _ = render_status([state()], SETTINGS, now=NOW, today=today, as_json=True)
    assert orjson.loads(data)["streams"][0]["rows_today"] == 42


def test_lagging_stream_and_json():
    """A watermark far behind is 'lagging'; --json carries the same facts for scripts."""
    old = state(watermark=NOW - dt.timedelta(hours=5))
    text, unhealthy = render_status([old], SETTINGS, now=NOW, as_json=True)
    row = orjson.loads(text)["streams"][0]
    assert (row["health"], row["lag_s"]) == ("lagging", 5 * 3600)
    assert unhealthy


def test_progress_line_shows_rate_share_and_eta():
    """Backfill progress shows the window count, rows, rate, percentage done and time left."""
    ticks = iter([0.0, 10.0, 20.0])
    printer = ProgressPrinter(io.StringIO(), clock=lambda: next(ticks))
    start = NOW - dt.timedelta(days=10)
    first = Progress("acme-in/backfill", 1, 100, start + dt.timedelta(days=1), start, NOW)
    printer(first)
    line = printer.line(
        Progress("acme-in/backfill", 3, 300, start + dt.timedelta(days=3), start, NOW, 240)
    )
    assert "3/240 windows" in line
    assert "30%" in line
    assert "300 rows" in line
    # 7 days left at the pace of 2 days per 20 s (since the printer began) is 70 s
    assert "ETA 0:01:10" in line


def test_queue_depths_of_lookup_and_outbox_streams():
    """Lookup and outbox streams show their queue (waiting, in doubt, given up); --json too."""
    lookup = state(stream="acme-in/lookup", kind="lookup", watermark=None)
    outbox = state(stream="acme-in/outbox", kind="outbox", watermark=None)
    depths = {
        ("acefone", "acme-in", "lookups"): {"pending": 7, "done": 90, "gave_up": 1},
        ("acefone", "acme-in", "outbox"): {"pending": 2, "unknown": 3, "delivered": 40},
    }
    text, unhealthy = render_status([state(), lookup, outbox], SETTINGS, now=NOW, depths=depths)
    header, *rows = text.splitlines()
    queues = [row[header.index("QUEUE") : header.index("LAST ERROR")].strip() for row in rows]
    assert queues == ["-", "7 waiting, 1 given up", "5 waiting, 3 in doubt"]
    assert not unhealthy
    data, _ = render_status([lookup], SETTINGS, now=NOW, depths=depths, as_json=True)
    assert orjson.loads(data)["streams"][0]["queue"] == {"pending": 7, "done": 90, "gave_up": 1}


def test_a_failing_lookup_stream_fails_the_check():
    """A lookup stream whose last cycle failed (e.g. credentials) makes status exit 1."""
    bad = state(stream="acme-in/lookup", kind="lookup", watermark=None, last_error="401",
                last_error_at=NOW, last_success_at=NOW - dt.timedelta(minutes=1))  # fmt: skip
    _, unhealthy = render_status([bad], SETTINGS, now=NOW)
    assert unhealthy


def test_stuck_streams_for_readyz():
    """/readyz calls a running account's stream stuck after 3 polls + 15 min without a success
    (counted from the daemon's start when it never had one); removed accounts do not count."""
    from cdrsync.ops.status import stuck_streams

    accounts = {a.name: a for a in SETTINGS.accounts}
    started = NOW - dt.timedelta(hours=1)
    fresh = state(last_success_at=NOW - dt.timedelta(minutes=5))
    old = state(stream="acme-in/lookup", kind="lookup", last_success_at=NOW - dt.timedelta(hours=2))
    never = state(stream="acme-in/outbox", kind="outbox", last_success_at=None)
    history = state(stream="acme-in/history", kind="history:..x", last_success_at=None)
    gone = state(stream="old/list", account="old", last_success_at=None)
    states = [fresh, old, never, history, gone]
    assert stuck_streams(states, accounts, now=NOW, since=started) == [
        "acme-in/lookup", "acme-in/outbox",
    ]  # fmt: skip
    just_started = NOW - dt.timedelta(minutes=2)
    assert stuck_streams(states, accounts, now=NOW, since=just_started) == []


def test_streams_of_removed_or_disabled_accounts_are_shown_but_not_judged():
    """An account taken out of the file (or disabled) keeps its old state rows: they are shown
    as 'inactive' and never make `status` exit 1 (a monitoring check would fail for ever)."""
    old = state(stream="gone/list", account="gone", watermark=NOW - dt.timedelta(days=3),
                last_error="boom", last_error_at=NOW)  # fmt: skip
    disabled = parse(
        {"accounts": [{"name": "acme-in", "vendor": "acefone", "base_url": "https://api.acefone.in",
                       "token": "t0ken-value", "start": "2026-11-01", "enabled": False}]},
        source="<test>", environ={},
    )  # fmt: skip
    text, unhealthy = render_status([old, state()], SETTINGS, now=NOW)
    assert "inactive" in text and not unhealthy
    text, unhealthy = render_status([state(last_error="x", last_error_at=NOW)], disabled, now=NOW)
    assert "inactive" in text and not unhealthy


HOLDER_STARTED = NOW - dt.timedelta(hours=2)


@pytest.mark.parametrize(
    ("holder", "column", "as_json"),
    [
        (None, "-", None),
        (
            Holder("db1:41:x", "db1", 41, HOLDER_STARTED),
            "db1:41",
            {
                "instance": "db1:41:x",
                "host": "db1",
                "pid": 41,
                "started": HOLDER_STARTED.isoformat(),
            },
        ),
        (
            Holder(None, None, None, None),
            "another process",
            {"instance": None, "host": None, "pid": None, "started": None},
        ),
    ],
)
def test_owner_of_each_stream_in_table_and_json(holder, column, as_json):
    """The OWNER column names the daemon (host:pid) holding the stream's lock; --json in full."""
    owners = {"acme-in/list": holder} if holder else {}
    text, _ = render_status([state()], SETTINGS, now=NOW, owners=owners)
    header, row = text.splitlines()
    assert row[header.index("OWNER") : header.index("HEALTH")].strip() == column
    data, _ = render_status([state()], SETTINGS, now=NOW, owners=owners, as_json=True)
    assert orjson.loads(data)["streams"][0]["owner"] == as_json


def test_live_instances_are_listed_below_the_table_and_in_json():
    """Each live daemon shows host, pid, start, heartbeat age and the streams it holds."""
    member = Member(
        id="db1:41:x", host="db1", pid=41, started=HOLDER_STARTED, streams=frozenset(),
        heartbeat=NOW - dt.timedelta(seconds=3), owned=10,
    )  # fmt: skip
    text, _ = render_status([state()], SETTINGS, now=NOW, instances=[member])
    assert text.splitlines()[-2:] == [
        "1 live instance(s):",
        "  db1 pid 41, started 2026-11-23 10:00:00Z, heartbeat 3s ago, 10 stream(s) held",
    ]
    data, _ = render_status([state()], SETTINGS, now=NOW, instances=[member], as_json=True)
    assert orjson.loads(data)["instances"] == [
        {"instance": "db1:41:x", "host": "db1", "pid": 41, "started": HOLDER_STARTED.isoformat(),
         "heartbeat_age_s": 3.0, "streams_held": 10}
    ]  # fmt: skip
