"""cdrsync as operators run it: a child process (``python -m cdrsync``), real signals, real
exit codes, its JSON log on stdout, against the Acefone simulator and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import signal
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cdrsync.errors import ParseError
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import RunningServer, start_server
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import normalize
from process_support import (
    ACCOUNT,
    STREAM,
    account_table,
    call_count,
    children,
    duplicate_keys,
    fetch,
    ownership,
    watermark,
    write_config,
)
from support import differences, eventually, truth_hashes

IST = zoneinfo.ZoneInfo("Asia/Kolkata")
IN_STEP: dict[str, list[str]] = {"missing": [], "extra": [], "stale": []}


def quiet_simulator(backlog: int, days: float, *, seed: int, **config: object) -> AcefoneSimulator:
    """A backlog only: no live calls, no late rows, no changes, so the truth is fixed."""
    return AcefoneSimulator(
        AcefoneSimConfig(
            seed=seed,
            backlog=backlog,
            backlog_days=days,
            live_per_minute=0,
            late_fraction=0.0,
            change_fraction=0.0,
            visible_delay_s=(0.0, 0.5),
            **config,  # type: ignore[arg-type]
        )
    )


def start_before(days: float) -> dt.date:
    """An account start day (IST) before a backlog of ``days`` that ends now."""
    return (dt.datetime.now(IST) - dt.timedelta(days=days + 1)).date()


async def final_truth(sim: AcefoneSimulator) -> dict[str, bytes]:
    """The simulator's records once the last one is visible: call_key -> content hash."""
    await asyncio.sleep(max(0.0, sim.last_visible_time() - time.time()) + 0.1)
    return truth_hashes(sim)


async def converge(
    store: Store, dsn: str, truth: dict[str, bytes], *, within: float
) -> dict[str, list[str]]:
    """Wait (bounded) until ``calls`` equals ``truth``; the differences left."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await call_count(dsn) == len(truth):
            diff = differences(truth, await store.call_hashes("acefone", ACCOUNT))
            if diff == IN_STEP:
                return diff
        await asyncio.sleep(0.3)
    return differences(truth, await store.call_hashes("acefone", ACCOUNT))


def start_times(sim: AcefoneSimulator) -> dict[str, dt.datetime]:
    """When each of the simulator's well-formed calls started (UTC), read the way the daemon
    reads it (the payload's date and time are naive IST)."""
    fetched = dt.datetime.now(dt.UTC)
    starts: dict[str, dt.datetime] = {}
    for key, payload in sim.truth().items():
        with contextlib.suppress(ParseError):
            record = normalize(payload, account=ACCOUNT, zone=IST, fetched_at=fetched)
            if record.started_at is not None:
                starts[key] = record.started_at
    return starts


async def gaps_up_to(
    dsn: str, truth: dict[str, bytes], starts: dict[str, dt.datetime], mark: dt.datetime
) -> dict[str, list[str]]:
    """How the calls that started at or before ``mark`` differ from the truth's: a committed
    watermark promises that none is missing or stale (its windows read both bounds inclusive)."""
    rows = await fetch(dsn, "SELECT call_key, content_hash FROM calls WHERE started_at <= $1", mark)
    stored = {r["call_key"]: bytes(r["content_hash"]) for r in rows}
    expected = {key: h for key, h in truth.items() if starts[key] <= mark}
    return differences(expected, stored)


@pytest.fixture
async def served() -> AsyncIterator[list[RunningServer]]:
    """Simulator servers a test starts; closed at its end."""
    servers: list[RunningServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            await server.close()


async def serve(servers: list[RunningServer], sim: AcefoneSimulator) -> str:
    """Serve ``sim`` on 127.0.0.1 for the rest of the test; its base URL."""
    server = await start_server(sim)
    servers.append(server)
    return server.base_url


# ---------------------------------------------------------------------------- 1. crashes


@pytest.mark.slow
async def test_sigkill_at_random_instants_then_resume_loses_and_duplicates_nothing(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """SIGKILL at random instants (start-up, mid-window, mid-write) and restarts end with
    calls equal to the vendor's: none missing, extra, stale or duplicated; the watermark never
    moves back."""
    sim = quiet_simulator(50_000, 5.0, seed=21)
    url = await serve(served, sim)
    config = write_config(
        tmp_path / "cdrsync.toml", dsn, [account_table(url, start=start_before(5.0))]
    )
    truth = await final_truth(sim)
    starts = start_times(sim)
    rng = random.Random(20_240_501)
    kills: list[tuple[str, float, int, dt.datetime | None]] = []
    gaps: dict[str, dict[str, list[str]]] = {}

    async def after_kill(label: str, delay: float) -> None:
        mark = await watermark(dsn)
        kills.append((label, delay, await call_count(dsn), mark))
        if mark is not None:
            gaps[label] = await gaps_up_to(dsn, truth, starts, mark)

    async with children(tmp_path) as kids:
        # The first crash lands during start-up (imports, connect, migrations, lock).
        first = await kids.daemon(config, label="run0")
        startup_delay = rng.uniform(0.05, 0.35)
        await asyncio.sleep(startup_delay)
        await first.kill()
        await after_kill("start-up", startup_delay)
        for run in range(1, 6):
            child = await kids.daemon(config, label=f"run{run}")
            assert await child.wait_event("daemon.started", within=30), kids.tails()
            delay = rng.uniform(0.3, 2.0)
            await asyncio.sleep(delay)
            await child.kill()
            await after_kill(f"run{run}", delay)
        last = await kids.daemon(config, label="final")
        diff = await converge(store, dsn, truth, within=50)
        # The last run checks the table in at least one cycle of its own before it is stopped.
        assert await last.wait_event("sync.cycle_done", within=30), kids.tails()
        code = await last.terminate(10)
        final_mark = await watermark(dsn)
        tails = kids.tails()
    report = "\n".join(f"{label}: +{d:.2f}s rows={n} watermark={m}" for label, d, n, m in kills)
    print(report)  # shown with -rP: where the kills landed
    assert diff == IN_STEP, f"{report}\n{tails}"
    assert await duplicate_keys(dsn) == 0
    # At every crash, the committed watermark had no uncommitted call behind it.
    assert {label: IN_STEP for label in gaps} == gaps, report
    assert code == 0, tails
    # The test proved something only if some kills hit a daemon that was writing rows.
    assert any(0 < n < len(truth) for _, _, n, _ in kills), report
    marks = [m for *_, m in kills] + [final_mark]
    set_at = next((i for i, m in enumerate(marks) if m is not None), len(marks))
    known = [m for m in marks if m is not None]
    assert None not in marks[set_at:], f"watermark lost across restarts:\n{report}"
    assert known == sorted(known), f"watermark moved back across restarts:\n{report}"


# ---------------------------------------------------------------------------- 2. clean stop


@pytest.mark.slow
async def test_sigterm_mid_backfill_exits_0_with_every_window_up_to_the_watermark_complete(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """SIGTERM while rows are being written: exit 0 within 10 s, daemon.stopped logged, no
    traceback, and every call that started up to the committed watermark is in the table."""
    sim = quiet_simulator(30_000, 5.0, seed=22)
    url = await serve(served, sim)
    config = write_config(
        tmp_path / "cdrsync.toml", dsn, [account_table(url, start=start_before(5.0))]
    )
    truth = await final_truth(sim)
    starts = start_times(sim)

    async with children(tmp_path) as kids:
        child = await kids.daemon(config)

        async def writing() -> bool:
            return await call_count(dsn) > 0 and await watermark(dsn) is not None

        await eventually(writing, timeout=30, interval=0.05)
        rows_at_stop = await call_count(dsn)
        began = time.monotonic()
        code = await child.terminate(10)
        took = time.monotonic() - began
        tails = kids.tails()
    assert code == 0, f"exit code {code} after {took:.1f}s\n{tails}"
    assert 0 < rows_at_stop < len(truth), "the stop did not land mid-run; make the backlog larger"
    assert child.named("daemon.stopped"), tails
    assert "Traceback" not in child.output(), tails
    assert not [e for e in child.events() if e.get("level") in {"error", "critical"}], tails

    mark = await watermark(dsn)
    assert mark is not None
    expected = [key for key, start in starts.items() if start <= mark]
    assert expected, "no call started before the watermark: the test proves nothing"
    assert await gaps_up_to(dsn, truth, starts, mark) == IN_STEP, f"watermark {mark}"
    stored = {r["call_key"] for r in await fetch(dsn, "SELECT call_key FROM calls")}
    assert stored <= truth.keys(), "rows the vendor never served"


# ---------------------------------------------------------------------------- 3. bad config


BAD_CONFIG = """\
[database]
dsn = {dsn}
schema = "cdrsync"

[daemon]
http_listen = ""

[[accounts]]
name = "acme-in"
vendor = "acefone"
base_url = "http://127.0.0.1:9"
token = "{token}"
start = 2026-01-01
colour = "blue"

[[accounts]]
name = "acme-in"
vendor = "acefone"
base_url = "http://127.0.0.1:9"
token = "{token}"
start = 2026-01-01

[accounts.rate_limits]
list = "60 per minute"
"""


async def test_bad_config_stops_start_up_with_exit_78_naming_every_problem(
    dsn: str, tmp_path: Path
) -> None:
    """A config with an unknown key, a bad rate and a duplicate account name: run and
    check-config exit 78 naming the file, each key path and each problem; a good file passes
    check-config with its token masked."""
    token = "tok-Config-9f3c1e77a2b4"  # must never be printed
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_CONFIG.format(dsn=json.dumps(dsn), token=token), encoding="utf-8")
    good = write_config(
        tmp_path / "good.toml", dsn, [account_table("http://127.0.0.1:9", token=token)]
    )
    async with children(tmp_path) as kids:
        run_code, run_out, run_err = await kids.command("run", "--config", str(bad), within=30)
        check_code, check_out, check_err = await kids.command(
            "check-config", "--config", str(bad), within=30
        )
        good_code, good_out, good_err = await kids.command(
            "check-config", "--config", str(good), within=30
        )

    problems = {
        "accounts[0].colour": "unknown key",
        "accounts[1].rate_limits.list": "60 per minute",
        "accounts[1].name": "already used",
    }
    for code, err in ((run_code, run_err), (check_code, check_err)):
        assert code == 78, err
        for key, what in problems.items():
            lines = [line for line in err.splitlines() if f"{bad}: {key}:" in line]
            assert lines, f"no line names {bad}: {key}\n{err}"
            assert what in lines[0], f"{key}: {lines[0]}"
        assert "Traceback" not in err
    assert "daemon.started" not in run_out
    assert good_code == 0, good_err
    assert "[[accounts]]" in good_out
    assert 'name = "acme-in"' in good_out
    assert 'token = "***"' in good_out
    for text in (run_out, run_err, check_out, check_err, good_out, good_err):
        assert token not in text


# ---------------------------------------------------------------------------- 4. secrets


def recording_tokens(sim: AcefoneSimulator) -> set[str]:
    """The ``token=`` values of every recording URL the simulator serves."""
    found = set()
    for payload in sim.truth().values():
        url = payload.get("recording_url")
        if isinstance(url, str) and url:
            found.update(parse_qs(urlsplit(url).query).get("token", []))
    return found


@pytest.mark.slow
async def test_no_token_or_recording_url_token_reaches_the_log_through_errors_and_retries(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """With a wrong token, then the right one under 5xx and truncated pages, errors and retries
    are logged but no token, and no recording URL token=, appears in stdout or stderr."""
    token = "acefone-Live-7Qx2-3b9d0c5e8f1a"
    wrong = "acefone-Dead-4Kp8-6e2a9d1f0c7b"
    sim = quiet_simulator(2000, 1.0, seed=23, token=token, malformed_fraction=0.02)
    url = await serve(served, sim)
    start = start_before(1.0)
    # Debug level: whatever the daemon and its libraries say about requests is in the log too.
    bad_cfg = write_config(
        tmp_path / "wrong.toml",
        dsn,
        [account_table(url, token=wrong, start=start, window="1d")],
        log_level="debug",
    )
    good_cfg = write_config(
        tmp_path / "right.toml",
        dsn,
        [account_table(url, token=token, start=start, window="1d")],
        log_level="debug",
    )
    truth = await final_truth(sim)
    url_tokens = recording_tokens(sim)
    assert url_tokens, "the simulator served no recording URL with a token"

    async with children(tmp_path) as kids:
        refused = await kids.daemon(bad_cfg, label="wrong-token")

        async def refused_twice() -> bool:
            return len(refused.named("sync.cycle_failed")) >= 2 or not refused.running

        await eventually(refused_twice, timeout=30)
        assert await refused.terminate(10) == 0, kids.tails()
        sim.set_faults(fault_5xx=0.2, fault_truncated=0.2)
        accepted = await kids.daemon(good_cfg, label="right-token")
        diff = await converge(store, dsn, truth, within=45)
        assert await accepted.terminate(10) == 0, kids.tails()
        tails = kids.tails()
    assert diff == IN_STEP, tails
    assert len(refused.named("sync.cycle_failed", error_type="AuthError")) >= 2, tails
    assert accepted.named("http.retry"), tails
    errors = await fetch(dsn, "SELECT last_error FROM sync_state WHERE last_error IS NOT NULL")
    for child in (refused, accepted):
        text = child.output()
        for secret in (token, wrong):
            assert secret not in text, f"{child.label} logged a token"
        leaked = sorted(t for t in url_tokens if t in text)
        assert not leaked, f"{child.label} logged recording URL tokens: {leaked[:3]}"
    for row in errors:
        assert token not in row["last_error"]
        assert wrong not in row["last_error"]


# ---------------------------------------------------------------------------- 5. ownership


@pytest.mark.slow
async def test_two_daemons_on_one_database_have_one_owner_and_the_survivor_takes_over(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """Two daemons on one database: exactly one owns acme-in/list; after the owner is killed
    (SIGKILL) the other takes the stream over and the table still converges."""
    sim = quiet_simulator(10_000, 3.0, seed=24)
    url = await serve(served, sim)
    config = write_config(
        tmp_path / "cdrsync.toml", dsn, [account_table(url, start=start_before(3.0))]
    )
    truth = await final_truth(sim)
    async with children(tmp_path) as kids:
        pair = [await kids.daemon(config, label="a"), await kids.daemon(config, label="b")]

        verdicts = [await ownership(c, STREAM, within=20) for c in pair]
        assert sorted(map(str, verdicts)) == ["elsewhere", "owned"], kids.tails()
        owner, other = pair if verdicts[0] == "owned" else pair[::-1]

        async def writing() -> bool:
            return await call_count(dsn) > 0 or not owner.running

        await eventually(writing, timeout=30, interval=0.05)
        await owner.kill()
        rows_at_kill = await call_count(dsn)
        taken = await other.wait_event("stream.owned", within=15, stream=STREAM)
        diff = await converge(store, dsn, truth, within=45)
        code = await other.terminate(10)
        tails = kids.tails()
    assert taken, f"the survivor never took the stream over\n{tails}"
    assert rows_at_kill < len(truth), "the owner finished before the kill: the test proves little"
    assert diff == IN_STEP, tails
    assert await duplicate_keys(dsn) == 0
    assert code == 0, tails
    # Until the take-over the survivor read nothing: its first cycle comes after stream.owned.
    events = [e["event"] for e in other.events()]
    owned_at = events.index("stream.owned")
    assert not {"sync.cycle_done", "sync.cycle_partial"} & set(events[:owned_at]), tails


# ---------------------------------------------------------------------------- 6. status, migrate


async def test_status_after_a_run_and_migrate_on_an_empty_database(
    dsn: str, empty_dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """After a run, `cdrsync status` exits 0 with a table naming acme-in/list and --json gives
    its watermark; `cdrsync migrate` creates the schema in an empty database."""
    sim = quiet_simulator(500, 0.5, seed=25)
    url = await serve(served, sim)
    config = write_config(
        tmp_path / "cdrsync.toml", dsn, [account_table(url, start=start_before(0.5))]
    )
    truth = await final_truth(sim)
    empty_cfg = write_config(
        tmp_path / "empty.toml", empty_dsn, [account_table(url, start=start_before(0.5))]
    )
    async with children(tmp_path) as kids:
        child = await kids.daemon(config)
        diff = await converge(store, dsn, truth, within=30)
        assert await child.terminate(10) == 0, kids.tails()
        code, out, err = await kids.command("status", "--config", str(config))
        jcode, jout, jerr = await kids.command("status", "--config", str(config), "--json")
        # status on a database it must first migrate: stdout still holds nothing but the JSON
        ecode, eout, eerr = await kids.command("status", "--config", str(empty_cfg), "--json")
        mcode, mout, merr = await kids.command("migrate", "--config", str(empty_cfg))
    assert diff == IN_STEP
    assert (ecode, json.loads(eout)) == (0, {"streams": [], "instances": []}), eout + eerr
    assert code == 0, out + err
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["STREAM", "VENDOR", "OWNER", "HEALTH", "WATERMARK"], out
    # Stopped, the daemon holds nothing and has left: no owner, no live instance listed.
    assert any(row.split()[:4] == [STREAM, "acefone", "-", "ok"] for row in rows), out
    assert "live instance" not in out, out
    assert jcode == 0, jout + jerr
    streams = {s["stream"]: s for s in json.loads(jout)["streams"]}
    mark = await watermark(dsn)
    assert mark is not None
    assert dt.datetime.fromisoformat(streams[STREAM]["watermark"]) == mark
    stored_today = await fetch(
        dsn,
        "SELECT count(*) AS n FROM calls WHERE first_seen_at >= date_trunc('day', now(), 'UTC')",
    )
    assert streams[STREAM]["rows_today"] == stored_today[0]["n"] > 0

    assert mcode == 0, mout + merr
    tables = await fetch(
        empty_dsn,
        "SELECT to_regclass('cdrsync.calls') AS calls, to_regclass('cdrsync.sync_state') AS state,"
        " (SELECT count(*) FROM cdrsync.schema_migrations) AS versions",
    )
    assert tables[0]["calls"] is not None
    assert tables[0]["state"] is not None
    assert tables[0]["versions"] >= 1


# ---------------------------------------------------------------------------- 7. backfill


@pytest.mark.slow
async def test_backfill_interrupted_then_rerun_continues_where_it_stopped(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """`cdrsync backfill` stopped by Ctrl-C exits 130 saying to run it again; the same command
    then resumes after the committed watermark (its first progress line is already past it)
    and finishes with the table equal to the truth."""
    sim = quiet_simulator(30_000, 4.0, seed=31)
    url = await serve(served, sim)
    truth = await final_truth(sim)
    since = start_before(4.0)
    config = write_config(tmp_path / "backfill.toml", dsn, [account_table(url, start=since)])
    args = ("backfill", "--config", str(config), "--account", ACCOUNT, "--since", since.isoformat())
    async with children(tmp_path) as kids:
        first = await kids.spawn(*args, label="backfill-1")
        assert await eventually(lambda: _has_rows(dsn), timeout=30), first.tail()
        first.proc.send_signal(signal.SIGINT)
        code = await first.wait(15)
        stream = f"{ACCOUNT}/backfill:{since.isoformat()}..latest"
        mark = await watermark(dsn, stream)
        rows = await call_count(dsn)
        second = await kids.spawn(*args, label="backfill-2")
        code2 = await second.wait(120)
    assert code == 130, first.tail()  # Ctrl-C: 130, as shells expect (not 75, "retry")
    assert "run the same command again" in "\n".join(first.stderr)
    assert mark is not None
    assert 0 < rows < len(truth)
    assert code2 == 0, second.tail()
    progress = [line for line in second.stderr if " up to " in line]
    assert progress, second.tail()
    first_mark = dt.datetime.strptime(
        progress[0].split(" up to ")[1][:16], "%Y-%m-%d %H:%M"
    ).replace(tzinfo=dt.UTC)
    assert first_mark > mark, "\n".join(second.stderr[:5]) + f"\nmark={mark}"
    assert differences(truth, await store.call_hashes("acefone", ACCOUNT)) == IN_STEP


async def _has_rows(dsn: str) -> bool:
    return await call_count(dsn) > 0


# ---------------------------------------------------------------------------- 8. demo


@pytest.mark.slow
async def test_demo_runs_and_ends_equal_to_the_simulator(tmp_path: Path) -> None:
    """`cdrsync demo` (the README's first command) starts its own PostgreSQL and simulator,
    syncs, and ends by reporting the table equal to the simulator's truth, exit 0."""
    # No --state-dir: the demo's own temporary directory, as the README's command uses. Under
    # tmp_path the server's user (as root) is locked out whenever another pytest run resets
    # /tmp/pytest-of-root to 0700.
    async with children(tmp_path) as kids:
        code, out, err = await kids.command(
            "demo", "--duration", "4", "--records", "400", within=110
        )
    assert code == 0, out[-2000:] + err[-2000:]
    assert "demo: OK" in out
    assert "missing 0, extra 0, stale 0" in out


async def test_backfill_beside_a_running_daemon_is_run_by_it_within_the_rate_limit(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """An account's rate limit is one budget: `backfill` while a daemon syncs the account hands
    the range to the daemon, follows its progress and exits 0 when it is complete; the vendor
    never sees more than its limit (no 429)."""
    sim = quiet_simulator(600, 2.0, seed=41, rate_limit=12, rate_period_s=1.0)
    url = await serve(served, sim)
    since = start_before(2.0)
    today = dt.datetime.now(IST).date()
    table = account_table(url, start=today, rate_limits={"list": "12/s"})
    config = write_config(tmp_path / "c.toml", dsn, [table])
    truth = await final_truth(sim)
    async with children(tmp_path) as kids:
        daemon = await kids.daemon(config)
        assert await daemon.wait_event("stream.owned", within=30), daemon.tail()
        code, out, err = await kids.command(
            "backfill", "--config", str(config), "--account", ACCOUNT, "--since",
            since.isoformat(), "--until", today.isoformat(), within=90,
        )  # fmt: skip
        assert await daemon.wait_event("backfill.finished", within=30), daemon.tail()
        # "Up to now", twice: the second request extends the first (finished by then), the
        # daemon runs it on from where it stopped, and the command ends.
        upto_now = []
        for _ in range(2):
            upto_now.append(await kids.command(
                "backfill", "--config", str(config), "--account", ACCOUNT, "--since",
                since.isoformat(), within=90,
            ))  # fmt: skip
        assert await daemon.terminate(10) == 0, daemon.tail()
    assert code == 0, out + err
    assert [c for c, _, _ in upto_now] == [0, 0], upto_now
    assert "a running daemon owns account" in err
    assert sim.stats.rate_limited == 0
    before_today = await converge(store, dsn, truth, within=1)
    assert before_today == IN_STEP


async def test_http_listen_port_in_use_is_a_clear_error(
    dsn: str, tmp_path: Path, served: list[RunningServer]
) -> None:
    """A daemon whose daemon.http_listen port is taken exits 1 naming the setting, no traceback."""
    import socket

    sim = quiet_simulator(10, 0.1, seed=43)
    url = await serve(served, sim)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.toml", dsn, [account_table(url)], http_listen=f"127.0.0.1:{port}"
        )
        async with children(tmp_path) as kids:
            code, out, err = await kids.command("run", "--config", str(config), within=30)
    assert code == 1, out + err
    assert "daemon.http_listen" in err
    assert "Traceback" not in out + err


async def test_systemd_notify_ready_status_watchdog_stopping(
    dsn: str, tmp_path: Path, served: list[RunningServer]
) -> None:
    """Under systemd (a real NOTIFY_SOCKET datagram socket) the daemon says READY=1 once
    started, a STATUS= summary after cycles, WATCHDOG=1 from its loop at half of WatchdogSec,
    and STOPPING=1 on SIGTERM."""
    import socket

    sim = quiet_simulator(200, 0.5, seed=47)
    url = await serve(served, sim)
    config = write_config(tmp_path / "c.toml", dsn, [account_table(url, start=start_before(0.5))])
    path = str(tmp_path / "notify.sock")
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)

        def said() -> list[str]:
            return [line for message in messages for line in message.splitlines()]

        def started() -> bool:
            seen = said()
            return (
                "READY=1" in seen
                and any(line.startswith("STATUS=1 streams") for line in seen)
                and seen.count("WATCHDOG=1") >= 5
            )

        async def drain(until: float, enough: Callable[[], bool] = lambda: False) -> None:
            while time.monotonic() < until and not enough():
                try:
                    messages.append(sock.recv(4096).decode())
                except BlockingIOError:
                    await asyncio.sleep(0.05)

        async with children(tmp_path) as kids:
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
            daemon = await kids.daemon(config, env=env)
            # Until it has said all of it (a loaded CI machine can take seconds to start Python).
            await drain(time.monotonic() + 30.0, started)
            assert await daemon.terminate(10) == 0, daemon.tail()
            await drain(time.monotonic() + 0.3)
    lines = said()
    assert "READY=1" in lines, lines
    assert any(line.startswith("STATUS=1 streams, 0 failing") for line in lines), lines
    assert lines.count("WATCHDOG=1") >= 5, lines  # every 0.2 s
    assert lines[-1] == "STOPPING=1", lines


async def test_status_exits_75_when_the_database_is_down(tmp_path: Path) -> None:
    """A monitoring check on `cdrsync status` fails (exit 75, "try again later") within its
    patience while PostgreSQL is unreachable, instead of hanging (`migrate` waits the same)."""
    config = write_config(
        tmp_path / "c.toml",
        "postgresql://cdrsync@127.0.0.1:1/nowhere",
        [account_table("http://127.0.0.1:1")],
    )
    async with children(tmp_path) as kids:
        code, out, err = await kids.command("status", "--config", str(config), within=60)
    assert code == 75, out + err
    assert "db.gave_up" in err and "database.dsn" in err
