"""Doctor's judgement: observations -> ✓ / ✗ / ?, without I/O."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from cdrsync.ops.diagnosis import (
    FAIL,
    OK,
    UNKNOWN,
    AccountReport,
    Check,
    empty_answer_shape,
    judge_count,
    judge_empty_answer,
    judge_fields,
    judge_leg_ids,
    judge_not_yet,
    judge_page_cap,
    judge_partition,
    judge_zone,
    not_yet_answer,
    push_hint,
    render,
)

NOW = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("rows", "count_of_one", "verdict", "seen"),
    [
        (50, 1, OK, "per page"),
        (50, 2000, OK, "the window's total: count=2000"),
        (2, 2, OK, "the window's total"),
        (1, None, UNKNOWN, "only 1 call(s)"),
        (0, None, UNKNOWN, "only 0 call(s)"),
        (50, 7, UNKNOWN, "neither reading"),
    ],
)
def test_count_reading(rows: int, count_of_one: int | None, verdict: str, seen: str) -> None:
    """A one-row page's count tells the window's total from the page's rows."""
    check = judge_count(rows, count_of_one)
    assert (check.verdict, seen in check.observed) == (verdict, True), check


@pytest.mark.parametrize(
    ("rows", "total", "second", "verdict", "seen"),
    [
        (100, 2000, None, OK, "100 rows served when 100 were asked"),
        (20, 2000, None, OK, "capped: 20 rows a page"),
        (20, None, 20, OK, "capped: 20 rows a page"),
        (20, 20, None, UNKNOWN, "only 20 call(s)"),
        (20, None, 0, UNKNOWN, "only 20 call(s)"),
    ],
)
def test_page_cap(
    rows: int, total: int | None, second: int | None, verdict: str, seen: str
) -> None:
    """A short first page is a cap only when the window holds more than it served."""
    check = judge_page_cap(100, rows, total=total, second_page_rows=second)
    assert check.verdict == verdict
    assert seen in check.observed
    assert ("page_size = 20" in check.change) == ("capped" in seen)


@pytest.mark.parametrize(
    ("newest", "verdict", "seen"),
    [
        (NOW - dt.timedelta(minutes=3), OK, "3m ago"),
        (NOW - dt.timedelta(hours=26), OK, "26h 00m ago"),
        (NOW + dt.timedelta(minutes=4), OK, "ago"),
        (NOW + dt.timedelta(hours=5, minutes=30), FAIL, "5h 30m in the future"),
        (None, UNKNOWN, "no recent call"),
    ],
)
def test_time_zone(newest: dt.datetime | None, verdict: str, seen: str) -> None:
    """Calls starting well after now mean the configured zone is west of the vendor's."""
    check = judge_zone(newest, now=NOW, zone="UTC")
    assert check.verdict == verdict
    assert seen in check.observed


def test_fields_names_the_columns_that_stay_empty(make_call) -> None:
    """Columns empty in every record are listed; bookkeeping columns never are."""
    records = [make_call("a", recording_url=None, service=None), make_call("b", service=None)]
    check = judge_fields(records)
    assert check.verdict == OK
    assert check.observed.endswith("stay empty: call_uuid, recording_url, service, description")
    assert judge_fields([]).verdict == UNKNOWN


@pytest.mark.parametrize(
    ("bulk", "asked", "answered", "verdict", "seen"),
    [
        ([{"UCID": "1"}], "1", [{"monitorUCID": "1"}], OK, "by its own UCID"),
        ([{"UCID": "2"}], "2", [{"monitorUCID": "1"}], OK, "monitorUCID differs from UCID"),
        ([{"UCID": "2"}], "2", [], OK, "no record for UCID 2 yet"),
        ([{"UCID": "2"}], None, [], OK, "no CallBacks lookup made"),
        ([{"CallID": "9"}], "2", [], FAIL, "bulk: UCID in 0 of 1"),
        ([], None, [], UNKNOWN, "no records"),
    ],
)
def test_leg_ids(bulk, asked, answered, verdict: str, seen: str) -> None:
    """Ozonetel: a CallBacks record naming its leg by another monitorUCID is reported."""
    check = judge_leg_ids(bulk, asked, answered)
    assert check.verdict == verdict
    assert seen in check.observed


@pytest.mark.parametrize(
    ("doc", "shape"),
    [
        ({"status": "success", "details": [], "totalCount": 0}, "details"),
        ({"status": "success", "message": "No Data Found"}, "no_data"),
        ({"status": "success", "totalCount": "0"}, "string_total"),
        ({"status": "success", "details": [], "totalCount": "0"}, "string_total"),
        ({"status": "success"}, "other"),
        (None, "not a JSON object"),
    ],
)
def test_empty_answer_shape(doc, shape: str) -> None:
    """Each reading of Ozonetel's empty window is named."""
    assert empty_answer_shape(doc) == shape


def test_an_empty_answer_the_client_cannot_read_fails() -> None:
    """An empty window the client does not read as empty would stall the backlog: ✗."""
    doc = {"status": "success", "message": "No Data Found"}
    assert judge_empty_answer(doc, None).verdict == OK
    assert judge_empty_answer(doc, "no details list").verdict == FAIL


@pytest.mark.parametrize(
    ("status", "doc", "answer"),
    [
        (404, {"errors": [{"code": 404}]}, "404"),
        (200, {"response": [], "errors": []}, "empty"),
        (
            200,
            {"response": None, "errors": [{"code": 404, "message": "CDR not found"}]},
            "error200",
        ),
        (200, {"response": {"uuid": "x"}}, "other (HTTP 200)"),
    ],
)
def test_not_yet_answer(status: int, doc, answer: str) -> None:
    """Each reading of VCC Live's "not processed yet" is named."""
    assert not_yet_answer(status, doc) == answer


@pytest.mark.parametrize(
    ("outcome", "error", "verdict"),
    [("retry", None, OK), ("done", None, FAIL), ("gave_up", None, FAIL), (None, "boom", FAIL)],
)
def test_not_yet_must_be_retried(outcome: str | None, error: str | None, verdict: str) -> None:
    """Only a lookup kept on its schedule passes: any final answer loses webhook calls."""
    assert judge_not_yet(404, None, outcome, error).verdict == verdict


@pytest.mark.parametrize(
    ("secret", "listen", "verdict", "seen"),
    [
        (True, ("127.0.0.1", 9108), UNKNOWN, "/hooks/acct?token=<webhook_secret>"),
        (False, ("127.0.0.1", 9108), FAIL, "no webhook_secret"),
        (True, None, FAIL, "http_listen is off"),
    ],
)
def test_push_hint(secret: bool, listen, verdict: str, seen: str) -> None:
    """The push URL to set on the vendor's side, or what stops pushes from arriving."""
    check = push_hint("acct", secret, listen)
    assert check.verdict == verdict
    assert seen in check.observed


def test_render_table_and_json() -> None:
    """The table marks each check and ends with the account's verdict; JSON says the same."""
    reports = [
        AccountReport("a", "acefone", (Check("auth", OK, "accepted"),)),
        AccountReport("b", "acefone", (Check("auth", FAIL, "HTTP 401", "fix the token"),)),
    ]
    table = render(reports, as_json=False)
    assert "  ✓ auth  accepted" in table
    assert "  ✗ auth  HTTP 401\n          -> fix the token" in table
    assert table.count("= the sync will work") == 1
    assert table.count("= the sync will NOT work") == 1
    doc = json.loads(render(reports, as_json=True))
    assert doc["ok"] is False
    assert [a["failing"] for a in doc["accounts"]] == [False, True]
    assert doc["accounts"][1]["checks"][0]["change"] == "fix the token"


BUDAPEST = ZoneInfo("Europe/Budapest")


@pytest.mark.parametrize(
    ("starts", "verdict", "seen"),
    [
        (["2026-12-03T00:10:00+01:00", "2026-12-03T23:50:00+01:00"], OK, "all 2 calls"),
        (["2026-12-02T23:30:00+00:00", "2026-12-03T12:00:00+00:00"], OK, "all 2 calls"),
        (["2026-12-03T23:30:00+00:00", "2026-12-03T12:00:00+00:00"], FAIL, "1 of 2 calls"),
        ([], UNKNOWN, "no call listed"),
    ],
)
def test_day_partition(starts: list[str], verdict: str, seen: str) -> None:
    """Calls listed under a day must start on that day in the configured zone."""
    parsed = [dt.datetime.fromisoformat(s) for s in starts]
    check = judge_partition(dt.date(2026, 12, 3), parsed, BUDAPEST)
    assert check.verdict == verdict
    assert seen in check.observed
