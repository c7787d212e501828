"""Ozonetel CloudAgent: request rules, status strings, normalization and parsing (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from cdrsync.config import AccountSettings, parse
from cdrsync.errors import (
    AuthError,
    BadPageError,
    ParseError,
    PermanentError,
    RateLimited,
    TransientError,
    UnexpectedAnswer,
)
from cdrsync.model import Window
from cdrsync.vendors.ozonetel import (
    IST,
    TokenExpired,
    bulk_body,
    check_status,
    earliest_available,
    lookup_decision,
    normalize_bulk,
    normalize_callback,
    parse_bulk_page,
    parse_lookup,
    parse_push,
    scrub,
)
from cdrsync.vendors.ozonetel_parse import payload_text

FETCHED = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 20)
RETENTION = dt.timedelta(days=15)
KEY = "KK7xxxxxxxxxx014c05b3efbaxxxxx1f70"

BULK = {  # a bulk record with the fields normalization reads (IST times, HH:MM:SS durations)
    "CallID": "700000144",
    "CallDate": "2026-11-20",
    "StartTime": "2026-11-20 10:33:53",
    "EndTime": "2026-11-20 10:38:50",
    "Duration": "00:04:57",
    "TalkTime": "00:04:46",
    "TimeToAnswer": "00:00:11",
    "CallerID": "919849438410",
    "DID": "918069000222",
    "AgentName": "Priya Sharma",
    "Skill": "Sales",
    "CampaignName": "Sales_Outbound",
    "Type": "Manual",
    "Status": "Answered",
    "Disposition": "Resolved",
    "Comments": "",
    "HangupBy": "UserHangup",
    "UCID": "8571000000001440",
    "CallAudio": "https://recordings.example/8571000000001440.mp3",
}

CALLBACK = {  # the CDR in CallBacks page's sample record (masked values filled in)
    "monitorUCID": "85710000012345",
    "UUI": "",
    "Did": "918069000111",
    "CampaignName": "Inbound_Support",
    "Location": "",
    "CallerID": "919800000001",
    "PhoneName": "09800000469",
    "Skill": "None",
    "StartTime": "2021-02-09 10:33:53",
    "EndTime": "2021-02-09 10:38:50",
    "TimeToAnswer": "00:00:11",
    "CallDuration": "00:04:57",
    "Duration": "00:04:46",
    "FallBackRule": "AgentDial",
    "DialedNumber": "09800000679",
    "Type": "manual",
    "AgentID": "",
    "AgentPhoneNumber": "09800000009",
    "AgentUniqueID": "None",
    "AgentName": "None",
    "Disposition": "",
    "HangupBy": "UserHangup",
    "Status": "Answered",
    "AudioFile": "https://s3.example/rec/DIA03a208dd02d2.mp3",
    "TransferType": "No Transfers",
    "TransferredTo": "",
    "Comments": "",
    "DialStatus": "answered",
    "Apikey": KEY,
    "AgentStatus": "answered",
    "CustomerStatus": "answered",
    "UserName": "sim-user",
    "CallerConfAudioFile": "",
    "ConfDuration": "00:00:00",
    "CampaignStatus": "OFFLINE",
    "DataUniqueId": "",
    "CallCompleted": "TRUE",
    "ConferenceData": "",
}


def ist(*args: int) -> dt.datetime:
    """An IST wall-clock time as a UTC instant."""
    return dt.datetime(*args, tzinfo=IST).astimezone(dt.UTC)  # type: ignore[misc,arg-type]  # (year, month, day, ...)


def account(**options: Any) -> AccountSettings:
    """A validated Ozonetel account (default options unless given)."""
    acc = {
        "name": "oz",
        "vendor": "ozonetel",
        "start": "2026-11-01",
        "base_url": "http://127.0.0.1:9",
        "username": "sim-user",
        "api_key": KEY,
        **options,
    }
    settings = parse(
        {
            "database": {"dsn": "postgresql://x/y"},
            "daemon": {"state_dir": "/tmp"},
            "accounts": [acc],
        },
        source="<test>",
        environ={},
    )
    return settings.accounts[0]


def bulk(**patch: Any) -> Any:
    return normalize_bulk({**BULK, **patch}, account="oz", zone=IST, fetched_at=FETCHED)


def callback(record: dict[str, Any], source: str = "lookup") -> Any:
    return normalize_callback(record, account="oz", zone=IST, fetched_at=FETCHED, source=source)


# ---------------------------------------------------------------------------- request rules


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (ist(2026, 11, 20, 0, 0), ist(2026, 11, 20, 1, 0), ("00:00:00", "00:59:59")),
        (ist(2026, 11, 20, 0, 0), ist(2026, 11, 21, 0, 0), ("00:00:00", "23:59:59")),
        (ist(2026, 11, 20, 23, 0), ist(2026, 11, 21, 0, 0), ("23:00:00", "23:59:59")),
        (ist(2026, 11, 20, 9, 15, 7), ist(2026, 11, 20, 9, 15, 8), ("09:15:07", "09:15:07")),
    ],
)
def test_bulk_body_asks_inclusive_local_seconds(start, end, expected):
    """The body carries IST bounds with toDate one second before the window's end."""
    body = orjson.loads(bulk_body(Window(start, end), "sim-user", IST))
    assert (body["fromDate"], body["toDate"]) == tuple(f"2026-11-20 {t}" for t in expected)
    assert body["userName"] == "sim-user"


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (ist(2026, 11, 20, 23, 30), ist(2026, 11, 21, 0, 30), "same calendar day"),
        (ist(2026, 11, 20, 0, 0), ist(2026, 11, 21, 0, 0, 1), "same calendar day"),
        (ist(2026, 11, 20, 10, 0), ist(2026, 11, 20, 10, 0), "shorter than one second"),
    ],
)
def test_bulk_body_refuses_windows_ozonetel_refuses(start, end, message):
    """A window spanning two IST days (or none at all) is a ValueError, never a request."""
    with pytest.raises(ValueError, match=message):
        bulk_body(Window(start, end), "sim-user", IST)


@pytest.mark.parametrize(
    ("now", "retention", "expected"),
    [
        (ist(2026, 11, 23, 10, 0), RETENTION, ist(2026, 11, 8, 0, 0)),
        (ist(2026, 11, 23, 0, 10), RETENTION, ist(2026, 11, 8, 0, 0)),  # still Nov 22 in UTC
        (ist(2026, 11, 23, 23, 59), dt.timedelta(days=1), ist(2026, 11, 22, 0, 0)),
        (ist(2026, 11, 23, 12, 0), dt.timedelta(hours=5), ist(2026, 11, 23, 0, 0)),
    ],
)
def test_earliest_available_is_a_local_midnight(now, retention, expected):
    """The horizon is IST midnight of today minus the retention's whole days."""
    assert earliest_available(now, IST, retention) == expected


# ---------------------------------------------------------------------------- status strings


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"status": "false", "message": "Token Expired", "data": None}, TokenExpired),
        ({"status": "false", "message": "Invalid Token"}, TokenExpired),
        ({"status": "error", "message": "max limit exceeded"}, RateLimited),
        ({"status": "error", "message": "userName or apiKey is Invalid"}, AuthError),
        ({"status": "false", "message": "Missing userName or apiKey"}, AuthError),
        ({"message": "Missing fromDate and toDate", "status": "fail"}, PermanentError),
        (
            {
                "message": "Invalid fromDate format. Please pass the date in the format "
                "yyyy-MM-dd HH:mm:ss",
                "status": "fail",
            },
            PermanentError,
        ),
        ({"status": "false", "message": "Invalid Json Pass Valid Json"}, PermanentError),
        ({"status": "error", "message": "userName should not be empty"}, PermanentError),
        ({"status": "error", "message": "apiKey should not be empty"}, PermanentError),
        ({"status": "error", "message": "ucid should not be empty"}, PermanentError),
        ({"status": "error", "message": "reportType should not be empty"}, PermanentError),
        ({"status": "error", "message": "Invalid reportType"}, PermanentError),
        ({"status": "error", "message": "ucid should be numeric only"}, PermanentError),
        ({"status": "fail"}, PermanentError),
        (["not", "an", "object"], BadPageError),
    ],
)
def test_check_status_maps_every_documented_answer(doc, error):
    """Each documented status/message pair raises the category that decides what happens next."""
    with pytest.raises(error) as caught:
        check_status(doc, endpoint="oz/ozonetel.bulk")
    if error is PermanentError:  # a bad date or JSON is never mistaken for bad credentials
        assert not isinstance(caught.value, AuthError | RateLimited)
    assert str(caught.value).startswith("oz/ozonetel.bulk:")


@pytest.mark.parametrize("status", ["success", "SUCCESS", " Success "])
def test_check_status_passes_success(status):
    """Any spelling of "success" is an answer to read, not an error."""
    check_status({"status": status, "message": []}, endpoint="e")


def test_rate_limit_waits_a_whole_minute_and_auth_says_what_to_check():
    """ "max limit exceeded" asks for 60 s; a credentials refusal names the settings to check."""
    with pytest.raises(RateLimited) as limited:
        check_status({"status": "error", "message": "max limit exceeded"}, endpoint="e")
    assert limited.value.retry_after == 60.0
    with pytest.raises(AuthError, match="API Authentication") as refused:
        check_status({"status": "error", "message": "userName or apiKey is Invalid"}, endpoint="e")
    assert "username and api_key" in str(refused.value)


def test_vendor_message_never_carries_the_api_key():
    """A vendor message echoing the key is quoted with the key blanked out."""
    doc = {"status": "error", "message": f"Invalid Json for apiKey {KEY}"}
    with pytest.raises(PermanentError) as caught:
        check_status(doc, endpoint="e", secrets=(KEY,))
    assert KEY not in str(caught.value)


# ---------------------------------------------------------------------------- normalization


def test_bulk_record_normalizes_to_utc_columns():
    """A bulk record maps to UTC times, seconds and the documented columns."""
    call = bulk()
    assert (call.call_key, call.call_id, call.source) == ("8571000000001440", "700000144", "list")
    assert call.started_at == ist(2026, 11, 20, 10, 33, 53)
    assert call.ended_at == ist(2026, 11, 20, 10, 38, 50)
    assert call.answered_at == ist(2026, 11, 20, 10, 34, 4)
    assert (call.duration_s, call.talk_s, call.ring_s) == (297, 286, 11)
    assert (call.direction, call.status, call.service) == ("outbound", "answered", "Manual")
    assert (call.customer_number, call.line_number) == ("919849438410", "918069000222")
    assert (call.department, call.hangup_cause, call.description) == (
        "Sales_Outbound",
        "UserHangup",
        "Resolved",
    )
    assert call.recording_url == BULK["CallAudio"]
    assert call.local_date == DAY
    assert orjson.loads(call.raw) == BULK


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("00:04:57", 297), ("1:02:03", 3723), ("120:00:00", 432_000), (45, 45), ("45", 45),
     ("", None), (None, None), ("None", None), ("00:00:00", 0)],
)  # fmt: skip
def test_durations_read_hh_mm_ss_and_plain_seconds(value, seconds):
    """Durations are "HH:MM:SS" strings, or plain whole numbers; empty means NULL."""
    assert bulk(Duration=value).duration_s == seconds


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"UCID": None}, "no UCID"),
        ({"UCID": "None"}, "no UCID"),
        ({"StartTime": None}, "no StartTime"),
        ({"Duration": "4:57"}, "not an 'HH:MM:SS' duration"),
        ({"Duration": "\u00b2"}, "not an 'HH:MM:SS' duration"),  # a digit int() refuses
        ({"TalkTime": "00:61:00"}, "not an 'HH:MM:SS' duration"),
        ({"TimeToAnswer": "abc"}, "not an 'HH:MM:SS' duration"),
        ({"Duration": True}, "boolean"),
        ({"Duration": 2**31}, "out of range"),
        ({"StartTime": "2026-13-01 10:00:00"}, "not a 'YYYY-MM-DD HH:MM:SS' time"),
        ({"StartTime": "10:33:53", "CallDate": None}, "no CallDate"),
        ({"AgentName": "bad\x00name"}, "NUL character"),
    ],
)
def test_malformed_bulk_records_are_rejected_with_a_reason(patch, message):
    """Each kind of malformed record raises ParseError saying what is wrong."""
    with pytest.raises(ParseError, match=message):
        bulk(**patch)


@pytest.mark.parametrize(
    ("patch", "field", "value"),
    [
        ({"AgentName": "None"}, "agent_name", None),
        ({"AgentName": " null "}, "agent_name", None),
        ({"CampaignName": "", "Skill": "Support"}, "department", "Support"),
        ({"Disposition": "", "Comments": "call back Monday"}, "description", "call back Monday"),
        ({"Status": "Unanswered"}, "status", "missed"),
        ({"Status": "Unanswered"}, "answered_at", None),
        ({"Status": "Abandoned"}, "status", "abandoned"),
        ({"StartTime": "10:33:53"}, "started_at", ist(2026, 11, 20, 10, 33, 53)),
        ({"StartTime": "23:59:50", "EndTime": "00:00:40"}, "ended_at", ist(2026, 11, 21, 0, 0, 40)),
        ({"EndTime": ""}, "ended_at", None),
        ({"AgentPhoneNumber": "09800000101"}, "agent_number", "09800000101"),
    ],
)
def test_bulk_values_are_read_as_the_vendor_means(patch, field, value):
    """ "None" strings are NULL, Unanswered is missed, a bare time takes CallDate's day."""
    assert getattr(bulk(**patch), field) == value


@pytest.mark.parametrize(
    ("kind", "direction"),
    [("InBound", "inbound"), ("inbound", "inbound"), ("Manual", "outbound"),
     ("Preview", "outbound"), ("Progressive", "outbound"), ("Predictive", "outbound"),
     ("Blaster", None), ("", None)],
)  # fmt: skip
def test_direction_follows_the_documented_type_table(kind, direction):
    """Inbound stays inbound, every dialer mode is outbound, unknown types stay NULL."""
    call = bulk(Type=kind)
    assert call.direction == direction
    assert call.service == (kind or None)


def test_callback_record_normalizes_and_drops_the_api_key():
    """The CallBacks sample maps to the same columns, and its Apikey is not stored."""
    call = callback(CALLBACK)
    assert (call.call_key, call.source, call.call_id) == ("85710000012345", "lookup", None)
    assert call.started_at == dt.datetime(2021, 2, 9, 5, 3, 53, tzinfo=dt.UTC)
    assert (call.duration_s, call.talk_s, call.ring_s) == (297, 286, 11)
    assert (call.agent_name, call.agent_number) == (None, "09800000009")
    assert (call.department, call.line_number) == ("Inbound_Support", "918069000111")
    assert (call.direction, call.status) == ("outbound", "answered")
    assert call.recording_url == CALLBACK["AudioFile"]
    assert KEY not in call.raw and "Apikey" not in orjson.loads(call.raw)


@pytest.mark.parametrize(
    ("patch", "asked", "key"),
    [
        ({}, None, "85710000012345"),  # monitorUCID alone: the leg's own UCID (2018 push)
        ({"monitorUCID": "", "UCID": "42"}, None, "42"),
        ({"monitorUCID": None, "UCID": "43"}, None, "43"),
        # A later leg of a transfer: monitorUCID is the first leg's, UCID its own.
        ({"UCID": "85710000012346"}, None, "85710000012346"),
        ({"monitorUCID": "85710000012345", "UCID": "85710000012345"}, None, "85710000012345"),
        # A CallBacks answer names the leg by monitorUCID only: it is the leg asked for.
        ({}, "85710000012346", "85710000012346"),
        ({"UCID": "85710000012347"}, "85710000012346", "85710000012347"),
    ],
)
def test_callback_key_is_the_leg_ucid_wherever_a_copy_carries_it(patch, asked, key):
    """UCID, else the UCID a lookup asked for, else monitorUCID names the leg."""
    record = {**CALLBACK, **patch}
    call = normalize_callback(
        record, account="oz", zone=IST, fetched_at=FETCHED, source="lookup", asked=asked
    )
    assert call.call_key == key


def test_callback_without_any_key_is_rejected():
    """A callback record with neither monitorUCID nor UCID cannot be stored."""
    with pytest.raises(ParseError, match="no monitorUCID or UCID"):
        callback({**CALLBACK, "monitorUCID": ""})


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"Apikey": KEY, "a": 1}, {"a": 1}),
        ({"apiKey": KEY, "APIKEY": KEY, "api_key": KEY, "Api-Key": KEY, "b": 2}, {"b": 2}),
        ({"outer": {"inner": [{"apikey": KEY, "c": 3}]}}, {"outer": {"inner": [{"c": 3}]}}),
        ([{"Apikey": KEY}, 4], [{}, 4]),
        ("text", "text"),
    ],
)
def test_scrub_removes_the_api_key_at_any_depth(record, expected):
    """Every spelling of the echoed API key goes, wherever it sits; the input is untouched."""
    before = orjson.dumps(record)
    assert scrub(record) == expected
    assert orjson.dumps(record) == before


# ---------------------------------------------------------------------------- lookup rules


CALL = ist(2026, 11, 20, 23, 50)


@pytest.mark.parametrize(
    ("now", "action", "report", "not_before"),
    [
        (ist(2026, 11, 20, 23, 55), "request", "currentday", None),
        (ist(2026, 11, 20, 23, 40), "request", "currentday", None),  # our clock is behind
        (ist(2026, 11, 21, 0, 0), "wait", None, ist(2026, 11, 21, 3, 0)),
        (ist(2026, 11, 21, 0, 10), "wait", None, ist(2026, 11, 21, 3, 0)),
        (ist(2026, 11, 21, 2, 59, 59), "wait", None, ist(2026, 11, 21, 3, 0)),
        (ist(2026, 11, 21, 3, 0), "request", "historical", None),
        (ist(2026, 11, 22, 0, 10), "request", "historical", None),
        (ist(2026, 12, 5, 23, 59), "request", "historical", None),  # d+15: still served
        (ist(2026, 12, 6, 0, 0, 1), "give_up", None, None),  # d+16
    ],
)
def test_lookup_decision_follows_the_ist_day_rules(now, action, report, not_before):
    """currentday on the call's IST day, nothing before 03:00 the next, then historical."""
    decision = lookup_decision(CALL, now, zone=IST, retention=RETENTION)
    assert (decision.action, decision.report_type, decision.not_before) == (
        action,
        report,
        not_before,
    )
    assert decision.reason


def test_lookup_gives_up_past_the_horizon_with_a_reason():
    """A call older than the 15 days Ozonetel keeps is given up, saying why."""
    decision = lookup_decision(CALL, ist(2026, 12, 25, 12, 0), zone=IST, retention=RETENTION)
    assert decision.action == "give_up"
    assert "15-day horizon" in decision.reason


def test_call_just_after_midnight_is_a_current_day_call():
    """A call started at 00:05 IST is today's call all day long (scenario 3)."""
    decision = lookup_decision(
        ist(2026, 11, 20, 0, 5), ist(2026, 11, 20, 23, 59), zone=IST, retention=RETENTION
    )
    assert (decision.action, decision.report_type) == ("request", "currentday")


MIDNIGHT = ist(2026, 11, 21, 0, 0, 1)


@pytest.mark.parametrize(
    ("decision", "state", "next_attempt_at"),
    [
        (lookup_decision(CALL, MIDNIGHT, zone=IST, retention=RETENTION), "retry",
         ist(2026, 11, 21, 3, 0)),  # currentday decided at 23:59, granted at 00:00:01
        (lookup_decision(CALL, ist(2026, 12, 7, 0, 0), zone=IST, retention=RETENTION),
         "gave_up", None),
        (lookup_decision(CALL, ist(2026, 11, 21, 3, 0), zone=IST, retention=RETENTION),
         "retry", ist(2026, 11, 21, 3, 0)),  # historical now: asked again at once
    ],
)  # fmt: skip
def test_a_lookup_that_sends_nothing_follows_the_new_decision_uncounted(
    decision, state, next_attempt_at
):
    """An attempt that sent nothing waits, gives up or asks again, as the decision says, and
    never counts toward the attempts."""
    from cdrsync.vendors.ozonetel import unsent_outcome

    at = ist(2026, 11, 21, 3, 0) if decision.action == "request" else MIDNIGHT
    outcome = unsent_outcome(decision, at)
    assert (outcome.state, outcome.next_attempt_at, outcome.counted) == (
        state,
        next_attempt_at,
        False,
    )
    assert outcome.note and decision.reason in outcome.note


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (TransientError("HTTP 503"), True),
        (BadPageError("cut short"), True),
        (UnexpectedAnswer("the answer is not a JSON object"), False),  # would come back the same
        (RateLimited("max limit exceeded", retry_after=60.0), False),
        (RateLimited("HTTP 429"), False),
        (PermanentError("HTTP 404"), False),
        (AuthError("userName or apiKey is Invalid"), False),
    ],
)
def test_generate_token_retries_transient_failures_but_never_its_rate_limit(error, retried):
    """generateToken's 10 an hour: a rate limit is never retried, a 503 or a cut body is."""
    from cdrsync.vendors.ozonetel_client import _retry_token

    assert _retry_token(error) is retried


# ---------------------------------------------------------------------------- pages


def bulk_page(details: Any, total: Any = None, status: str = "success") -> bytes:
    count = len(details) if total is None and isinstance(details, list) else total
    return orjson.dumps(
        {"status": status, "message": "ok", "details": details, "totalCount": count}
    )


def read_page(body: bytes) -> Any:
    return parse_bulk_page(body, account="oz", stream="oz/list", zone=IST, fetched_at=FETCHED)


def test_page_keeps_good_records_and_rejects_bad_ones():
    """One malformed record goes to rejects; the rest of its page is kept; keys are UCIDs."""
    good = {**BULK, "UCID": "1"}
    bad = {**BULK, "UCID": "2", "Duration": "soon"}
    page = read_page(bulk_page([good, bad, "junk", {**BULK, "UCID": None}]))
    assert [r.call_key for r in page.records] == ["1"]
    assert [r.call_key for r in page.rejects] == ["2", None, None]
    assert page.keys == ("1", "2")
    assert (page.total, page.size) == (4, 4)


def test_a_number_beyond_a_double_costs_one_record_not_the_page():
    """orjson refuses 1e400; with 2 bulk requests a minute, a page fetched again for ever would
    stall the account. The page is read; only the record whose duration it is is rejected."""
    kept = {**BULK, "UCID": "1", "Extra": "HUGE"}
    odd = {**BULK, "UCID": "2", "Duration": "HUGE"}
    page = read_page(bulk_page([kept, odd]).replace(b'"HUGE"', b"1e400"))
    assert [r.call_key for r in page.records] == ["1"]
    assert [r.call_key for r in page.rejects] == ["2"]


@pytest.mark.parametrize("total", [3, "3"])
def test_total_count_as_number_or_string(total):
    """totalCount is read whether it comes as a number or a string."""
    assert read_page(bulk_page([], total=total)).total == 3


def test_empty_success_past_the_horizon():
    """An old day comes back as success with no details: an empty page, not an error."""
    body = orjson.dumps({"status": "success", "message": "", "details": None, "totalCount": 0})
    assert read_page(body).total == 0


@pytest.mark.parametrize(
    "doc",
    [
        {"status": "success", "message": "No Data Found"},
        {"status": "success", "message": "No Data Found with the given dates"},
        {"status": "success", "message": "no data found", "details": None},
        {"status": "success", "message": "", "totalCount": "0"},
        {"status": "success", "message": "", "totalCount": " 0 "},
        {"status": "success", "totalCount": 0},
    ],
)
def test_every_shape_of_an_empty_window_is_an_empty_page(doc):
    """Ozonetel's quiet-window answers ("No Data Found" without details, a string totalCount,
    no details at all) are each an empty page, not an answer asked again for ever."""
    page = read_page(orjson.dumps(doc))
    assert (page.total, page.size, page.records, page.rejects) == (0, 0, (), ())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"status": "success", "details": [', BadPageError),
        (b"<html>503</html>", BadPageError),
        (b'{"status": "success", "totalCount": 2}', BadPageError),
        (b'{"status": "success", "details": [], "totalCount": "many"}', BadPageError),
        (b'{"status": "success", "details": [], "totalCount": "\\u00b2"}', BadPageError),
        (b'{"status": "false", "message": "Token Expired", "data": null}', TokenExpired),
        (b'{"message": "Missing fromDate and toDate", "status": "fail"}', PermanentError),
    ],
)
def test_bad_or_refused_pages(body, error):
    """Unreadable pages are fetched again; refusals raise their category."""
    with pytest.raises(error):
        read_page(body)


def read_lookup(doc: Any) -> Any:
    return parse_lookup(
        orjson.dumps(doc), account="oz", stream="oz/lookup", zone=IST, fetched_at=FETCHED
    )


def test_lookup_answer_with_records():
    """A success with records gives lookup-source calls without the echoed Apikey."""
    found = read_lookup({"status": "success", "message": [CALLBACK, {"monitorUCID": "9"}]})
    assert found is not None
    records, rejects = found
    assert [(r.call_key, r.source) for r in records] == [("85710000012345", "lookup")]
    assert [r.call_key for r in rejects] == ["9"]
    assert KEY not in records[0].raw and KEY not in rejects[0].payload


def test_a_lookup_answer_without_ucid_is_the_leg_asked_for():
    """A later transfer leg's record (the first leg's monitorUCID) is keyed by the asked UCID."""
    record = {**CALLBACK, "StartTime": "2021-02-09 10:36:00"}
    found = parse_lookup(
        orjson.dumps({"status": "success", "message": [record]}),
        account="oz", stream="oz/lookup", zone=IST, fetched_at=FETCHED, ucid="85710000012346",
    )  # fmt: skip
    assert found is not None
    assert [r.call_key for r in found[0]] == ["85710000012346"]


def test_lookup_no_data_found_means_not_yet():
    """ "No Data Found with UCID x" is a success that means: not there yet."""
    assert read_lookup({"status": "success", "message": "No Data Found with UCID 123"}) is None


@pytest.mark.parametrize(
    ("message", "error"),
    [("max limit exceeded", RateLimited), ("userName or apiKey is Invalid", AuthError),
     ("ucid should be numeric only", PermanentError), ("Invalid reportType", PermanentError)],
)  # fmt: skip
def test_lookup_errors(message, error):
    """CallBacks errors raise the category the lookup stream acts on."""
    with pytest.raises(error):
        read_lookup({"status": "error", "message": message})


# ---------------------------------------------------------------------------- pushes


RECEIVED = dt.datetime(2026, 11, 20, 5, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("doc", "keys"),
    [
        ({"data": orjson.dumps(CALLBACK).decode()}, ["85710000012345"]),
        (CALLBACK, ["85710000012345"]),
        ({"data": CALLBACK}, ["85710000012345"]),
        ([CALLBACK, {**CALLBACK, "monitorUCID": "2"}], ["85710000012345", "2"]),
        ({"data": orjson.dumps([{**CALLBACK, "monitorUCID": "3"}]).decode()}, ["3"]),
    ],
)
def test_push_shapes_give_calls_and_lookups(doc, keys):
    """A form field `data`, a plain record or a list: calls now, a lookup each for later."""
    result = parse_push(doc, account=account(), received_at=RECEIVED)
    assert [r.call_key for r in result.records] == keys
    assert {r.source for r in result.records} == {"push"}
    assert {r.fetched_at for r in result.records} == {RECEIVED}
    assert [lk.call_key for lk in result.lookups] == keys
    lookup = result.lookups[0]
    assert lookup.kind == "ozonetel.cdr"
    assert lookup.not_before == RECEIVED + dt.timedelta(minutes=2)
    assert lookup.context == {"started_at": "2021-02-09T05:03:53+00:00"}
    assert all(KEY not in r.raw for r in result.records)


PUSH_2018 = {  # the shape of a real push published in 2018 (values replaced): no UCID
    "monitorUCID": "9049754955340984",
    "UUI": "New_order_placement",
    "Did": "914466949093",
    "CampaignName": "Inbound_914466205652",
    "Location": "Chennai",
    "CallerID": "919080600507",
    "PhoneName": "agent7",
    "Skill": "New_order_placement",
    "StartTime": "2018-08-06 16:59:33",
    "EndTime": "2018-08-06 17:00:03",
    "TimeToAnswer": "00:00:07",
    "CallDuration": "00:00:30",
    "Duration": "00:00:23",
    "FallBackRule": "AgentDial",
    "DialedNumber": "9384800000",
    "Type": "inbound",
    "AgentID": "agent7_shop",
    "AgentPhoneNumber": "9384800000",
    "AgentUniqueID": "68368",
    "AgentName": "Kannan",
    "Disposition": "Wrap up time exceeded :120",
    "HangupBy": "UserHangup",
    "Status": "Answered",
    "AudioFile": "http://recordings.kookoo.in/shop/shop_9049754955340984_20180806165933.mp3",
    "TransferType": "No Transfers",
    "TransferredTo": "",
    "Comments": "",
    "DialStatus": "answered",
    "Apikey": KEY,
    "AgentStatus": "answered",
    "CustomerStatus": "answered",
    "UserName": "shop",
    "CallerConfAudioFile": "",
    "ConfDuration": "00:00:00",
    "CampaignStatus": "ONLINE",
}


def test_a_real_2018_push_without_ucid_is_keyed_by_its_monitor_ucid():
    """The 2018 push (monitorUCID, no UCID, TransferType) gives every column, in UTC, no key."""
    result = parse_push(
        {"data": orjson.dumps(PUSH_2018).decode()}, account=account(), received_at=RECEIVED
    )
    (call,) = result.records
    assert (call.call_key, call.source, call.call_id) == ("9049754955340984", "push", None)
    assert call.started_at == dt.datetime(2018, 8, 6, 11, 29, 33, tzinfo=dt.UTC)
    assert call.ended_at == dt.datetime(2018, 8, 6, 11, 30, 3, tzinfo=dt.UTC)
    assert call.answered_at == dt.datetime(2018, 8, 6, 11, 29, 40, tzinfo=dt.UTC)
    assert call.local_date == dt.date(2018, 8, 6)
    assert (call.duration_s, call.talk_s, call.ring_s) == (30, 23, 7)
    assert (call.agent_name, call.agent_number) == ("Kannan", "9384800000")
    assert (call.direction, call.status, call.service) == ("inbound", "answered", "inbound")
    assert (call.customer_number, call.line_number) == ("919080600507", "914466949093")
    assert call.department == "Inbound_914466205652"
    assert (call.hangup_cause, call.description) == ("UserHangup", "Wrap up time exceeded :120")
    assert call.recording_url == PUSH_2018["AudioFile"]
    stored = orjson.loads(call.raw)
    assert KEY not in call.raw and "Apikey" not in stored
    assert (stored["TransferType"], stored["TransferredTo"]) == ("No Transfers", "")
    # The confirming lookup asks CallBacks with that id: the leg's own UCID in this reading.
    assert [lk.call_key for lk in result.lookups] == ["9049754955340984"]


def test_a_later_transfer_legs_push_is_keyed_by_its_own_ucid():
    """A push with the first leg's monitorUCID and its own UCID lands on (and looks up) its leg."""
    leg = {**PUSH_2018, "UCID": "9049754955340985", "TransferType": "Agent Transfer"}
    result = parse_push(leg, account=account(), received_at=RECEIVED)
    assert [r.call_key for r in result.records] == ["9049754955340985"]
    assert [lk.call_key for lk in result.lookups] == ["9049754955340985"]


def test_push_lookup_delay_follows_the_account_setting():
    """The first confirming lookup waits the account's lookup_delay."""
    result = parse_push(CALLBACK, account=account(lookup_delay="5m"), received_at=RECEIVED)
    assert result.lookups[0].not_before == RECEIVED + dt.timedelta(minutes=5)


def test_push_keeps_good_records_and_rejects_bad_ones():
    """A bad record in a push is a Reject (stream "push", payload scrubbed); the rest is kept."""
    result = parse_push(
        [CALLBACK, {**CALLBACK, "monitorUCID": "7", "StartTime": "soon"}],
        account=account(),
        received_at=RECEIVED,
    )
    assert [r.call_key for r in result.records] == ["85710000012345"]
    assert [(r.stream, r.call_key) for r in result.rejects] == [("push", "7")]
    assert KEY not in result.rejects[0].payload


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"data": "not json"}, "not JSON"),
        ({"data": 5}, "expected a call record"),
        ([1, 2], "no usable call"),
        ([], "no usable call"),
        ("garbage", "not JSON"),
        ({"StartTime": "2021-02-09 10:33:53"}, "no usable call"),
    ],
)
def test_push_with_nothing_usable_is_a_parse_error(doc, message):
    """A push with no usable call raises ParseError saying why (the receiver answers 422)."""
    with pytest.raises(ParseError, match=message):
        parse_push(doc, account=account(), received_at=RECEIVED)


@pytest.mark.parametrize(
    ("attempts", "minutes"), [(0, 10), (1, 20), (2, 40), (5, 320), (6, 360), (40, 360)]
)
def test_no_data_found_waits_grow_to_six_hours(attempts: int, minutes: int) -> None:
    """After "No Data Found" the wait doubles per attempt, capped at 6 hours."""
    from cdrsync.vendors.ozonetel_lookup import retry_wait

    assert retry_wait(dt.timedelta(minutes=10), attempts) == dt.timedelta(minutes=minutes)


def test_a_list_push_of_json_texts_keeps_no_api_key_in_its_rejects():
    """A list push whose items are JSON text cannot be normalized; its rejects still hold the
    record without its Apikey."""
    item = orjson.dumps({**CALLBACK, "Apikey": "KK7secret", "StartTime": "soon"}).decode()
    assert "KK7secret" not in payload_text(item)
    assert orjson.loads(payload_text(item))["StartTime"] == "soon"


def test_a_date_at_the_end_of_time_is_a_reject_not_a_crash():
    """A bare EndTime after midnight on CallDate 9999-12-31 would be in year 10000: the record
    is rejected, the rest of the page is kept."""
    odd = {**BULK, "UCID": "2", "CallDate": "9999-12-31", "StartTime": "23:59:59",
           "EndTime": "00:00:10"}  # fmt: skip
    page = read_page(bulk_page([{**BULK, "UCID": "1"}, odd]))
    assert [r.call_key for r in page.records] == ["1"]
    assert [r.call_key for r in page.rejects] == ["2"]


@pytest.mark.parametrize("depth", [300, 1000])
def test_a_record_nested_too_deeply_is_rejected_without_its_api_key(depth):
    """Too deep to write back (255) or to scrub (Python's stack): a reject with no Apikey, the
    rest of the page kept."""
    deep = {**BULK, "UCID": "2", "Apikey": "KK7secret", "Extra": "DEEP"}
    body = bulk_page([{**BULK, "UCID": "1"}, deep]).replace(b'"DEEP"', b"[" * depth + b"]" * depth)
    page = read_page(body)
    assert [r.call_key for r in page.records] == ["1"]
    assert [r.call_key for r in page.rejects] == ["2"]
    assert "KK7secret" not in page.rejects[0].payload


LEG_A = {**CALLBACK, "StartTime": "2021-02-09 10:33:53"}  # the first leg (monitorUCID its own)
LEG_B = {**CALLBACK, "StartTime": "2021-02-09 10:36:10"}  # a later leg: the same monitorUCID


@pytest.mark.parametrize(
    ("answer", "pushed_start", "kept"),
    [
        ([LEG_A], "2021-02-09 10:33:53", ["10:33:53"]),
        ([LEG_B], "2021-02-09 10:33:53", ["10:36:10"]),  # one record: the leg asked for
        ([LEG_A, LEG_B], "2021-02-09 10:33:53", ["10:33:53"]),
        ([LEG_A, LEG_B], "2021-02-09 10:36:10", ["10:36:10"]),
        ([LEG_A, LEG_B], "2021-02-09 11:00:00", []),  # neither is the pushed leg
        ([LEG_A, {**LEG_B, "UCID": "85710000012346"}], "2021-02-09 10:33:53",
         ["10:33:53", "10:36:10"]),  # a leg naming its own UCID is kept under it
    ],
)  # fmt: skip
def test_a_callbacks_answer_of_several_legs_keeps_the_asked_ones_only(answer, pushed_start, kept):
    """Records without UCID all take the asked UCID: only the one that started with the pushed
    leg is its copy, so another leg's record never lands on the asked leg's row."""
    from cdrsync.vendors.ozonetel_lookup import asked_leg

    records = [
        normalize_callback(
            r, account="oz", zone=IST, fetched_at=FETCHED, source="lookup", asked="85710000012345"
        )
        for r in answer
    ]
    start = dt.datetime.fromisoformat(pushed_start).replace(tzinfo=IST).astimezone(dt.UTC)
    chosen = asked_leg(records, "85710000012345", start)
    starts = [r.started_at for r in chosen]
    assert [s.astimezone(IST).strftime("%H:%M:%S") for s in starts if s is not None] == kept
    assert None not in starts
