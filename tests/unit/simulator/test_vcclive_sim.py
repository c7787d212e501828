"""The VCC Live simulator's rules, driven by a fake clock (pure: no sockets, no sleeps)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import orjson
import pytest

from cdrsync.config import AccountSettings, parse
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator, local_day
from cdrsync.simulator.vcclive_server import due_webhooks
from cdrsync.vendors.vcclive import parse_day_page, parse_push, parse_record_detail

BUD = zoneinfo.ZoneInfo("Europe/Budapest")
# 2026-03-29 01:00 UTC: Budapest moves from UTC+1 to UTC+2.
DST_T0 = dt.datetime(2026, 3, 29, 12, 0, tzinfo=dt.UTC).timestamp()
T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()


def account() -> AccountSettings:
    """A VCC Live account with the simulator's zone."""
    acc = {"name": "cc-hu", "vendor": "vcclive", "base_url": "http://127.0.0.1:1",
           "username": "sim-cc", "api_key": "sim-vcc-token", "start": "2026-11-01"}  # fmt: skip
    return parse(
        {"daemon": {"state_dir": "/tmp", "http_listen": ""}, "accounts": [acc]},
        source="<test>",
        environ={},
    ).accounts[0]


class Clock:
    """A hand-driven clock in epoch seconds."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(t0: float = T0, **config: Any) -> tuple[VccSimulator, Clock]:
    clock = Clock(t0)
    return VccSimulator(VccSimConfig(**config), now=clock, t0=t0), clock


def days_of(sim: VccSimulator) -> set[dt.date]:
    return {local_day(c.start, BUD) for c in sim.calls()}


def whole_day(sim: VccSimulator, day: dt.date, **query: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        response = sim.list_cdrs(day.year, day.month, day.day, start=len(rows), num=97, **query)
        rows += response["rows"]
        if not response["rows"]:
            return rows


def test_same_seed_same_calls() -> None:
    """The simulator is a pure function of seed and time."""
    one, clock_one = make(backlog=50)
    two, clock_two = make(backlog=50)
    clock_one.t = clock_two.t = T0 + 900
    assert one.truth() == two.truth()
    assert len(one.truth()) > 50  # live calls were added
    other, _ = make(backlog=50, seed=2)
    assert set(other.truth(T0)) != set(one.truth(T0))


def test_day_partition_is_local_across_dst() -> None:
    """Each call is listed under its LOCAL start day, also around the DST change; the days'
    lists add up to the truth, and totalCount is a string counting the whole day."""
    sim, _ = make(DST_T0, backlog=1500, backlog_days=3.0, live_per_minute=0)
    truth = sim.truth()
    listed: dict[str, dict[str, Any]] = {}
    crossing = 0
    for day in sorted(days_of(sim)):
        rows = whole_day(sim, day)
        total = sim.list_cdrs(day.year, day.month, day.day, num=1)["totalCount"]
        assert total == str(len(rows))
        for row in rows:
            assert row["start_ts"].startswith(day.isoformat())
            utc = dt.datetime.fromisoformat(row["start_ts_utc"]).replace(tzinfo=dt.UTC)
            assert utc.astimezone(BUD).date() == day
            crossing += utc.date() != day
        listed |= {row["uuid"]: row for row in rows}
    assert listed == truth
    assert crossing > 0  # calls between local midnight and UTC midnight exist and were listed


def test_month_listing_and_project_filter() -> None:
    """Without a day the whole local month is listed; projectid narrows it."""
    sim, _ = make(backlog=200, live_per_minute=0)
    month = sim.list_cdrs(2026, 11, None, num=500)
    assert int(month["totalCount"]) == len(sim.truth())
    only = sim.list_cdrs(2026, 11, None, num=500, projectid=134)
    assert {r["projectid"] for r in only["rows"]} == {134}
    assert 0 < int(only["totalCount"]) < int(month["totalCount"])


def test_num_defaults_to_10_and_is_capped() -> None:
    """num defaults to 10 (documented) and a larger num is capped at max_page_size."""
    sim, _ = make(backlog=400, backlog_days=1.0, live_per_minute=0, max_page_size=50)
    day = max(days_of(sim), key=lambda d: len(whole_day(sim, d)))
    assert len(sim.list_cdrs(day.year, day.month, day.day)["rows"]) == 10
    assert len(sim.list_cdrs(day.year, day.month, day.day, num=1000)["rows"]) == 50


def test_cdr_is_404_until_processed() -> None:
    """A call appears in the list and by uuid only once processed; wrong month is a 404."""
    sim, clock = make(backlog=0, live_per_minute=6, processing_delay_s=(60.0, 60.0))
    clock.t = T0 + 300
    call = next(c for c in sim.calls() if c.processed_at > clock.t)
    local = dt.datetime.fromtimestamp(call.start, BUD)
    assert sim.lookup_cdr(local.year, local.month, call.uuid) is None
    assert call.uuid not in {r["uuid"] for r in whole_day(sim, local.date())}
    clock.t = call.processed_at
    assert sim.lookup_cdr(local.year, local.month, call.uuid) == sim.cdr(call)
    assert call.uuid in {r["uuid"] for r in whole_day(sim, local.date())}
    assert sim.lookup_cdr(local.year, local.month % 12 + 1, call.uuid) is None
    assert sim.stats.lookup_times[call.uuid] == [T0 + 300, call.processed_at, call.processed_at]


@pytest.mark.parametrize("order", ["start", "processed", "shuffled-stable"])
def test_list_orders_are_stable(order: str) -> None:
    """Each list order gives the same rows in the same order on every read."""
    sim, _ = make(backlog=300, backlog_days=1.0, live_per_minute=0, list_order=order)
    day = max(days_of(sim), key=lambda d: len(whole_day(sim, d)))
    first, second = whole_day(sim, day), whole_day(sim, day)
    assert [r["uuid"] for r in first] == [r["uuid"] for r in second]
    if order == "start":
        keys = [(r["start_ts_utc"], r["uuid"]) for r in first]
        assert keys == sorted(keys)


def test_late_reorder_changes_order_between_reads() -> None:
    """The late_reorder fault reshuffles a day between reads; the set stays the same."""
    sim, _ = make(backlog=300, backlog_days=1.0, live_per_minute=0, late_reorder=1.0)
    day = max(days_of(sim), key=lambda d: len(whole_day(sim, d)))
    reads = [sim.list_cdrs(day.year, day.month, day.day, num=500)["rows"] for _ in range(2)]
    assert [r["uuid"] for r in reads[0]] != [r["uuid"] for r in reads[1]]
    assert {r["uuid"] for r in reads[0]} == {r["uuid"] for r in reads[1]}


def test_vendor_parser_reads_the_simulated_day() -> None:
    """The vendor module reads the simulator's pages: no rejects, keys in row order."""
    sim, _ = make(backlog=100, live_per_minute=0)
    day = max(days_of(sim))
    response = sim.list_cdrs(day.year, day.month, day.day, num=500)
    body = orjson.dumps({"response": response, "errors": []})
    page = parse_day_page(
        body, account="a", stream="s", zone=BUD, fetched_at=dt.datetime.now(dt.UTC)
    )
    assert page.rejects == ()
    assert page.keys == tuple(r["uuid"] for r in response["rows"])
    assert {r.local_date for r in page.records} == {day}
    for record, row in zip(page.records, response["rows"], strict=True):
        assert record.duration_s == row["ringtime"] + row["billingtime"]


def test_add_records_numbering_and_validation() -> None:
    """Added records get sequential numberids after the generated records; a record
    without form fails the whole request and stores nothing; an unknown project is 404."""
    sim, _ = make(backlog=0, live_per_minute=0, records=50)
    first = sim.add_records(134, [{"form": {"name": "Peter"}}])
    assert first is not None and first.numberids == (51,)
    both = sim.add_records(3, [{"form": {"name": "A"}}, {"form": {"name": "B"}}])
    assert both is not None and both.numberids == (52, 53)
    refused = sim.add_records(3, [{"form": {"name": "C"}}, {"contacts": {}}])
    assert refused is not None and refused.numberids == ()
    assert refused.errors[0]["message"] == "record 1: form is required"
    assert sim.add_records(999, [{"form": {}}]) is None
    assert [(p, n) for p, n, _ in sim.added_records()] == [(134, 51), (3, 52), (3, 53)]


def test_add_fault_stores_then_fails() -> None:
    """add_fault_next answers the next add with a failure although it was stored."""
    sim, _ = make(backlog=0, live_per_minute=0, records=10)
    sim.set_faults(add_fault_next=1, add_delay_s=0.5)
    lost = sim.add_records(3, [{"form": {"name": "A"}}])
    again = sim.add_records(3, [{"form": {"name": "B"}}])
    assert lost is not None and (lost.fail_after_store, lost.delay_s) == (True, 0.5)
    assert again is not None and not again.fail_after_store
    assert len(sim.added_records()) == 2


def test_added_record_detail() -> None:
    """An added record reads back with its form as data and its disposition as an event."""
    sim, _ = make(backlog=0, live_per_minute=0, records=10)
    payload = {
        "form": {"name": "Peter Green", "city": "Budapest"},
        "disposition": {"dispositionid": "1", "userid": "7"},
    }
    result = sim.add_records(134, [payload])
    assert result is not None
    (numberid,) = result.numberids
    detail = sim.record_detail(134, numberid)
    assert detail is not None and detail["data"] == payload["form"]
    assert [e["userid"] for e in sim.events_of(134, numberid)] == ["7"]
    assert sim.record_detail(3, numberid) is None


@pytest.mark.parametrize("dash", [False, True])
def test_record_detail_events_follow_dispositions(dash: bool) -> None:
    """Disposed calls become events of their record (both documented time shapes), and the
    vendor parser reads them back."""
    sim, clock = make(backlog=0, live_per_minute=6, dash_times=dash, records=3)
    clock.t = T0 + 3600
    call = next(c for c in sim.calls() if c.dispose_at < clock.t - 300)
    detail = sim.record_detail(call.projectid, call.numberid)
    assert detail is not None
    body = orjson.dumps({"response": detail, "errors": []})
    events, records = parse_record_detail(
        body, account="a", projectid=call.projectid, numberid=call.numberid, zone=BUD,
        fetched_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    mine = [e for e in events if e.call_uuid == call.uuid]
    assert len(mine) == 1
    assert mine[0].created_at == dt.datetime.fromtimestamp(int(call.dispose_at), dt.UTC)
    assert call.uuid in {r.call_key for r in records}
    assert (":" in detail["events"][0]["create_date"][11:]) != dash


def test_webhooks_for_disposed_calls_only() -> None:
    """Disposition webhooks go out for a fraction of agent-handled calls once disposed, and
    the vendor's push parser reads every one."""
    sim, clock = make(backlog=0, live_per_minute=20, webhook_fraction=0.7)
    clock.t = T0 + 3600
    due = due_webhooks(sim)
    calls = {c.uuid: c for c in sim.calls()}
    agent_calls = [c for c in calls.values() if c.userid > 0 and c.dispose_at <= clock.t]
    assert 0.5 * len(agent_calls) < len(due) < 0.9 * len(agent_calls)
    acc = account()
    for call_uuid, payload in due:
        assert calls[call_uuid].userid > 0
        result = parse_push(payload, account=acc, received_at=dt.datetime.now(dt.UTC))
        assert result.records[0].started_at == dt.datetime.fromtimestamp(
            calls[call_uuid].start, dt.UTC
        )
    sim.hooks_done.update(u for u, _ in due)
    assert due_webhooks(sim) == []


def test_stop_live_makes_truth_final() -> None:
    """After stop_live nothing new appears once last_visible_time has passed."""
    sim, clock = make(backlog=20, live_per_minute=10)
    assert sim.last_visible_time() == float("inf")
    clock.t = T0 + 600
    sim.stop_live()
    final = sim.last_visible_time()
    assert T0 + 600 <= final < T0 + 600 + 200
    clock.t = final
    settled = sim.truth()
    clock.t = final + 3600
    assert sim.truth() == settled
    assert all(c.end <= T0 + 600 for c in sim.calls())


def test_config_is_checked() -> None:
    """Nonsense settings are refused at construction."""
    for bad in ({"list_order": "random"}, {"late_reorder": 2.0}, {"records": 0},
                {"processing_delay_s": (5.0, 1.0)}, {"timezone": "Mars/Olympus"}):  # fmt: skip
        with pytest.raises((ValueError, zoneinfo.ZoneInfoNotFoundError)):
            VccSimConfig(**bad)
