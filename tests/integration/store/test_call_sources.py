"""Copies of one call from several sources merge on real PostgreSQL: each column takes the
best source that has a value, and every source's record is kept (issue 9, part 2); on both
write paths (COPY, and a small batch's one statement)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest

from cdrsync.model import CallRecord, WriteResult
from cdrsync.store.store import Store
from cdrsync.vendors import ozonetel, vcclive
from cdrsync.vendors.ozonetel_parse import normalize_bulk
from cdrsync.vendors.vcclive_parse import normalize as normalize_cdr
from support import one_account


@pytest.fixture(params=[0, 10**6], ids=["copy", "one statement"])
def store(store: Store, request: pytest.FixtureRequest) -> Store:
    """The test's store writing batches by COPY (0), or in one statement."""
    store.small_batch_rows = request.param
    return store


T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
BUD = zoneinfo.ZoneInfo("Europe/Budapest")
IST = zoneinfo.ZoneInfo("Asia/Kolkata")

VCC_CDR = {  # the list's copy: the agent by user id only, the disposition by id only
    "uuid": "95bd5f46-44e0-11e5-a6da-6547f8762750", "source": "36013555539",
    "destination": "36003333333", "userid": 6, "numberid": 11,
    "start_ts": "2026-11-20 10:05:08", "billing_ts": "2026-11-20 10:05:17", "ringtime": 9,
    "billingtime": 30, "talktime": 28, "dispositionid": 3, "projectid": 3, "dc": "16",
    "dialermode": "predictive", "direction": "outbound",
}  # fmt: skip
VCC_PUSH = {  # its Call Disposition webhook: the agent's name and the disposition's name
    "uuid": VCC_CDR["uuid"], "direction": "out", "source": "36013555539",
    "destination": "36003333333", "call_start_time": "2026-11-20 10:05:08", "userid": 6,
    "username": "anna", "agentName": "Anna Kovacs", "projectid": 3,
    "projectName": "Outbound sales", "numberid": 11,
    "disposition": {"id": 3, "name": "Callback requested", "assesment": "ordered"},
}  # fmt: skip
OZ_BULK = {  # the bulk record carries no AgentPhoneNumber
    "CallID": "700000144", "CallDate": "2026-11-20", "StartTime": "2026-11-20 14:33:53",
    "EndTime": "2026-11-20 14:38:50", "Duration": "00:04:57", "TalkTime": "00:04:46",
    "TimeToAnswer": "00:00:11", "CallerID": "919849438410", "DID": "918069000222",
    "AgentName": "Priya Sharma", "CampaignName": "Sales_Outbound", "Type": "Manual",
    "Status": "Answered", "Disposition": "Resolved", "HangupBy": "UserHangup",
    "UCID": "8571000000001440", "CallAudio": "https://recordings.example/1440.mp3",
}  # fmt: skip
OZ_PUSH = {  # the push of that leg ("Send callback immediately": no Disposition yet)
    "monitorUCID": "8571000000001440", "Did": "918069000222", "CampaignName": "Sales_Outbound",
    "CallerID": "919849438410", "StartTime": "2026-11-20 14:33:53",
    "EndTime": "2026-11-20 14:38:50", "TimeToAnswer": "00:00:11", "CallDuration": "00:04:57",
    "Duration": "00:04:46", "Type": "Manual", "AgentPhoneNumber": "09800000101",
    "AgentName": "Priya Sharma", "Disposition": "", "HangupBy": "UserHangup",
    "Status": "Answered", "AudioFile": "https://recordings.example/1440.mp3",
    "TransferType": "No Transfers", "TransferredTo": "", "Apikey": "KK-secret",
}  # fmt: skip


def vcc_copies(fetched: dt.datetime) -> tuple[CallRecord, CallRecord]:
    """(list copy, push copy) of the VCC Live call, both read at ``fetched``."""
    acc = one_account(
        {"name": "cc", "vendor": "vcclive", "base_url": "https://cc.example", "username": "cc",
         "api_key": "t", "start": "2026-11-01", "timezone": "Europe/Budapest"}
    )  # fmt: skip
    listed = normalize_cdr(VCC_CDR, account="cc", zone=BUD, fetched_at=fetched, source="list")
    (pushed,) = vcclive.parse_push(VCC_PUSH, account=acc, received_at=fetched).records
    return listed, pushed


def oz_copies(fetched: dt.datetime) -> tuple[CallRecord, CallRecord]:
    """(list copy, push copy) of the Ozonetel leg, both read at ``fetched``."""
    acc = one_account(
        {"name": "cc", "vendor": "ozonetel", "base_url": "https://oz.example",
         "username": "u", "api_key": "KK-secret", "start": "2026-11-01"}
    )  # fmt: skip
    listed = normalize_bulk(OZ_BULK, account="cc", zone=IST, fetched_at=fetched)
    (pushed,) = ozonetel.parse_push(OZ_PUSH, account=acc, received_at=fetched).records
    return listed, pushed


# The list's columns, plus what only the push carries (VCC: the agent's name, the disposition's
# name; Ozonetel: the agent's phone).
EXPECTED: dict[str, dict[str, Any]] = {
    "vcclive": {
        "source": "list", "status": "answered", "talk_s": 28, "hangup_cause": "16",
        "service": "predictive", "department": "3", "agent_number": "6", "agent_name": "anna",
        "description": "Callback requested",
    },
    "ozonetel": {
        "source": "list", "status": "answered", "talk_s": 286, "call_id": "700000144",
        "agent_name": "Priya Sharma", "agent_number": "09800000101", "description": "Resolved",
    },
}  # fmt: skip
COPIES: dict[str, Callable[[dt.datetime], tuple[CallRecord, CallRecord]]] = {
    "vcclive": vcc_copies,
    "ozonetel": oz_copies,
}


async def stored(store: Store, vendor: str) -> asyncpg.Record:
    """The call's row."""
    async with store._pool.acquire() as conn:  # the test database of the fixture
        row = await conn.fetchrow("SELECT * FROM calls WHERE vendor = $1", vendor)
    assert row is not None
    return row


@pytest.mark.parametrize("vendor", ["vcclive", "ozonetel"])
@pytest.mark.parametrize("order", ["push, then list", "list, then push"])
async def test_both_orders_end_with_the_lists_fields_plus_the_push_only_fields(
    store: Store, vendor: str, order: str
) -> None:
    """Push then list, or list then push: the list's columns, the push-only ones, both records."""
    stream = f"{vendor}:cc:any"
    await store.ensure_stream(stream, vendor=vendor, account="cc", kind="window")
    listed, pushed = COPIES[vendor](T0)
    first, second = (pushed, listed) if order == "push, then list" else (listed, pushed)
    await store.write_batch(stream, [first], now=T0)
    later = T0 + dt.timedelta(minutes=5)
    second = second._replace(fetched_at=later)
    assert (await store.write_batch(stream, [second], now=later)).updated == 1

    row = await stored(store, vendor)
    assert {column: row[column] for column in EXPECTED[vendor]} == EXPECTED[vendor]
    assert row["content_hash"] == listed.content_hash  # raw is the list's record
    assert orjson.loads(row["raw"]) == orjson.loads(listed.raw)
    assert orjson.loads(row["raw_other"]) == {"push": orjson.loads(pushed.raw)}
    assert set(orjson.loads(row["fetched_other"])) == {"push"}
    assert "KK-secret" not in row["raw_other"]

    # Re-reading either copy (or both) writes nothing: the content hash and the kept record.
    again = T0 + dt.timedelta(minutes=10)
    for copies in ([listed], [pushed], [listed, pushed]):
        result = await store.write_batch(
            stream, [c._replace(fetched_at=again) for c in copies], now=again
        )
        assert result.written == 0, copies
    assert (await stored(store, vendor))["updated_at"] == later


async def test_a_newer_push_updates_its_kept_record_an_older_one_never_does(store: Store) -> None:
    """A later push with the disposition fills the row; a stale push after it changes nothing."""
    stream = "ozonetel:cc:any"
    await store.ensure_stream(stream, vendor="ozonetel", account="cc", kind="window")
    listed, pushed = oz_copies(T0)
    bare = listed._replace(description=None)  # a list copy read before the disposition was set
    await store.write_batch(stream, [bare], now=T0)
    late = T0 + dt.timedelta(minutes=5)
    disposed = {**OZ_PUSH, "Disposition": "Interested"}
    acc = one_account(
        {"name": "cc", "vendor": "ozonetel", "base_url": "https://oz.example",
         "username": "u", "api_key": "KK-secret", "start": "2026-11-01"}
    )  # fmt: skip
    (newer,) = ozonetel.parse_push(disposed, account=acc, received_at=late).records
    assert (await store.write_batch(stream, [newer], now=late)).updated == 1
    assert (await store.write_batch(stream, [pushed], now=late)) == WriteResult(unchanged=1)
    row = await stored(store, "ozonetel")
    assert (row["description"], row["source"]) == ("Interested", "list")
    assert orjson.loads(row["raw_other"])["push"]["Disposition"] == "Interested"


@pytest.mark.parametrize(
    "order", [("push", "lookup", "list"), ("list", "lookup", "push"), ("lookup", "push", "list")]
)
async def test_three_sources_keep_the_webhooks_agent_name_and_every_record(
    store: Store, order: tuple[str, str, str]
) -> None:
    """VCC Live pushed, looked up and listed in any order: the webhook's agent name, the list's
    columns, the list's record in raw and the two others in raw_other."""
    stream = "vcclive:cc:any"
    await store.ensure_stream(stream, vendor="vcclive", account="cc", kind="window")
    listed, pushed = vcc_copies(T0)
    looked_up = normalize_cdr(
        {**VCC_CDR, "afterwork": 4}, account="cc", zone=BUD, fetched_at=T0, source="lookup"
    )
    copies = {"list": listed, "lookup": looked_up, "push": pushed}
    for minute, source in enumerate(order):
        at = T0 + dt.timedelta(minutes=minute)
        await store.write_batch(stream, [copies[source]._replace(fetched_at=at)], now=at)
    row = await stored(store, "vcclive")
    assert (row["source"], row["agent_name"], row["agent_number"]) == ("list", "anna", "6")
    assert row["description"] == "Callback requested"
    assert orjson.loads(row["raw"]) == orjson.loads(listed.raw)
    other = orjson.loads(row["raw_other"])
    assert other == {"push": orjson.loads(pushed.raw), "lookup": orjson.loads(looked_up.raw)}
