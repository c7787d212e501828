"""VCC Live parsing, normalizing, push handling and lookup schedule (pure)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from typing import Any

import orjson
import pytest

from cdrsync.config import AccountSettings, parse
from cdrsync.errors import BadPageError, ParseError, PermanentError
from cdrsync.http.transport import Response, error_for_status
from cdrsync.model import LookupItem
from cdrsync.vendors.vcclive import (
    AddInDoubt,
    VccLookups,
    add_records_body,
    cdr_path,
    day_path,
    lookup_months,
    lookup_schedule,
    normalize,
    parse_add_result,
    parse_cdr,
    parse_day_page,
    parse_push,
    parse_record_data,
    parse_record_detail,
    record_path,
    records_path,
    unwrap,
)
from cdrsync.vendors.vcclive_errors import cdr_errors_kind

BUD = zoneinfo.ZoneInfo("Europe/Budapest")
FETCHED = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
UTC = dt.UTC

DOC_CDR = {  # the "Get CDR log for a specified uuid" example response, verbatim
    "uuid": "95bd5f46-44e0-11e5-a6da-6547f8762750",
    "source": "36013555539",
    "destination": "36003333333",
    "userid": 6,
    "numberid": 11,
    "start_ts": "2015-08-17 15:05:08",
    "billing_ts": "2015-08-17 15:05:17",
    "ringtime": 9,
    "billingtime": 3,
    "talktime": 3,
    "queuetime": 0,
    "beforequeuetime": 0,
    "dispositionid": 3,
    "dispositionreach": 1,
    "dispositionstatus": 3,
    "projectid": 3,
    "holdtime": 0,
    "afterwork": 9,
    "prework": 0,
    "direction": "outbound",
}


def envelope(response: Any, errors: list[Any] | None = None) -> bytes:
    return orjson.dumps({"response": response, "errors": errors or []})


def norm(record: dict[str, Any], source: str = "list") -> Any:
    return normalize(record, account="cc-hu", zone=BUD, fetched_at=FETCHED, source=source)


def account(**extra: Any) -> AccountSettings:
    acc = {
        "name": "cc-hu",
        "vendor": "vcclive",
        "base_url": "https://mycc.asp.virtual-call-center.eu",
        "username": "mycc",
        "api_key": "157f-secret-token",
        "start": "2026-11-01",
        **extra,
    }
    settings = parse(
        {"daemon": {"state_dir": "/tmp", "http_listen": ""}, "accounts": [acc]},
        source="<test>",
        environ={},
    )
    return settings.accounts[0]


# ---------------------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"response": {"a": 1}, "errors": []}', {"a": 1}),
        (b'{"errors": [], "response": [6]}', [6]),
        (b'{"response": null, "errors": []}', None),
        (b'{"response": [7, 8]}', [7, 8]),
    ],
)
def test_unwrap_returns_the_response(body: bytes, expected: Any) -> None:
    """A body with an empty errors list yields its response, whatever the content type was."""
    assert unwrap(body, endpoint="cc/vcclive.cdrs") == expected


@pytest.mark.parametrize(
    ("errors", "said"),
    [
        (["Invalid project"], "Invalid project"),
        ([{"code": 400, "message": "form is required"}], "400: form is required"),
        ({"form": "is required"}, "is required"),
        ([{"msg": "bad", "x": 1}, "second"], "bad; second"),
        (["token=abc123 rejected"], "token=*** rejected"),
    ],
)
def test_unwrap_refusal_names_the_vendor_errors(errors: Any, said: str) -> None:
    """A filled errors list under HTTP 200 is a PermanentError quoting VCC, scrubbed."""
    with pytest.raises(PermanentError, match="VCC Live refused") as info:
        unwrap(envelope(None, errors), endpoint="cc/vcclive.add_record")
    assert said in str(info.value)
    assert "abc123" not in str(info.value)


def test_unwrap_truncates_long_vendor_errors() -> None:
    """A huge error text is cut to a short message."""
    with pytest.raises(PermanentError) as info:
        unwrap(envelope(None, ["x" * 5000]), endpoint="e")
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "body", [b"<html>502</html>", b'{"response": [1, 2', b"[1, 2]", b'{"data": 1}', b""]
)
def test_unwrap_unreadable_body_is_a_bad_page(body: bytes) -> None:
    """A body that is not the JSON envelope is fetched again, not taken as empty."""
    with pytest.raises(BadPageError, match=r"cc/vcclive\.cdrs"):
        unwrap(body, endpoint="cc/vcclive.cdrs")


# ---------------------------------------------------------------------------- normalize


def test_documented_cdr_normalizes() -> None:
    """The documented example: local Budapest times to UTC, end = billing_ts + billingtime."""
    call = norm(DOC_CDR)
    assert call.call_key == call.call_uuid == DOC_CDR["uuid"]
    assert call.started_at == dt.datetime(2015, 8, 17, 13, 5, 8, tzinfo=UTC)
    assert call.answered_at == dt.datetime(2015, 8, 17, 13, 5, 17, tzinfo=UTC)
    assert call.ended_at == dt.datetime(2015, 8, 17, 13, 5, 20, tzinfo=UTC)
    assert (call.duration_s, call.talk_s, call.ring_s) == (12, 3, 9)
    assert (call.direction, call.status) == ("outbound", "answered")
    assert (call.customer_number, call.line_number) == ("36003333333", "36013555539")
    assert (call.agent_number, call.agent_name) == ("6", "6")
    assert (call.department, call.call_id, call.source) == ("3", "11", "list")
    assert call.local_date == dt.date(2015, 8, 17)
    assert orjson.loads(call.raw)["dispositionstatus"] == 3


def test_utc_twins_win_over_local_times() -> None:
    """start_ts_utc/billing_ts_utc decide the instants; start_ts still decides the local day."""
    # 02:30 on 2026-10-25 happens twice in Budapest; only the UTC twin says which one.
    record = {
        **DOC_CDR,
        "start_ts": "2026-10-25 02:30:00",
        "start_ts_utc": "2026-10-25 01:30:00",
        "billing_ts": "2026-10-25 02:30:09",
        "billing_ts_utc": "2026-10-25 01:30:09",
    }
    call = norm(record)
    assert call.started_at == dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert call.ended_at == dt.datetime(2026, 10, 25, 1, 30, 12, tzinfo=UTC)
    assert call.local_date == dt.date(2026, 10, 25)


def test_utc_only_record_takes_its_local_day_from_the_zone() -> None:
    """Without start_ts the local day is the UTC start seen in the account zone."""
    record = {**DOC_CDR, "start_ts": None, "start_ts_utc": "2026-11-30 23:30:00"}
    assert norm(record).local_date == dt.date(2026, 12, 1)


@pytest.mark.parametrize(
    ("patch", "started", "ended"),
    [
        # The record detail page documents "hh-mm-ss" times.
        (
            {"start_ts": "2015-08-17 15-05-08", "billing_ts": "2015-08-17 15-05-17"},
            dt.datetime(2015, 8, 17, 13, 5, 8, tzinfo=UTC),
            dt.datetime(2015, 8, 17, 13, 5, 20, tzinfo=UTC),
        ),
        # An unset MySQL datetime: the end is start + ringtime + billingtime instead.
        (
            {"billing_ts": "0000-00-00 00:00:00"},
            dt.datetime(2015, 8, 17, 13, 5, 8, tzinfo=UTC),
            dt.datetime(2015, 8, 17, 13, 5, 20, tzinfo=UTC),
        ),
        (
            {"start_ts": "2015-08-17T15:05:08+02:00", "billing_ts": None},
            dt.datetime(2015, 8, 17, 13, 5, 8, tzinfo=UTC),
            dt.datetime(2015, 8, 17, 13, 5, 20, tzinfo=UTC),
        ),
        ({"billing_ts": None, "billingtime": None}, dt.datetime(2015, 8, 17, 13, 5, 8, tzinfo=UTC),
         None),
    ],
)  # fmt: skip
def test_time_formats(patch: dict[str, Any], started: dt.datetime, ended: Any) -> None:
    """Both documented time shapes, the zero date and ISO offsets read as the same instants."""
    call = norm({**DOC_CDR, **patch})
    assert (call.started_at, call.ended_at) == (started, ended)


@pytest.mark.parametrize(
    ("patch", "fields"),
    [
        ({"talktime": 0, "billingtime": 0, "userid": -1},
         {"status": "missed", "answered_at": None, "agent_name": None, "agent_number": None}),
        ({"direction": "inbound"},
         {"customer_number": "36013555539", "line_number": "36003333333"}),
        ({"direction": "in"}, {"direction": "inbound"}),
        ({"direction": "sideways"}, {"direction": None, "customer_number": None}),
        ({"talktime": None}, {"status": None, "talk_s": None}),
        ({"ringtime": None, "billingtime": None}, {"duration_s": None, "ended_at": None}),
        ({"dialermode": "predictive", "dc": "NORMAL_CLEARING"},
         {"service": "predictive", "hangup_cause": "NORMAL_CLEARING"}),
        ({"ringtime": "9", "userid": "-1"}, {"ring_s": 9, "agent_number": None}),
    ],
)  # fmt: skip
def test_normalize_rules(patch: dict[str, Any], fields: dict[str, Any]) -> None:
    """Status from talktime, parties by direction, system user -> no agent, optional fields."""
    call = norm({**DOC_CDR, **patch})
    assert {name: getattr(call, name) for name in fields} == fields


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"uuid": None}, "no uuid"),
        ({"uuid": "  "}, "no uuid"),
        ({"start_ts": None}, "no start time"),
        ({"start_ts": "17/08/2015 15:05"}, "is not a 'YYYY-MM-DD hh:mm:ss' time"),
        ({"start_ts": "2015-13-45 15:05:08"}, "is not a 'YYYY-MM-DD hh:mm:ss' time"),
        ({"start_ts_utc": 1439816708}, "is not a time string"),
        ({"billing_ts": "2015-08-17 15:05-17"}, "billing_ts="),
        ({"ringtime": "abc"}, "ringtime='abc' is not a whole number"),
        ({"talktime": True}, "talktime='True' is not a whole number"),
        ({"talktime": 2**31}, "out of range"),
        ({"billingtime": -(2**31)}, "out of range"),
        ({"ringtime": 2**31 - 1, "billingtime": 5}, "ringtime + billingtime"),
        ({"userid": 1.5}, "userid='1.5' is not a whole number"),
        ({"source": "3601\x00"}, "NUL character"),
        ({"start_ts": "0001-01-01 00:00:00"}, "out of range"),
    ],
)
def test_bad_records_raise_parse_error(patch: dict[str, Any], message: str) -> None:
    """A record PostgreSQL could not store, or whose key or start is missing, is rejected."""
    with pytest.raises(ParseError) as info:
        norm({**DOC_CDR, **patch})
    assert message in str(info.value)


def test_int4_bounds_are_inclusive() -> None:
    """The largest int4 still fits."""
    assert norm({**DOC_CDR, "talktime": 2**31 - 1}).talk_s == 2**31 - 1


# ---------------------------------------------------------------------------- pages


def day_page(rows: list[Any], total: Any) -> bytes:
    return envelope({"rows": rows, "totalCount": total})


@pytest.mark.parametrize("total", ["38", 38, " 38 "])
def test_day_page_total_count_is_cast(total: Any) -> None:
    """totalCount arrives as a string ("38"); numbers are taken too."""
    page = parse_day_page(
        day_page([DOC_CDR], total), account="cc-hu", stream="s", zone=BUD, fetched_at=FETCHED
    )
    assert (page.total, page.size, len(page.records)) == (38, 1, 1)


def test_day_page_keeps_row_order_and_rejects_bad_rows() -> None:
    """Keys follow the rows' order, bad rows' keys included; a bad row becomes a Reject."""
    rows = [
        {**DOC_CDR, "uuid": "c"},
        {**DOC_CDR, "uuid": "a", "ringtime": "x"},
        "not an object",
        {**DOC_CDR, "uuid": "b"},
    ]
    page = parse_day_page(
        day_page(rows, "4"), account="cc-hu", stream="s1", zone=BUD, fetched_at=FETCHED
    )
    assert page.keys == ("c", "a", "b")
    assert [r.call_key for r in page.records] == ["c", "b"]
    assert [(r.call_key, r.stream) for r in page.rejects] == [("a", "s1"), (None, "s1")]
    assert "ringtime" in page.rejects[0].reason
    assert page.size == 4


def test_a_number_beyond_a_double_costs_one_row_not_the_day() -> None:
    """orjson refuses 1e400; the day page is still read, and only the row whose ring time it
    is goes to rejects (the day is not fetched again for ever)."""
    rows = [{**DOC_CDR, "uuid": "c", "extra": "HUGE"}, {**DOC_CDR, "uuid": "a", "ringtime": "HUGE"}]
    body = day_page(rows, "2").replace(b'"HUGE"', b"1e400")
    page = parse_day_page(body, account="cc-hu", stream="s1", zone=BUD, fetched_at=FETCHED)
    assert [r.call_key for r in page.records] == ["c"]
    assert [r.call_key for r in page.rejects] == ["a"]


@pytest.mark.parametrize(
    "body",
    [
        envelope({"totalCount": "3"}),
        envelope({"rows": {}, "totalCount": "3"}),
        envelope({"rows": [], "totalCount": "many"}),
        envelope({"rows": []}),
        envelope("rows"),
    ],
)
def test_day_page_without_rows_or_count_is_bad(body: bytes) -> None:
    """A page missing its rows or a usable totalCount is fetched again."""
    with pytest.raises(BadPageError):
        parse_day_page(body, account="cc-hu", stream="s", zone=BUD, fetched_at=FETCHED)


def test_empty_day_as_php_empty_array() -> None:
    """An empty response ([] from PHP, or null) is an empty day, not an error."""
    responses: tuple[list[object] | None, ...] = ([], None)
    for response in responses:
        page = parse_day_page(
            envelope(response), account="cc-hu", stream="s", zone=BUD, fetched_at=FETCHED
        )
        assert (page.total, page.keys) == (0, ())


@pytest.mark.parametrize(
    ("response", "found"), [(DOC_CDR, True), ([DOC_CDR], True), (None, False), ([], False),
                            ({}, False)],
)  # fmt: skip
def test_parse_cdr(response: Any, found: bool) -> None:
    """A CDR by uuid is a "lookup" copy; an empty answer means VCC has none yet."""
    call = parse_cdr(envelope(response), account="cc-hu", stream="s", zone=BUD, fetched_at=FETCHED)
    assert (call is not None) == found
    if call is not None:
        assert (call.source, call.call_key) == ("lookup", DOC_CDR["uuid"])


# ---------------------------------------------------------------------------- record detail

DOC_RECORD = {  # the "Get detailed record information" example, completed into valid JSON
    "data": {"name": "VCC Live", "phone2": "3619997400", "address": "8-14. Nagyenyed street"},
    "contacts": {"2": {"title": "Mr", "name": "Peter Green", "phone": "36203399877"}},
    "events": [
        {
            "type": "disposition", "dispositionid": 3, "next_calldate": "2015-07-07T09:10:47+02:00",
            "phone": "36203399877", "attempted_connections": None, "shared_call": None,
            "state": "AFTERWORK", "client_search": "no",
            "uuid": "0b4b4302-2477-11e5-8803-f9fe10f1f802",
            "comp": {"from": "00:00", "to": "00:00", "period": "0"}, "price": 0, "commission": 0,
            "create_date": "2015-07-07 09:10:47", "userid": 6, "description": "client is busy!",
        },
        {"type": "user_change", "create_date": "2015-07-08 10-00-00", "userid": "-2"},
        "garbage",
        {"type": "recycle", "create_date": "yesterday", "dispositionid": 2**40},
    ],
    "cdrs": {
        "rows": [
            {
                "uuid": "e78685dc-516a-11e5-863b-edb07dc0e690", "source": "3619997400",
                "destination": "36203399877", "userid": "6", "numberid": 2,
                "start_ts": "2015-09-02 14-05-29", "billing_ts": "2015-09-02 14-05-38",
                "ringtime": 9, "billingtime": 36, "talktime": 36, "queuetime": 0,
                "beforequeuetime": 0, "dispositionid": 3, "dispositionreach": 1,
                "dispositionstatus": 3, "projectid": 3, "holdtime": 0,
            },
            {"uuid": "broken", "start_ts": "never"},
        ],
        "totalCount": 2,
    },
}  # fmt: skip


def test_record_detail_events_and_cdrs() -> None:
    """Events in order with UTC times (both time shapes); the record's CDRs as lookups."""
    events, records = parse_record_detail(
        envelope(DOC_RECORD), account="cc-hu", projectid=3, numberid=2, zone=BUD,
        fetched_at=FETCHED,
    )  # fmt: skip
    assert [e.seq for e in events] == [0, 1, 3]
    first, second, fourth = events
    assert first.call_uuid == "0b4b4302-2477-11e5-8803-f9fe10f1f802"
    assert first.created_at == dt.datetime(2015, 7, 7, 7, 10, 47, tzinfo=UTC)
    assert (first.type, first.dispositionid, first.userid, first.state) == (
        "disposition", 3, 6, "AFTERWORK"
    )  # fmt: skip
    assert orjson.loads(first.raw)["description"] == "client is busy!"
    assert second.created_at == dt.datetime(2015, 7, 8, 8, 0, tzinfo=UTC)
    assert second.userid == -2
    assert (fourth.created_at, fourth.dispositionid) == (None, None)
    assert (first.projectid, first.numberid, first.vendor) == (3, 2, "vcclive")
    (call,) = records
    assert call.source == "lookup"
    assert call.started_at == dt.datetime(2015, 9, 2, 12, 5, 29, tzinfo=UTC)
    assert (call.agent_number, call.duration_s) == ("6", 45)


def test_record_detail_php_empty_parts() -> None:
    """A record without events or CDRs (PHP's [] for empty maps) has none."""
    body = envelope({"data": [], "contacts": [], "events": [], "cdrs": []})
    kwargs: dict[str, Any] = {"account": "a", "projectid": 1, "numberid": 2, "zone": BUD}
    assert parse_record_detail(body, fetched_at=FETCHED, **kwargs) == ((), ())
    assert parse_record_data(body, endpoint="e") == {}
    assert parse_record_data(envelope(DOC_RECORD), endpoint="e")["name"] == "VCC Live"


# ---------------------------------------------------------------------------- schedule

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
M = dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("attempts", "now", "due"),
    [
        (0, T0, T0 + 5 * M),  # first attempt 5 minutes after the webhook
        (0, T0 + 5 * M, T0 + 5 * M),  # due: now
        (0, T0 + 7 * M, T0 + 7 * M),  # overdue: now
        (1, T0 + 5 * M, T0 + 10 * M),  # then every 5 minutes
        (1, T0 + 10 * M, T0 + 10 * M),  # scheduled after an on-time attempt (now + interval)
        (1, T0 + 12 * M, T0 + 12 * M),  # a late attempt pushes the schedule back
        (5, T0 + 30 * M, T0 + 30 * M),
        (19, T0, T0 + 100 * M),  # the 20th and last attempt
        (20, T0 + 200 * M, None),  # 20 attempts made: give up
        (25, T0, None),
    ],
)
def test_lookup_schedule(attempts: int, now: dt.datetime, due: dt.datetime | None) -> None:
    """VCC's advice: 5 minutes after the webhook, then every 5 minutes, 20 times in all."""
    assert lookup_schedule(T0, attempts, now, delay=5 * M, interval=5 * M, max_attempts=20) == due


def item(attempts: int, created_at: dt.datetime = T0, kind: str = "vcclive.cdr") -> LookupItem:
    return LookupItem(
        id=1, vendor="vcclive", account="cc-hu", kind=kind, call_key="u-1",
        context={"year": 2026, "month": 11}, attempts=attempts, created_at=created_at,
        next_attempt_at=created_at,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("attempts", "now", "state", "next_at"),
    [
        (0, T0 + M, "retry", T0 + 5 * M),
        (3, T0 + 16 * M, "retry", T0 + 20 * M),
        (20, T0 + 200 * M, "gave_up", None),
    ],
)
async def test_lookups_wait_without_a_request(
    attempts: int, now: dt.datetime, state: str, next_at: dt.datetime | None
) -> None:
    """Before its due time or after the last attempt a lookup sends nothing (not counted)."""
    lookups = VccLookups(account(), None, {}, "cc-hu/lookups")  # type: ignore[arg-type]
    outcome = await lookups.perform(item(attempts), now)
    assert (outcome.state, outcome.next_attempt_at, outcome.counted) == (state, next_at, False)
    assert lookups.limiter_group("vcclive.cdr") == "lookup"
    assert lookups.limiter_group("vcclive.record") == "records"


class CannedTransport:
    """A fake Transport answering every request with one status and body (no sockets)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.response = Response(status, {}, body, 0.0)
        self.requests: list[tuple[str, str, str]] = []

    async def request(self, method: str, url: str, *, parse: Any, **kwargs: Any) -> Any:
        self.requests.append((method, url, kwargs["endpoint"]))
        if self.response.status != 200 and self.response.status not in kwargs.get("accept", ()):
            raise error_for_status(self.response, endpoint=kwargs["endpoint"])
        return parse(self.response)


def canned_lookups(status: int, body: bytes) -> tuple[VccLookups, CannedTransport]:
    transport = CannedTransport(status, body)
    limiters: Any = {"lookup": "unused", "records": "unused"}  # the canned transport waits not
    return VccLookups(account(), transport, limiters, "cc-hu/lookups"), transport  # type: ignore[arg-type]


async def test_malformed_cdr_by_uuid_ends_in_a_reject() -> None:
    """A CDR that cannot be normalized finishes the lookup with a reject holding the answer."""
    lookups, transport = canned_lookups(200, envelope({**DOC_CDR, "ringtime": "soon"}))
    outcome = await lookups.perform(item(0), T0 + 5 * M)
    assert (outcome.state, outcome.records) == ("done", ())
    (reject,) = outcome.rejects
    assert (reject.call_key, reject.stream) == ("u-1", "cc-hu/lookups")
    assert "ringtime" in reject.reason and '"soon"' in reject.payload
    assert transport.requests == [
        ("GET", "https://mycc.asp.virtual-call-center.eu/v2/cdr/2026/11/u-1", "cc-hu/vcclive.cdr")
    ]


@pytest.mark.parametrize(("attempts", "state"), [(0, "retry"), (18, "retry"), (19, "gave_up")])
async def test_record_lookup_404_retries_then_gives_up(attempts: int, state: str) -> None:
    """A record not found is tried again every lookup_interval, lookup_attempts times in all."""
    lookups, _ = canned_lookups(404, envelope(None, [{"code": 404, "message": "no record"}]))
    record = dataclasses.replace(item(attempts, kind="vcclive.record"), call_key="3/11/u1")
    outcome = await lookups.perform(record, T0)
    assert (outcome.state, outcome.counted) == (state, True)
    assert outcome.next_attempt_at == (T0 + 5 * M if state == "retry" else None)


async def test_other_refusals_propagate() -> None:
    """A refusal that is not a 404 (e.g. 401) is the account's problem, not the lookup's."""
    lookups, _ = canned_lookups(401, b"")
    with pytest.raises(PermanentError):
        await lookups.perform(item(0), T0 + 5 * M)


# ---------------------------------------------------------------------------- push

PUSH = {  # a Call Disposition webhook as the documented fields describe it
    "uuid": "95bd5f46-44e0-11e5-a6da-6547f8762750",
    "direction": "in",
    "source": "36201234567",
    "destination": "3619997400",
    "call_start_time": "2026-11-30 23:59:50",
    "create_time": "2026-12-01 00:04:00",
    "timestamp": "2026-12-01T00:04:00+01:00",
    "userid": 6,
    "username": "anna",
    "agentName": "Anna Kovacs",
    "projectid": 134,
    "projectName": "Outbound sales",
    "numberid": "7",
    "disposition": {"assesment": "success", "callback": 0},
}
RECEIVED = dt.datetime(2026, 11, 30, 23, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("disposition", "description"),
    [({"id": 3, "name": "Callback requested"}, "Callback requested"),
     ({"assesment": "success"}, None), ("3", None), (None, None)],
)  # fmt: skip
def test_push_keeps_the_disposition_name_only_the_webhook_carries(
    disposition: Any, description: str | None
) -> None:
    """The webhook's disposition name is the call's description (the CDR has only its id)."""
    result = parse_push(
        {**PUSH, "disposition": disposition}, account=account(), received_at=RECEIVED
    )
    assert result.records[0].description == description


def test_push_gives_a_provisional_call_and_lookups() -> None:
    """A disposition shows the call at once and queues its CDR (+5 min) and record (+1 min)."""
    result = parse_push(PUSH, account=account(), received_at=RECEIVED)
    (call,) = result.records
    assert (call.call_key, call.source, call.direction) == (PUSH["uuid"], "push", "inbound")
    assert call.started_at == dt.datetime(2026, 11, 30, 22, 59, 50, tzinfo=UTC)
    assert call.local_date == dt.date(2026, 11, 30)
    assert (call.agent_name, call.agent_number, call.department) == ("anna", "6", "Outbound sales")
    assert (call.customer_number, call.line_number, call.call_id) == (
        "36201234567", "3619997400", "7"
    )  # fmt: skip
    assert orjson.loads(call.raw) == PUSH
    cdr, record = result.lookups
    assert (cdr.kind, cdr.call_key, dict(cdr.context)) == (
        "vcclive.cdr", PUSH["uuid"], {"year": 2026, "month": 11}
    )  # fmt: skip
    assert cdr.not_before == RECEIVED + 5 * M
    assert (record.kind, record.call_key, dict(record.context)) == (
        "vcclive.record", f"134/7/{PUSH['uuid']}", {"projectid": 134, "numberid": 7}
    )  # fmt: skip
    assert record.not_before == RECEIVED + M


def test_each_call_of_a_record_queues_its_own_record_lookup() -> None:
    """The dialer calls a record again days later: that call's webhook queues a record lookup
    of its own (the first one is done and would never run again), so the new disposition is
    fetched into call_events."""
    first = parse_push(PUSH, account=account(), received_at=RECEIVED)
    again = parse_push({**PUSH, "uuid": "later-call"}, account=account(), received_at=RECEIVED)
    keys = {r.call_key for r in (*first.lookups, *again.lookups) if r.kind == "vcclive.record"}
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("patch", "month", "started"),
    [
        # The CDR path takes the month of the LOCAL start: 00:30 local on Dec 1 is Nov 30 UTC.
        ({"call_start_time": "2026-12-01 00:30:00"}, 12,
         dt.datetime(2026, 11, 30, 23, 30, tzinfo=UTC)),
        ({"call_start_time": None}, 12, dt.datetime(2026, 11, 30, 23, 4, tzinfo=UTC)),
        # Neither: the month of receipt, local (00:04 on Dec 1 in Budapest).
        ({"call_start_time": "soon", "timestamp": None}, 12, None),
    ],
)  # fmt: skip
def test_push_month_and_start(patch: dict[str, Any], month: int, started: Any) -> None:
    """Start from call_start_time (local), else timestamp; else the month of receipt."""
    result = parse_push({**PUSH, **patch}, account=account(), received_at=RECEIVED)
    assert result.lookups[0].context["month"] == month
    assert result.records[0].started_at == started


def test_push_options_and_missing_ids() -> None:
    """record_details off, or no projectid/numberid: only the CDR lookup; lookup_delay used."""
    off = parse_push(
        PUSH, account=account(record_details=False, lookup_delay="2m"), received_at=RECEIVED
    )
    assert [lk.kind for lk in off.lookups] == ["vcclive.cdr"]
    assert off.lookups[0].not_before == RECEIVED + 2 * M
    no_ids = parse_push({**PUSH, "numberid": None}, account=account(), received_at=RECEIVED)
    assert [lk.kind for lk in no_ids.lookups] == ["vcclive.cdr"]


@pytest.mark.parametrize("doc", [{"direction": "in"}, {"uuid": ""}, [PUSH], "uuid", None])
def test_push_without_uuid_is_a_parse_error(doc: Any) -> None:
    """Nothing usable without the call's uuid."""
    with pytest.raises(ParseError, match="uuid"):
        parse_push(doc, account=account(), received_at=RECEIVED)


def test_push_with_nul_still_queues_the_lookup() -> None:
    """An unstorable payload is rejected, but its CDR is still fetched."""
    result = parse_push({**PUSH, "agentName": "A\x00"}, account=account(), received_at=RECEIVED)
    assert result.records == ()
    assert "NUL" in result.rejects[0].reason
    assert result.lookups[0].call_key == PUSH["uuid"]


# ---------------------------------------------------------------------------- add record


def test_add_records_body_is_an_array() -> None:
    """Many records go in one JSON array, in order."""
    payloads: list[dict[str, Any]] = [
        {"form": {"name": "Peter"}},
        {"form": {"name": "Rachel"}, "phone_field": "phone4"},
    ]
    assert orjson.loads(add_records_body(payloads)) == payloads


@pytest.mark.parametrize("payload", [{"contacts": {}}, {"form": "Peter"}, ["form"]])
def test_add_records_body_needs_form(payload: Any) -> None:
    """VCC requires form: refused before a request is sent, naming the payload."""
    with pytest.raises(PermanentError, match="payload 1 has no form"):
        add_records_body([{"form": {}}, payload])


@pytest.mark.parametrize(
    ("response", "count", "ids"), [([7, 8], 2, [7, 8]), (["6"], 1, [6]), ([], 0, [])]
)
def test_parse_add_result(response: Any, count: int, ids: list[int]) -> None:
    """The numberids of the added records, in order."""
    assert parse_add_result(envelope(response), count) == ids


@pytest.mark.parametrize(
    ("body", "message", "in_doubt"),
    [
        (envelope([7]), "for 2 added record", True),
        (envelope([7, 8, 9]), "for 2 added record", True),
        (envelope([]), "for 2 added record", True),
        (envelope({"7": 1}), "not one numberid each", True),
        (envelope([7, None]), "not one numberid each", True),
        (envelope([7], ["row 2: phone is invalid"]), "row 2: phone is invalid", True),
        (envelope([7, 8], ["disposition not set"]), "also answered [7,8]", True),
        # Errors with an empty response: VCC stored nothing.
        (envelope(None, [{"code": 400, "message": "form is required"}]), "form is required", False),
        (envelope([], ["record 1: form is required"]), "form is required", False),
        (envelope({}, ["no record given"]), "no record given", False),
    ],
)
def test_add_result_mismatch_or_errors_are_permanent(
    body: bytes, message: str, in_doubt: bool
) -> None:
    """VCC answers HTTP 200 always: errors with an empty response stored nothing (a plain
    PermanentError); numberids next to errors, or a wrong count, leave the rows in doubt."""
    with pytest.raises(PermanentError) as info:
        parse_add_result(body, 2)
    assert message in str(info.value)
    assert isinstance(info.value, AddInDoubt) is in_doubt


# ---------------------------------------------------------------------------- paths


def test_paths() -> None:
    """Paths pad month and day; a uuid from a webhook cannot escape its path segment."""
    assert day_path(dt.date(2026, 3, 9)) == "/v2/cdrs/2026/03/09"
    assert cdr_path(2015, 1, "bbf5825e-85de") == "/v2/cdr/2015/01/bbf5825e-85de"
    assert cdr_path(2015, 1, "../../projects?x=1") == "/v2/cdr/2015/01/..%2F..%2Fprojects%3Fx%3D1"
    assert record_path(3, 11) == "/v2/projects/3/records/11"
    assert records_path(134) == "/v2/projects/134/records"


def test_a_date_at_the_end_of_time_is_a_reject_not_a_crash() -> None:
    """billing_ts_utc 9999-12-31 23:59:59 plus the billing time is past year 9999: that row is
    rejected; the page, and the stream reading it, go on."""
    rows = [{**DOC_CDR, "uuid": "a", "billing_ts_utc": "9999-12-31 23:59:59"}, DOC_CDR]
    page = parse_day_page(
        day_page(rows, "2"), account="cc-hu", stream="s1", zone=BUD, fetched_at=FETCHED
    )
    assert [r.call_key for r in page.rejects] == ["a"]
    assert [r.call_key for r in page.records] == [DOC_CDR["uuid"]]


@pytest.mark.parametrize(
    ("billing_utc", "started"),
    [
        # 2026-10-25 02:30 happens twice in Budapest: 00:30 UTC (CEST), then 01:30 UTC (CET).
        ("2026-10-25 00:30:09", dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        ("2026-10-25 01:30:09", dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    ],
)
def test_a_start_in_the_repeated_hour_follows_the_utc_connect_time(
    billing_utc: str, started: dt.datetime
) -> None:
    """VCC sends start_ts in local time only; when clocks go back, billing_ts_utc (ringtime
    after the start) tells which of the two 02:30s the call began at."""
    record = {
        **DOC_CDR, "start_ts": "2026-10-25 02:30:00", "billing_ts": "2026-10-25 02:30:09",
        "billing_ts_utc": billing_utc, "ringtime": 9,
    }  # fmt: skip
    call = norm(record)
    assert call.started_at == started
    assert call.local_date == dt.date(2026, 10, 25)


def test_a_row_nested_too_deeply_costs_one_row_not_the_stream() -> None:
    """A row deeper than JSON can be written back (255 levels) is rejected; the day goes on."""
    rows = [{**DOC_CDR, "uuid": "deep", "extra": "DEEP"}, DOC_CDR]
    body = day_page(rows, "2").replace(b'"DEEP"', b"[" * 300 + b"]" * 300)
    page = parse_day_page(body, account="cc-hu", stream="s1", zone=BUD, fetched_at=FETCHED)
    assert [r.call_key for r in page.rejects] == ["deep"]
    assert [r.call_key for r in page.records] == [DOC_CDR["uuid"]]


_RECEIVED = dt.datetime(2026, 12, 1, 0, 20, tzinfo=dt.UTC)  # 01:20 on Dec 1 in Budapest


@pytest.mark.parametrize(
    ("doc", "received", "context"),
    [
        # The call's start decides, whenever the webhook carries it.
        (
            {"call_start_time": "2026-11-30 23:58:00", "timestamp": "2026-12-01T00:04:00+01:00"},
            _RECEIVED,
            {"year": 2026, "month": 11},
        ),
        ({"call_start_time": "2026-12-01 00:01:00"}, _RECEIVED, {"year": 2026, "month": 12}),
        # Without it, on a month's first day: the event's month, then the month before.
        (
            {"timestamp": "2026-12-01T00:04:00+01:00"},
            _RECEIVED,
            {"year": 2026, "month": 12, "months": [[2026, 12], [2026, 11]]},
        ),
        ({}, _RECEIVED, {"year": 2026, "month": 12, "months": [[2026, 12], [2026, 11]]}),
        (
            {"timestamp": "2027-01-01T00:30:00+01:00"},
            _RECEIVED,
            {"year": 2027, "month": 1, "months": [[2027, 1], [2026, 12]]},
        ),
        # ... and later in the month only the event's month.
        (
            {"timestamp": "2026-12-02T09:00:00+01:00"},
            _RECEIVED,
            {"year": 2026, "month": 12, "months": [[2026, 12]]},
        ),
        (
            {"call_start_time": "garbage"},
            dt.datetime(2026, 12, 15, tzinfo=dt.UTC),
            {"year": 2026, "month": 12, "months": [[2026, 12]]},
        ),
    ],
)
def test_lookup_months_table(doc, received, context):
    """A webhook's CDR is looked up in its call's month; unknown near a month's start, both."""
    assert lookup_months(doc, BUD, received) == context


@pytest.mark.parametrize(
    ("errors", "kind"),
    [
        ([{"code": 404, "message": "CDR not found"}], "not_yet"),
        (["CDR is not processed yet"], "not_yet"),
        ([{"message": "No data"}], "not_yet"),
        ([{"code": "404", "message": "whatever"}], "not_yet"),
        (["something VCC never documented"], "not_yet"),  # unknown: bounded retries, no loss
        ([{"code": 401, "message": "Authentication failed"}], "auth"),
        (["Invalid token"], "auth"),
        ([{"code": 403, "message": "x"}], "permission"),
        (["Access denied to project 3"], "permission"),
        ([{"code": 400, "message": "invalid request: month must be an integer"}], "malformed"),
        (["uuid is required"], "not_yet"),  # malformed only by code: words alone may mean unknown
        ([{"code": 400, "message": "CDR not found"}], "not_yet"),
        ([{"code": 401, "message": "user not found"}], "auth"),
        ({"uuid": "invalid uuid"}, "not_yet"),
        ({"code": 422, "message": "invalid uuid"}, "malformed"),
        ({"code": 401, "message": "Unauthorized"}, "auth"),
        ([{"code": 404, "message": "not found"}, {"code": 401, "message": "no"}], "auth"),
        ([{"code": 400, "message": "bad"}, {"code": 403, "message": "no"}], "permission"),
        ([{"code": "\u00b2", "message": "x"}], "not_yet"),  # a digit int() refuses: no code
    ],
)
def test_cdr_errors_tell_a_refusal_from_not_yet(errors: Any, kind: str) -> None:
    """VCC Live's errors under HTTP 200: credentials, permission, malformed, else not yet."""
    assert cdr_errors_kind(errors) == kind
