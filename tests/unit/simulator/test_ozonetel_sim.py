"""The Ozonetel simulator's rules on a fake clock (no sockets): selection, limits, report types."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from cdrsync.simulator.ozonetel import (
    BULK_FIELDS,
    CALLBACK_FIELDS,
    OzonetelSimConfig,
    OzonetelSimulator,
    SimReply,
    report_serves,
)
from cdrsync.simulator.ozonetel_calls import hms, ist, ist_day, parse_ist
from cdrsync.vendors.ozonetel import IST, lookup_decision, normalize_bulk, normalize_callback

KEY = "sim-ozonetel-key"
T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=IST).timestamp()  # noon IST


class Clock:
    """A fake clock the simulator reads; tests move it by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def at(*args: int) -> float:
    """Epoch seconds of an IST wall-clock time."""
    return dt.datetime(*args, tzinfo=IST).timestamp()  # type: ignore[misc,arg-type]  # (year, month, day, ...)


def make(clock: Clock | None = None, **config: Any) -> tuple[OzonetelSimulator, Clock]:
    clock = clock or Clock()
    options: dict[str, Any] = {"backlog": 300, "backlog_days": 1.0, "live_per_minute": 30.0}
    options.update(config)
    return OzonetelSimulator(OzonetelSimConfig(**options), now=clock), clock


def body(first: str, last: str, user: str = "sim-user") -> bytes:
    return orjson.dumps({"fromDate": first, "toDate": last, "userName": user})


def bulk(sim: OzonetelSimulator, first: str, last: str, page: int = 1, size: int = 500) -> SimReply:
    query = {"pageNo": str(page), "pageSize": str(size)}
    return sim.handle_bulk("bulk", KEY, None, body(first, last), query)


# ---------------------------------------------------------------------------- data


def test_same_seed_same_calls_whatever_the_request_order():
    """Two simulators with one seed hold the same calls at the same instant."""
    a, clock_a = make()
    b, clock_b = make()
    clock_a.t = clock_b.t = T0 + 600
    a.truth(T0 + 100)  # materializing in steps changes nothing
    assert a.truth() == b.truth()
    assert make(seed=2)[0].truth() != a.truth(T0)


def test_records_have_the_vendor_shapes():
    """Bulk records carry the 47 documented fields; callback records echo the Apikey."""
    sim, _ = make()
    leg = sim.legs()[0]
    record = sim.truth()[leg.ucid]
    assert tuple(record) == BULK_FIELDS
    assert len(BULK_FIELDS) == 47
    leg = sim.legs()[-1]  # a call from today: the currentday report holds it
    callback = sim.lookup(leg.ucid, "currentday", T0)
    assert tuple(callback[0]) == CALLBACK_FIELDS
    assert callback[0]["Apikey"] == KEY
    assert callback[0]["monitorUCID"] == leg.ucid


def test_records_normalize_without_rejects():
    """Every simulated record passes the vendor module's normalizers."""
    sim, _ = make()
    fetched = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    for ucid, record in sim.truth().items():
        call = normalize_bulk(record, account="a", zone=IST, fetched_at=fetched)
        assert call.call_key == ucid
        assert call.started_at is not None and call.local_date is not None
    leg = sim.legs()[-1]
    push = normalize_callback(
        sim.lookup(leg.ucid, "currentday", T0)[0],
        account="a",
        zone=IST,
        fetched_at=fetched,
        source="push",
    )
    assert push.call_key == leg.ucid


def test_transfers_give_one_call_id_two_ucids():
    """With legs_fraction 1 every answered call has two legs sharing one CallID."""
    sim, _ = make(legs_fraction=1.0, answered_fraction=1.0, backlog=20)
    by_call: dict[str, list[str]] = {}
    for ucid, record in sim.truth().items():
        by_call.setdefault(record["CallID"], []).append(ucid)
    assert by_call and all(len(ucids) == 2 for ucids in by_call.values())


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "00:00:00"), (297, "00:04:57"), (90061, "25:01:01")]
)
def test_hms(seconds, text):
    """Durations are written "HH:MM:SS" (hours may pass 24)."""
    assert hms(seconds) == text


def test_ist_strings_round_trip():
    """IST strings and epochs convert both ways, and the IST day turns at IST midnight."""
    t = at(2026, 11, 20, 23, 59, 59)
    assert ist(t) == "2026-11-20 23:59:59"
    assert parse_ist(ist(t)) == t
    assert ist_day(t + 1) == ist_day(t) + 1
    assert parse_ist("2026-11-20T23:59:59") is None
    assert parse_ist("2026-02-30 10:00:00") is None


# ---------------------------------------------------------------------------- bulk


def test_selection_is_by_start_time_inclusive_of_both_bounds():
    """A call starting exactly on either bound is listed; a second later is not."""
    sim, _ = make()
    leg = sim.legs()[len(sim.legs()) // 2]
    stamp = ist(leg.start)
    on_both = bulk(sim, stamp, stamp).body["details"]
    assert leg.ucid in {r["UCID"] for r in on_both}
    after = bulk(sim, ist(leg.start + 1), ist(leg.start + 1)).body["details"]
    assert leg.ucid not in {r["UCID"] for r in after}


def test_pages_add_up_to_the_day_in_start_order():
    """Pages of one day, in order, are exactly that day's visible legs sorted by start, UCID."""
    sim, _ = make(bulk_rate_limit=1000)
    day = ist(T0)[:10]
    first = bulk(sim, f"{day} 00:00:00", f"{day} 23:59:59", 1, 7).body
    total = first["totalCount"]
    rows = list(first["details"])
    for page in range(2, total // 7 + 2):
        rows += bulk(sim, f"{day} 00:00:00", f"{day} 23:59:59", page, 7).body["details"]
    expected = [ucid for ucid, r in sim.truth().items() if r["StartTime"].startswith(day)]
    assert [r["UCID"] for r in rows] == expected
    assert isinstance(total, int) and total == len(expected) > 7
    assert [(r["StartTime"], r["UCID"]) for r in rows] == sorted(
        (r["StartTime"], r["UCID"]) for r in rows
    )


def test_page_size_is_cut_to_the_cap():
    """pageSize above max_page_size serves max_page_size rows."""
    sim, _ = make(max_page_size=5)
    day = ist(T0)[:10]
    reply = bulk(sim, f"{day} 00:00:00", f"{day} 23:59:59", 1, 50)
    assert len(reply.body["details"]) == 5 < reply.body["totalCount"]


def test_calls_appear_after_their_processing_delay():
    """A live call is listed only once it has ended and its delay has passed."""
    sim, clock = make(backlog=0, visible_delay_s=(30.0, 30.0))
    clock.t = T0 + 300
    leg = sim.legs()[-1]
    assert leg.ucid not in sim.truth(leg.end + 29)
    assert leg.ucid in sim.truth(leg.end + 30.5)


@pytest.mark.parametrize(
    ("days_back", "served"), [(0, True), (14, True), (15, True), (16, False), (30, False)]
)
def test_bulk_retention_is_an_empty_success(days_back, served):
    """Days before today minus 15 answer success with no rows; day today-15 is still served."""
    sim, _ = make(backlog=200, backlog_days=40.0)
    day = ist(T0 - days_back * 86400)[:10]
    reply = bulk(sim, f"{day} 00:00:00", f"{day} 23:59:59")
    assert reply.status == 200 and reply.body["status"] == "success"
    assert (reply.body["totalCount"] > 0) == served


FORMAT = "Invalid {} format. Please pass the date in the format yyyy-MM-dd HH:mm:ss"
SAME_DAY = "fromDate and toDate should be of same date"
BACKWARDS = "toDate should not be before fromDate"
FUTURE = "fromDate should not be a future date"


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"", "false", "Invalid Json Pass Valid Json"),
        (b"fromDate=2026-11-20", "false", "Invalid Json Pass Valid Json"),
        (body("", ""), "fail", "Missing fromDate and toDate"),
        (orjson.dumps({"userName": "sim-user"}), "fail", "Missing fromDate and toDate"),
        (body("2026/11/20 00:00", "2026-11-20 01:00:00"), "fail", FORMAT.format("fromDate")),
        (body("2026-11-20 00:00:00", "2026-11-20T01:00:00"), "fail", FORMAT.format("toDate")),
        (body("2026-11-19 00:00:00", "2026-11-20 01:00:00"), "fail", SAME_DAY),
        (body("2026-11-20 02:00:00", "2026-11-20 01:00:00"), "fail", BACKWARDS),
        (body("2026-11-20 12:00:01", "2026-11-20 13:00:00"), "fail", FUTURE),
    ],
)  # fmt: skip
def test_bulk_refusals_use_the_vendor_strings(payload, status, message):
    """Each malformed bulk request is answered 200 with the vendor's status and message."""
    sim, _ = make()
    reply = sim.handle_bulk("bulk", KEY, None, payload, {})
    assert reply == SimReply(200, {"message": message, "status": status})


@pytest.mark.parametrize(
    ("api_key", "user", "status", "message"),
    [
        (None, "sim-user", 401, "Missing userName or apiKey"),
        ("wrong-key", "sim-user", 401, "Missing userName or apiKey"),
        (KEY, "", 401, "Missing userName or apiKey"),
        (KEY, "someone", 401, "userName or apiKey is Invalid"),
    ],
)
def test_bulk_credentials(api_key, user, status, message):
    """The apiKey header and the body's userName must both match the account."""
    sim, _ = make()
    payload = body("2026-11-20 00:00:00", "2026-11-20 01:00:00", user)
    reply = sim.handle_bulk("bulk", api_key, None, payload, {})
    assert (reply.status, reply.body["message"]) == (status, message)


def test_bulk_limit_is_a_sliding_window_shared_by_both_reports():
    """Two requests per 60 s across both endpoints; the third gets 429 until one ages out."""
    sim, clock = make()
    first = body("2026-11-20 00:00:00", "2026-11-20 01:00:00")
    assert sim.handle_bulk("bulk", KEY, None, first, {}).status == 200
    clock.t += 30
    assert sim.handle_bulk("details", KEY, None, first, {}).status == 200
    clock.t += 29
    assert sim.handle_bulk("bulk", KEY, None, first, {}) == SimReply(
        429, {"status": "false", "message": "Too Many Requests"}
    )
    clock.t += 1.5  # the first request left the window
    assert sim.handle_bulk("bulk", KEY, None, first, {}).status == 200
    assert sim.stats.bulk_times == [T0, T0 + 30, T0 + 60.5]
    assert sim.stats.rate_limited == {"bulk": 1}
    assert sim.stats.responses == {"bulk": {200: 2, 429: 1}, "details": {200: 1}}


def test_token_mode_needs_a_live_token():
    """In token mode a request needs a Bearer from generateToken; an old one is Token Expired."""
    sim, clock = make(auth="token", token_ttl_s=100)
    payload = body("2026-11-20 00:00:00", "2026-11-20 01:00:00")
    assert sim.handle_bulk("bulk", KEY, None, payload, {}).status == 401
    token = sim.handle_token(KEY, b'{"userName": "sim-user"}').body["token"]
    assert sim.handle_bulk("bulk", KEY, f"Bearer {token}", payload, {}).status == 200
    clock.t += 100
    assert sim.handle_bulk("bulk", KEY, f"Bearer {token}", payload, {}) == SimReply(
        401, {"status": "false", "message": "Token Expired", "data": None}
    )
    assert sim.handle_bulk("bulk", KEY, "Bearer forged", payload, {}).body["message"] == (
        "Token Expired"
    )


def test_token_budget_and_credentials():
    """generateToken refuses a wrong key and allows 10 tokens in any hour."""
    sim, clock = make()
    wrong = sim.handle_token("nope", b'{"userName": "sim-user"}')
    assert wrong == SimReply(200, {"status": "false", "message": "userName or apiKey is Invalid"})
    for _ in range(10):
        assert "token" in sim.handle_token(KEY, b'{"userName": "sim-user"}').body
    assert sim.handle_token(KEY, b'{"userName": "sim-user"}').status == 429
    clock.t += 3600
    assert "token" in sim.handle_token(KEY, b'{"userName": "sim-user"}').body
    assert sim.stats.tokens_issued == 11


# ---------------------------------------------------------------------------- CallBacks


@pytest.mark.parametrize(
    ("start", "now", "currentday", "historical"),
    [
        (at(2026, 11, 20, 23, 50), at(2026, 11, 20, 23, 55), True, False),
        (at(2026, 11, 20, 23, 50), at(2026, 11, 21, 0, 10), False, False),
        (at(2026, 11, 20, 23, 50), at(2026, 11, 21, 2, 59, 59), False, False),
        (at(2026, 11, 20, 23, 50), at(2026, 11, 21, 3, 0), False, True),
        (at(2026, 11, 20, 0, 5), at(2026, 11, 22, 0, 10), False, True),
        (at(2026, 11, 20, 0, 5), at(2026, 12, 5, 23, 0), False, True),
        (at(2026, 11, 20, 0, 5), at(2026, 12, 6, 0, 1), False, False),
    ],
)
def test_report_types_follow_the_working_scenarios(start, now, currentday, historical):
    """currentday holds today's calls; historical older ones from 03:00 the next day, 15 days."""
    assert report_serves(start, "currentday", now, 15) is currentday
    assert report_serves(start, "historical", now, 15) is historical


@pytest.mark.parametrize("hour", [0, 1, 2, 3, 4, 12, 23])
def test_simulator_and_lookup_rules_agree(hour):
    """Whenever the vendor module decides to ask, the simulator's report holds the call."""
    start = at(2026, 11, 20, 22, 0)
    for day in range(20, 40):
        now = at(2026, 11, 1, hour, 30) + (day - 1) * 86400
        if now < start:
            continue
        decision = lookup_decision(
            dt.datetime.fromtimestamp(start, dt.UTC),
            dt.datetime.fromtimestamp(now, dt.UTC),
            zone=IST,
            retention=dt.timedelta(days=15),
        )
        for report in ("currentday", "historical"):
            expected = decision.action == "request" and decision.report_type == report
            assert report_serves(start, report, now, 15) is expected, (day, report)


def query(**overrides: str) -> dict[str, str]:
    base = {"userName": "sim-user", "apiKey": KEY, "ucid": "1", "reportType": "currentday"}
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"userName": ""}, "userName should not be empty"),
        ({"apiKey": ""}, "apiKey should not be empty"),
        ({"ucid": ""}, "ucid should not be empty"),
        ({"reportType": ""}, "reportType should not be empty"),
        ({"reportType": "yesterday"}, "Invalid reportType"),
        ({"ucid": "12ab"}, "ucid should be numeric only"),
        ({"apiKey": "wrong"}, "userName or apiKey is Invalid"),
        ({"userName": "other"}, "userName or apiKey is Invalid"),
    ],
)
def test_callbacks_errors_are_the_documented_strings(overrides, message):
    """Each documented CallBacks error comes back as {"status": "error", "message": ...}."""
    sim, _ = make()
    assert sim.handle_callbacks(query(**overrides)) == SimReply(
        200, {"message": message, "status": "error"}
    )


def test_callbacks_no_data_found_and_rate_limit():
    """An unknown UCID is "No Data Found with UCID x"; the 51st request in a minute is refused."""
    sim, clock = make(lookup_rate_limit=3)
    assert sim.handle_callbacks(query(ucid="42")).body == {
        "status": "success",
        "message": "No Data Found with UCID 42",
    }
    sim.handle_callbacks(query())
    sim.handle_callbacks(query())
    assert sim.handle_callbacks(query()).body == {
        "status": "error",
        "message": "max limit exceeded",
    }
    clock.t += 60
    assert sim.handle_callbacks(query()).body["status"] == "success"


def test_yesterdays_call_is_nowhere_between_midnight_and_three():
    """A call from yesterday is in neither report before 03:00 IST, then in historical."""
    sim, clock = make(backlog=0)
    clock.t = at(2026, 11, 20, 23, 0)
    leg = sim.legs()[-1]
    clock.t = at(2026, 11, 21, 1, 0)
    for report in ("currentday", "historical"):
        assert sim.handle_callbacks(query(ucid=leg.ucid, reportType=report)).body["message"] == (
            f"No Data Found with UCID {leg.ucid}"
        )
    clock.t = at(2026, 11, 21, 3, 0)
    found = sim.handle_callbacks(query(ucid=leg.ucid, reportType="historical")).body["message"]
    assert found[0]["monitorUCID"] == leg.ucid


# ---------------------------------------------------------------------------- live, pushes


def test_stop_live_makes_the_truth_final():
    """After stop_live no call is added and last_visible_time is finite."""
    sim, clock = make()
    assert sim.last_visible_time() == float("inf")
    clock.t = T0 + 120
    sim.stop_live()
    final = sim.last_visible_time()
    assert T0 < final < T0 + 130
    clock.t = T0 + 3600
    assert sim.truth() == sim.truth(final)
    assert all(leg.end <= T0 + 120 for leg in sim.legs())


def test_pushes_are_due_once_after_the_call_ends():
    """Each live leg is pushed once, push_delay_s after its call ended, with Apikey and UCID."""
    sim, clock = make(backlog=50, push_delay_s=5.0, legs_fraction=0.5)
    clock.t = T0 + 60
    due = sim.due_pushes()
    assert due and sim.due_pushes() == []
    live = [leg for leg in sim.legs(T0 + 3600) if leg.live]
    call_end = {leg.call_id: max(x.end for x in live if x.call_id == leg.call_id) for leg in live}
    expected = {leg.ucid for leg in live if call_end[leg.call_id] + 5.0 <= clock.t}
    assert {ucid for ucid, _ in due} == expected
    for ucid, payload in due:
        record = orjson.loads(payload)
        assert record["UCID"] == record["monitorUCID"] == ucid
        assert record["Apikey"] == KEY


@pytest.mark.parametrize("transfer_legs", [False, True])
def test_transfer_legs_share_the_first_legs_monitor_ucid(transfer_legs: bool) -> None:
    """transfer_legs: a later leg names the first leg's UCID as monitorUCID, and its push adds
    its own UCID, which the first leg's push lacks (like a real 2018 push); else each its own."""
    sim, clock = make(backlog=50, legs_fraction=1.0, answered_fraction=1.0,
                      transfer_legs=transfer_legs)  # fmt: skip
    clock.t = T0 + 60
    sim.stop_live()
    pushes = {ucid: orjson.loads(payload) for ucid, payload in sim.due_pushes(T0 + 3600)}
    legs = sim.legs(T0 + 3600)
    later = [leg for leg in legs if any(x.call_id == leg.call_id and x.start < leg.start
                                        for x in legs)]  # fmt: skip
    assert later and pushes
    answered = set()
    for leg in legs:
        first = min((x for x in legs if x.call_id == leg.call_id), key=lambda x: x.start)
        monitor = first.ucid if transfer_legs else leg.ucid
        asked = sim.lookup(leg.ucid, "currentday" if leg.live else "historical", T0 + 3600)
        assert [r["monitorUCID"] for r in asked] in ([], [monitor])
        if asked:
            answered.add(leg.ucid)
        if leg.ucid in pushes:
            push = pushes[leg.ucid]
            assert push["monitorUCID"] == monitor
            shown = not transfer_legs or leg.ucid != monitor
            assert push.get("UCID") == (leg.ucid if shown else None)
    assert answered & {leg.ucid for leg in later}, "CallBacks answered no later leg"


def test_dropped_pushes_are_never_sent():
    """push_drop 1 means the vendor never pushes: only the poller can find the calls."""
    sim, clock = make(push_drop=1.0)
    clock.t = T0 + 120
    assert sim.due_pushes() == []
    assert sim.stats.pushes_dropped > 0


@pytest.mark.parametrize(
    ("changes", "error"),
    [({"fault_5xx": 2.0}, ValueError), ({"nonsense": 1}, ValueError),
     ({"bulk_rate_limit": 0}, ValueError), ({"fault_5xx": "x"}, TypeError)],
)  # fmt: skip
def test_fault_settings_are_checked(changes, error):
    """Fault changes outside their range or of the wrong type are refused."""
    sim, _ = make()
    with pytest.raises(error):
        sim.set_faults(**changes)


def test_faults_break_responses():
    """fault_5xx answers 503; fault_truncated cuts a success body."""
    sim, _ = make(bulk_rate_limit=100)
    payload = body("2026-11-20 00:00:00", "2026-11-20 12:00:00")
    sim.set_faults(fault_5xx=1.0)
    assert sim.handle_bulk("bulk", KEY, None, payload, {}).status == 503
    sim.set_faults(fault_5xx=0.0, fault_truncated=1.0)
    cut = sim.handle_bulk("bulk", KEY, None, payload, {})
    assert cut.status == 200 and isinstance(cut.body, bytes)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut.body)


@pytest.mark.parametrize(
    ("shape", "empty", "busy_total"),
    [
        ("details", {"status": "success", "message": "Data fetched successfully", "details": [],
                     "totalCount": 0}, int),
        ("no_data", {"status": "success", "message": "No Data Found"}, int),
        ("string_total", {"status": "success", "message": "Data fetched successfully",
                          "totalCount": "0"}, str),
    ],
)  # fmt: skip
def test_empty_shape_serves_each_reading_of_an_empty_window(shape, empty, busy_total):
    """empty_shape picks how a quiet window is answered; a busy one keeps its details."""
    sim, _ = make(backlog=200, backlog_days=40.0, empty_shape=shape)
    old = ist(T0 - 30 * 86400)[:10]  # past the horizon: nothing served
    assert bulk(sim, f"{old} 00:00:00", f"{old} 23:59:59").body == empty
    today = ist(T0)[:10]
    busy = bulk(sim, f"{today} 00:00:00", ist(T0)).body
    assert busy["details"] and isinstance(busy["totalCount"], busy_total)
