"""The Acefone simulator's records over time: determinism, visibility, changes, windows, order."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator, QueryError

IST = ZoneInfo("Asia/Kolkata")
T0 = 1_714_657_800.0  # 2024-05-02 19:20:00 IST


class Clock:
    """A fake clock the simulator reads; tests move it by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(clock: Clock | None = None, **overrides: object) -> AcefoneSimulator:
    """A small simulator on a fake clock started at T0."""
    settings: dict[str, object] = {"backlog": 300, "backlog_days": 0.5, **overrides}
    return AcefoneSimulator(AcefoneSimConfig(**settings), now=clock or Clock(), t0=T0)  # type: ignore[arg-type]


def ist(epoch: float) -> str:
    """The vendor's naive IST string of an instant."""
    return dt.datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M:%S")


def start_of(payload: dict[str, object]) -> float:
    """A well-formed record's start instant, read back from its IST date and time."""
    naive = dt.datetime.fromisoformat(f"{payload['date']} {payload['time']}")
    return naive.replace(tzinfo=IST).timestamp()


def end_of(payload: dict[str, object]) -> float:
    """A record's end instant from its IST end_stamp."""
    return dt.datetime.fromisoformat(str(payload["end_stamp"])).replace(tzinfo=IST).timestamp()


def page(
    sim: AcefoneSimulator, first: str, last: str, page_no: int = 1, limit: int = 100
) -> dict[str, Any]:
    """One decoded page of the list endpoint."""
    return json.loads(sim.list_page(first, last, str(page_no), str(limit)))


def all_pages(sim: AcefoneSimulator, first: str, last: str) -> list[dict[str, Any]]:
    """Every row of a window, paging until a short page."""
    rows: list[dict[str, Any]] = []
    for n in range(1, 10_000):
        body = page(sim, first, last, n)
        rows += body["results"]
        if body["size"] < body["limit"]:
            return rows
    raise AssertionError("paging did not end")


def test_same_seed_gives_same_truth_and_another_seed_differs():
    """Two simulators with one seed hold identical records; another seed holds other ones."""
    clock = Clock(T0 + 600)
    a, b, c = make(clock), make(clock), make(clock, seed=2)
    assert a.truth() == b.truth()
    assert len(a.truth()) > 300
    assert not a.truth().keys() & c.truth().keys()


def test_ids_are_unique_objectid_like_and_call_ids_epoch_seq():
    """Every id is 24 hex digits, unique; call_id is "<start epoch>.<seq>"; uuid is 13 hex."""
    truth = make(Clock(T0 + 3600), backlog=2000).truth()
    assert len({p["call_id"] for p in truth.values()}) == len(truth)
    for key, p in truth.items():
        assert p["id"] == key
        assert len(key) == 24
        int(key, 16)
        epoch, _, seq = str(p["call_id"]).partition(".")
        assert int(epoch) == start_of(p)
        assert seq.isdigit()
        assert len(str(p["uuid"])) == 13


def test_records_look_like_the_documented_sample():
    """Each record has every field of the vendor's sample, with consistent durations and urls."""
    sample_keys = {
        "id", "call_id", "uuid", "direction", "description", "detailed_description", "status",
        "blocked_number_id", "recording_url", "service", "date", "time", "end_stamp",
        "broadcast_id", "dtmf_input", "call_duration", "answered_seconds", "minutes_consumed",
        "charges", "department_name", "agent_number", "agent_number_with_prefix", "agent_name",
        "client_number", "did_number", "reason", "hangup_cause", "notes", "contact_details",
        "missed_agents", "call_flow", "accountid", "agent_ring_time", "circle",
        "agent_hangup_data", "transfer_missed_agent", "call_hint", "support_api_call", "lead_id",
        "is_incoming_from_broadcast", "caller_id_num", "sip_agent_ids", "dialer_call_details",
        "custom_status", "voicemail_recording", "aws_call_recording_identifier",
    }  # fmt: skip
    truth = make(Clock(T0 + 7200), backlog=1000, change_fraction=0.0).truth()
    statuses = [p["status"] for p in truth.values()]
    assert 0.6 < statuses.count("answered") / len(statuses) < 0.8
    for p in truth.values():
        assert set(p) == sample_keys
        assert end_of(p) - start_of(p) == p["call_duration"]
        if p["status"] == "answered":
            assert str(p["recording_url"]).startswith(
                f"https://customer.servetel.in/file/recording?callId={p['call_id']}&type=rec&token="
            )
            assert 0 < p["answered_seconds"] <= p["call_duration"]
        else:
            assert p["recording_url"] is None
            assert p["answered_seconds"] == 0
        assert p["call_flow"][-1]["type"] == "hangup"


def test_default_backlog_has_rows_appearing_after_t0():
    """With default settings most of the backlog is visible at t0, and a few rows appear later."""
    sim = AcefoneSimulator(AcefoneSimConfig(live_per_minute=0), now=Clock(), t0=T0)
    assert 1900 < len(sim.truth(T0)) < 2000
    assert len(sim.truth(T0 + 900)) == 2000
    assert T0 < sim.last_visible_time() <= T0 + 900 + 600


def test_backlog_is_partly_hidden_at_t0_and_fully_visible_later():
    """At t0 most of the backlog is visible, but calls that ended just before are not yet."""
    sim = make(Clock(T0), live_per_minute=0, backlog=2000, backlog_days=0.1)
    at_t0 = sim.truth(T0)
    assert 1500 < len(at_t0) < 2000
    assert len(sim.truth(T0 + 1000)) == 2000
    assert all(start_of(p) < T0 and end_of(p) < T0 for p in sim.truth(T0 + 1000).values())


@pytest.mark.parametrize("late_fraction", [0.0, 1.0])
def test_late_records_stay_hidden_for_their_delay(late_fraction):
    """A late record appears only its late delay after its end; others within seconds."""
    sim = make(backlog=0, live_per_minute=60, late_fraction=late_fraction)
    at = T0 + 170
    truth = sim.truth(at)
    if late_fraction:
        assert truth == {}  # every call ended less than 180 s (the shortest late delay) ago
        later = sim.truth(T0 + 1200)
        assert later
        assert all(end_of(p) + 180 <= T0 + 1200 for p in later.values())
    else:
        assert len(truth) > 150
        assert all(end_of(p) + 2 <= at for p in truth.values())


def test_changes_apply_at_their_time():
    """A changed record shows version 1 until its change time, then exactly one field differs."""
    sim = make(
        backlog=400, backlog_days=0.01, live_per_minute=0, late_fraction=0.0,
        change_fraction=1.0, change_delay_s=(1000.0, 2000.0),
    )  # fmt: skip
    early = sim.truth(T0 + 60)  # everything visible (by T0 + 8), no change yet (>= T0 + 136)
    settled = sim.truth(sim.last_visible_time())
    middle = sim.truth(T0 + 1800)
    assert early.keys() == middle.keys() == settled.keys()
    assert 0 < sum(middle[k] != early[k] for k in early) < len(early)
    assert early.keys() <= settled.keys()
    changed = 0
    for key, before in early.items():
        after = settled[key]
        diff = {k for k in after if after[k] != before[k]}
        assert diff <= {"recording_url", "notes", "custom_status"}
        changed += bool(diff)
        if "recording_url" in diff:
            assert before["recording_url"] == ""
            assert str(after["recording_url"]).startswith("https://")
        if "notes" in diff or "custom_status" in diff:
            assert before["notes"] is None
            assert before["custom_status"] is None
    assert changed == len(early) == 400
    assert all(p["recording_url"] != "" for p in settled.values())


def test_stop_live_makes_the_truth_finite():
    """With live traffic the truth keeps growing; after stop_live it stops at a known time."""
    clock = Clock(T0 + 600)
    sim = make(clock, live_per_minute=30)
    assert sim.last_visible_time() == math.inf
    before = len(sim.truth())
    sim.stop_live()
    last = sim.last_visible_time()
    assert T0 + 600 < last < T0 + 600 + 900 + 600  # latest appearance, then latest change
    final = sim.truth(last)
    assert len(final) > before
    assert final == sim.truth(last + 86400)
    assert sim.truth(last - 0.001) != final


def test_stop_live_in_the_past_removes_calls_that_ended_after_it():
    """stop_live(at) removes live calls already created that ended after ``at``."""
    clock = Clock(T0 + 1200)
    sim = make(clock, backlog=0, live_per_minute=60, late_fraction=0.0)
    assert len(sim.truth()) > 1000 / 60 * 60 * 0.9
    sim.stop_live(T0 + 600)
    assert all(end_of(p) <= T0 + 600 for p in sim.truth().values())
    assert 500 < len(sim.truth()) < 620


def test_window_bounds_are_inclusive_ist_start_times():
    """from_date/to_date select calls by IST start, both bounds included to the second."""
    sim = make(Clock(T0 + 3600), live_per_minute=0, backlog=2000, backlog_days=0.1)
    truth = sim.truth()
    target = sorted(truth.values(), key=start_of)[1000]
    second = f"{target['date']} {target['time']}"
    exact = page(sim, second, second)
    assert target["id"] in {r["id"] for r in exact["results"]}
    assert all(f"{r['date']} {r['time']}" == second for r in exact["results"])
    after = ist(start_of(target) + 1)
    assert target["id"] not in {r["id"] for r in page(sim, after, ist(T0))["results"]}
    # The whole backlog lies in these IST bounds; read as UTC they would select nothing.
    whole = page(sim, ist(T0 - 0.1 * 86400), ist(T0))
    assert whole["count"] == len(truth)
    utc = [
        dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") for t in (T0 - 3600, T0)
    ]
    assert page(sim, utc[0], utc[1])["count"] == 0


def test_pages_are_newest_first_then_id_descending():
    """Rows come by start time descending, ties broken by id descending, with no repeats."""
    sim = make(Clock(T0 + 3600), live_per_minute=0, backlog=3000, backlog_days=0.05)
    rows = all_pages(sim, ist(T0 - 86400), ist(T0))
    keys = [(start_of(r), r["id"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert len({r["id"] for r in rows}) == len(rows) == len(sim.truth())
    assert len(keys) > len({k[0] for k in keys})  # some starts share a second: ties were tested


def test_paging_window_equals_truth_of_that_window():
    """Paging a closed window yields exactly the truth's records that started in it."""
    sim = make(Clock(T0 + 7200), backlog=2000, backlog_days=0.2, malformed_fraction=0.0)
    first, last = T0 - 3 * 3600, T0 + 1800
    rows = all_pages(sim, ist(first), ist(last))
    expected = {k for k, p in sim.truth().items() if first <= start_of(p) <= last}
    assert [r["id"] for r in rows if r["id"] in expected] == [r["id"] for r in rows]
    assert {r["id"] for r in rows} == expected
    truth = sim.truth()
    assert {r["id"]: r for r in rows} == {k: truth[k] for k in expected}


def test_limit_is_clamped_and_pages_report_their_size():
    """limit above max_limit is served as max_limit; page past the end is empty but counted."""
    sim = make(Clock(T0 + 3600), backlog=500)
    body = page(sim, ist(T0 - 86400), ist(T0), 1, 500)
    assert (body["limit"], body["size"], body["page"]) == (100, 100, 1)
    beyond = page(sim, ist(T0 - 86400), ist(T0), 99, 100)
    assert (beyond["size"], beyond["results"], beyond["count"]) == (0, [], body["count"])
    assert page(sim, ist(T0 - 86400), ist(T0), 1, 0)["limit"] == 1
    assert json.loads(sim.list_page(ist(T0 - 86400), ist(T0)))["limit"] == 20


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (None, "2024-05-02 10:00:00"),
        ("2024-05-02", "2024-05-02 10:00:00"),
        ("2024-05-02 10:00:00", "2024-13-02 10:00:00"),
        ("2024-05-02T10:00:00", "2024-05-02 11:00:00"),
    ],
)
def test_bad_or_missing_dates_are_refused(first, last):
    """A missing or malformed from_date/to_date is a 400-style QueryError naming the field."""
    with pytest.raises(QueryError, match="date"):
        make().list_page(first, last)


def _parser_rejects(p: dict[str, object]) -> bool:
    """What a normalizer would do with the record: True when it must be rejected."""
    try:
        dt.datetime.fromisoformat(f"{p['date']} {p['time']}")
        return not isinstance(p["call_duration"], int)
    except (KeyError, ValueError):
        return True


def test_malformed_records_are_broken_the_way_a_parser_notices():
    """Malformed records keep a valid id but a bad date, a non-numeric duration or no time."""
    sim = make(Clock(T0 + 3600), backlog=1000, live_per_minute=0, malformed_fraction=0.2)
    truth = sim.truth()
    bad = sim.malformed_ids()
    assert 120 < len(bad) < 300
    assert {k for k, p in truth.items() if _parser_rejects(p)} == bad
    kinds = {
        "date" if truth[k]["date"] == "2024-13-45" else "time" if "time" not in truth[k] else "dur"
        for k in bad
    }
    assert kinds == {"date", "time", "dur"}
    assert make(Clock(T0 + 3600), backlog=1000).malformed_ids() == set()


def test_faults_and_rate_limit_decisions_are_deterministic():
    """Same seed and request sequence meet the same faults; 429s do not enter the window."""

    def statuses(seed: int) -> list[int]:
        clock = Clock()
        sim = make(clock, seed=seed, fault_5xx=0.5, rate_limit=5, rate_period_s=10.0)
        out = []
        for _ in range(30):
            out.append(sim.admit_list_request("Bearer sim-token").status)
            clock.t += 2.0
        return out

    first = statuses(7)
    assert first == statuses(7)
    assert first != statuses(8)
    assert {200, 503} <= set(first)
    assert 429 not in first  # one request each 2 s never exceeds 5 per 10 s
    clock = Clock()
    sim = make(clock, rate_limit=2, rate_period_s=10.0)
    got = [sim.admit_list_request("Bearer sim-token") for _ in range(4)]
    assert [a.status for a in got] == [200, 200, 429, 429]
    assert got[2].retry_after == 10
    clock.t += 10.0
    assert sim.admit_list_request("Bearer sim-token").status == 200
    assert sim.stats.request_times == [T0, T0, T0 + 10.0]
    assert sim.admit_list_request("Bearer wrong").status == 401


def test_construction_of_a_large_backlog_is_compact():
    """A 200 000-record backlog builds into arrays (tens of bytes a record), not dicts."""
    sim = make(backlog=200_000, backlog_days=3.0)
    table = sim._table
    size = sum(col.itemsize * len(col) for col in (table.starts, table.durs, table.rings,
               table.vis, table.change_at, table.serials, table.flags))  # fmt: skip
    assert len(table) == 200_000
    assert size / len(table) < 64
    assert list(table.starts) == sorted(table.starts)


@pytest.mark.parametrize(
    ("count_mode", "limit_cap", "sizes"),
    [
        ("total", None, [100, 100, 100]),
        ("page", None, [100, 100, 100]),
        ("total", 20, [20, 20, 20]),
        ("page", 20, [20, 20, 20]),
    ],
)
def test_count_mode_and_limit_cap_serve_the_other_readings(count_mode, limit_cap, sizes):
    """count_mode="page" counts the page's rows; limit_cap serves fewer rows than asked while
    echoing the asked limit; pages still tile the window without gap or overlap."""
    sim = make(Clock(T0 + 3600), backlog=500, count_mode=count_mode, limit_cap=limit_cap)
    window = ist(T0 - 86400), ist(T0)
    bodies = [page(sim, *window, n, 100) for n in (1, 2, 3)]
    plain = make(Clock(T0 + 3600), backlog=500)
    listed = [r["id"] for n in (1, 2, 3) for r in page(plain, *window, n, 100)["results"]]
    assert [b["size"] for b in bodies] == sizes
    assert {b["limit"] for b in bodies} == {100}
    counts = [b["count"] for b in bodies]
    assert counts == (sizes if count_mode == "page" else [page(plain, *window)["count"]] * 3)
    # The capped pages are the first rows of the plain listing, in order: no gap, no overlap.
    assert [r["id"] for b in bodies for r in b["results"]] == listed[: sum(sizes)]
