"""PostgreSQL: the per-call lookup queue (``lookups``), VCC Live events and the outbox.

Part of the store (it uses ``Store``'s pool, and the named queries and error translation of
``queries``). Every write that finishes a piece of work commits together with what the work
produced: a lookup's calls, events and follow-ups with its new state; a push's calls with the
lookups it queues; an outbox row's numberid with its ``delivered`` state.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdrsync.model import (
    CallEvent,
    CallRecord,
    LookupItem,
    LookupOutcome,
    LookupRequest,
    Reject,
    WriteResult,
)
from cdrsync.store.queries import ADVANCE_STATE_SQL, QUERIES, translate
from cdrsync.store.upsert import upsert_in

LOOKUP_STATES = ("pending", "done", "gave_up")
OUTBOX_STATES = ("pending", "sending", "delivered", "failed", "unknown")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A claimed ``vcclive_outbox`` row."""

    id: int
    projectid: int
    payload: Mapping[str, Any]
    attempts: int
    sent_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    """For a row in doubt: since when (nothing else touches such a row until it is resolved)."""


@dataclass(frozen=True, slots=True)
class ProbeBounds:
    """Where the records of a project's rows in doubt can lie (``Queues.outbox_probe_bounds``)."""

    after: int
    """The highest numberid delivered by a batch sent before them (0: none)."""
    until: int | None
    """The lowest numberid delivered by a batch sent after them (None: none yet)."""
    taken: frozenset[int]
    """Numberids between the two that delivered rows own already."""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _item(row: Mapping[str, Any]) -> LookupItem:
    return LookupItem(
        id=int(row["id"]),
        vendor=row["vendor"],
        account=row["account"],
        kind=row["kind"],
        call_key=row["call_key"],
        context=_json(row["context"]) or {},
        attempts=int(row["attempts"]),
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
    )


def _outbox(row: Mapping[str, Any]) -> OutboxRow:
    return OutboxRow(
        id=int(row["id"]),
        projectid=int(row["projectid"]),
        payload=_json(row["payload"]),
        attempts=int(row["attempts"]),
        sent_at=row.get("sent_at") if hasattr(row, "get") else None,
        updated_at=row.get("updated_at") if hasattr(row, "get") else None,
    )


async def _enqueue(
    conn: Any, vendor: str, account: str, lookups: Sequence[LookupRequest], now: dt.datetime
) -> None:
    if not lookups:
        return
    # One row per (kind, call_key): a push may list a call twice (Ozonetel list pushes), and
    # one INSERT ... ON CONFLICT cannot touch a row twice; the last request wins.
    lookups = list({(lk.kind, lk.call_key): lk for lk in lookups}.values())
    await conn.execute(
        QUERIES["enqueue_lookups"], vendor, account,
        [lk.kind for lk in lookups], [lk.call_key for lk in lookups],
        [json.dumps(dict(lk.context), sort_keys=True, default=str) for lk in lookups],
        [lk.not_before for lk in lookups], now,
    )  # fmt: skip


async def _replace_events(
    conn: Any, vendor: str, account: str, events: Sequence[CallEvent], now: dt.datetime
) -> None:
    if not events:
        return
    records = sorted({(e.projectid, e.numberid) for e in events})
    await conn.execute(
        QUERIES["delete_events"], vendor, account,
        [p for p, _ in records], [n for _, n in records],
    )  # fmt: skip
    await conn.execute(
        QUERIES["insert_events"], vendor, account,
        [e.projectid for e in events], [e.numberid for e in events], [e.seq for e in events],
        [e.call_uuid for e in events], [e.type for e in events],
        [e.dispositionid for e in events], [e.state for e in events],
        [e.userid for e in events], [e.description for e in events],
        [e.created_at for e in events], now, [e.raw for e in events],
    )  # fmt: skip


class Queues:
    """Lookup queue, events and outbox operations on the store's pool."""

    def __init__(self, pool: Any, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn

    # ------------------------------------------------------------------ pushes and lookups

    async def write_push(
        self,
        stream: str,
        records: Sequence[CallRecord],
        rejects: Sequence[Reject],
        lookups: Sequence[LookupRequest],
        *,
        vendor: str,
        account: str,
        now: dt.datetime,
    ) -> WriteResult:
        """Store a push: its calls, rejects and the lookups it queues, in one transaction
        (the receiver answers 200 only after this commits)."""
        with translate(f"store a push for stream {stream}", self._dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                inserted, updated = await upsert_in(conn, records, rejects, now)
                await _enqueue(conn, vendor, account, lookups, now)
                await conn.fetchval(ADVANCE_STATE_SQL, stream, inserted, updated, None, None,
                                    False, now)  # fmt: skip
        return WriteResult(inserted, updated, len(records) - inserted - updated, len(rejects))

    async def enqueue(
        self, vendor: str, account: str, lookups: Sequence[LookupRequest], *, now: dt.datetime
    ) -> None:
        """Queue lookups (an already queued one keeps its attempts)."""
        with translate(f"queue lookups of {vendor} account {account}", self._dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                await _enqueue(conn, vendor, account, lookups, now)

    async def due_lookups(
        self, vendor: str, account: str, kinds: Iterable[str], *, now: dt.datetime, limit: int
    ) -> list[LookupItem]:
        """Pending lookups due at ``now``, oldest due first."""
        with translate(f"read the due lookups of {vendor} account {account}", self._dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    QUERIES["due_lookups"], vendor, account, list(kinds), now, limit
                )
        return [_item(row) for row in rows]

    async def next_lookup_due(
        self, vendor: str, account: str, kinds: Iterable[str]
    ) -> dt.datetime | None:
        """When the earliest pending lookup is due (None: the queue is empty)."""
        with translate(f"read the lookup queue of {vendor} account {account}", self._dsn):
            value = await self._pool.fetchval(
                QUERIES["next_lookup_due"], vendor, account, list(kinds)
            )
        return value  # type: ignore[no-any-return]

    async def finish_lookup(
        self,
        stream: str,
        item: LookupItem,
        outcome: LookupOutcome,
        *,
        now: dt.datetime,
    ) -> WriteResult:
        """Commit one lookup attempt: its calls, rejects, events and follow-ups with the item's
        new state (pending again for a retry, done, gave_up)."""
        state = "pending" if outcome.state == "retry" else outcome.state
        with translate(f"finish lookup {item.kind} {item.call_key}", self._dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                inserted, updated = await upsert_in(conn, outcome.records, outcome.rejects, now)
                await _replace_events(conn, item.vendor, item.account, outcome.events, now)
                await _enqueue(conn, item.vendor, item.account, outcome.follow_ups, now)
                await conn.execute(
                    QUERIES["finish_lookup"], item.id, state, outcome.counted,
                    outcome.next_attempt_at, outcome.note, now,
                )  # fmt: skip
                await conn.fetchval(ADVANCE_STATE_SQL, stream, inserted, updated, None, None,
                                    False, now)  # fmt: skip
        records = len(outcome.records)
        return WriteResult(inserted, updated, records - inserted - updated, len(outcome.rejects))

    async def confirmed_by_list(
        self, vendor: str, account: str, kinds: Iterable[str], *, now: dt.datetime
    ) -> int:
        """Close pending lookups whose call the list poller has stored: the list is the source
        of truth, so the request would buy nothing. Returns how many were closed."""
        with translate(f"close confirmed lookups of {vendor} account {account}", self._dsn):
            status = await self._pool.execute(
                QUERIES["lookups_confirmed_by_list"], vendor, account, now, list(kinds)
            )
        return int(status.split()[-1]) if status else 0

    async def depths(self) -> dict[tuple[str, str, str], dict[str, int]]:
        """``(vendor, account, "lookups" | "outbox") -> {state: rows}``."""
        with translate("read the queue depths", self._dsn):
            rows = await self._pool.fetch(QUERIES["queue_depths"])
        found: dict[tuple[str, str, str], dict[str, int]] = {}
        for row in rows:
            key = (row["vendor"], row["account"], row["queue"])
            found.setdefault(key, {})[row["state"]] = int(row["rows"])
        return found

    async def events_of(self, vendor: str, account: str) -> list[Mapping[str, Any]]:
        """Every stored event of an account (for tests and tools)."""
        with translate(f"read the events of {vendor} account {account}", self._dsn):
            rows = await self._pool.fetch(
                "SELECT * FROM call_events WHERE vendor = $1 AND account = $2 "
                "ORDER BY projectid, numberid, seq",
                vendor,
                account,
            )
        return [dict(row) for row in rows]

    # ------------------------------------------------------------------ backfills

    async def request_backfill(
        self,
        stream: str,
        account: str,
        *,
        start: dt.datetime,
        until: dt.datetime,
        now: dt.datetime,
    ) -> None:
        """Hand a backfill to the daemon that owns the account (the stream must exist)."""
        with translate(f"request backfill {stream}", self._dsn):
            await self._pool.execute(QUERIES["request_backfill"], stream, account, start, until,
                                     now)  # fmt: skip

    async def open_backfills(
        self, accounts: Iterable[str]
    ) -> list[tuple[str, str, dt.datetime, dt.datetime]]:
        """Unfinished handed-over backfills of ``accounts``: (stream, account, start, until)."""
        with translate("read the requested backfills", self._dsn):
            rows = await self._pool.fetch(QUERIES["open_backfills"], list(accounts))
        return [(r["stream"], r["account"], r["start_at"], r["until_at"]) for r in rows]

    async def backfill_finished(self, stream: str, *, now: dt.datetime, until: dt.datetime) -> None:
        """A handed-over backfill reached ``until``, the end of the range it was given (a
        request extended since stays open, to be run again)."""
        with translate(f"finish backfill {stream}", self._dsn):
            await self._pool.execute(QUERIES["backfill_finished"], stream, now, until)

    async def backfill_done(self, stream: str, *, until: dt.datetime) -> bool:
        """Whether the daemon has finished the handed-over backfill up to ``until``."""
        with translate(f"read backfill {stream}", self._dsn):
            return bool(await self._pool.fetchval(QUERIES["backfill_done"], stream, until))

    # ------------------------------------------------------------------ rate grants

    async def take_grant(self, account: str, group: str, *, limit: int, window: float) -> float:
        """Take one grant of ``account``'s ``group`` for every process sharing the database:
        0 when fewer than ``limit`` were taken in the last ``window`` seconds (it is recorded
        now), else the seconds until one leaves that window. One statement (SQL function
        ``take_rate_grant``) under an advisory lock, on the database's clock; it also forgets
        the group's older grants."""
        with translate(f"take a {group} request grant of account {account}", self._dsn):
            wait = await self._pool.fetchval(QUERIES["take_grant"], account, group, limit, window)
        return float(wait)

    async def grant_ages(self, account: str, group: str, *, within: float) -> list[float]:
        """How many seconds ago (database clock) each grant of the last ``within`` seconds was
        taken, by any process; oldest first."""
        with translate(f"read the recent {group} requests of account {account}", self._dsn):
            rows = await self._pool.fetch(QUERIES["grant_ages"], account, group, within)
        return [float(r["age"]) for r in rows]

    async def prune_grants(self, *, before: dt.datetime) -> None:
        """Forget grants older than any window."""
        with translate("forget old rate grants", self._dsn):
            await self._pool.execute(QUERIES["prune_grants"], before)

    # ------------------------------------------------------------------ outbox

    async def outbox_recover(
        self, account: str, *, now: dt.datetime, sent_before: dt.datetime | None = None
    ) -> int:
        """Rows a dead process left ``sending`` (sent before ``sent_before``, if given) become
        ``unknown``, checked before resending. Returns how many."""
        with translate(f"recover the outbox of account {account}", self._dsn):
            rows = await self._pool.fetch(QUERIES["outbox_recover"], account, now, sent_before)
        return len(rows)

    async def outbox_sending(self, account: str) -> int:
        """How many rows of the account are ``sending``."""
        with translate(f"read the outbox of account {account}", self._dsn):
            value = await self._pool.fetchval(QUERIES["outbox_sending"], account)
        return int(value or 0)

    async def outbox_claim(
        self, account: str, *, now: dt.datetime, limit: int, batch: str
    ) -> list[OutboxRow]:
        """Claim up to ``limit`` due rows of one project: they are ``sending`` once this
        returns (committed before the request goes out)."""
        with translate(f"claim outbox rows of account {account}", self._dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(QUERIES["outbox_claim"], account, now, limit, batch)
        return sorted((_outbox(row) for row in rows), key=lambda r: r.id)

    async def outbox_delivered(
        self, ids: Sequence[int], numberids: Sequence[int], *, now: dt.datetime
    ) -> None:
        """Write back the numberids VCC Live gave the rows."""
        with translate("record delivered outbox rows", self._dsn):
            await self._pool.execute(QUERIES["outbox_delivered"], list(ids), list(numberids), now)

    async def outbox_set_state(
        self,
        ids: Sequence[int],
        state: str,
        *,
        error: str | None,
        now: dt.datetime,
        next_attempt_at: dt.datetime | None = None,
    ) -> None:
        """Move rows to ``state`` with ``error`` (and a retry time for ``pending``)."""
        if state not in OUTBOX_STATES:
            raise ValueError(f"unknown outbox state {state!r}")
        with translate(f"mark outbox rows {state}", self._dsn):
            await self._pool.execute(
                QUERIES["outbox_set_state"], list(ids), state, error, next_attempt_at, now
            )

    async def outbox_unknown(self, account: str, *, limit: int) -> list[OutboxRow]:
        """Rows whose delivery is in doubt, oldest first."""
        with translate(f"read the unknown outbox rows of account {account}", self._dsn):
            rows = await self._pool.fetch(QUERIES["outbox_unknown"], account, limit)
        return [_outbox(row) for row in rows]

    async def outbox_probe_bounds(
        self, account: str, projectid: int, *, first_sent: dt.datetime, last_sent: dt.datetime
    ) -> ProbeBounds:
        """Where the records of rows in doubt sent from ``first_sent`` to ``last_sent`` can lie
        in the project, judged by the batches delivered before and after them."""
        with translate(f"read the delivered numberids of account {account}", self._dsn):
            row = await self._pool.fetchrow(
                QUERIES["outbox_probe_bounds"], account, projectid, first_sent, last_sent
            )
        until = row["until"]
        return ProbeBounds(
            after=int(row["after"]),
            until=None if until is None else int(until),
            taken=frozenset(int(n) for n in row["taken"]),
        )

    async def outbox_add(
        self, account: str, projectid: int, payloads: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Insert rows as a user's application would (the demo, tools); their ids."""
        with translate(f"add outbox rows for account {account}", self._dsn):
            rows = await self._pool.fetch(
                QUERIES["outbox_add"], account, projectid,
                [json.dumps(dict(p), sort_keys=True) for p in payloads],
            )  # fmt: skip
        return [int(r["id"]) for r in rows]

    async def outbox_rows(self, account: str) -> list[dict[str, Any]]:
        """Every outbox row of the account (id, projectid, state, numberid, payload, error)."""
        with translate(f"read the outbox of account {account}", self._dsn):
            rows = await self._pool.fetch(QUERIES["outbox_rows"], account)
        return [{**dict(r), "payload": _json(r["payload"])} for r in rows]

    async def next_outbox_due(self, account: str) -> dt.datetime | None:
        """When the earliest pending outbox row is due (None: nothing pending)."""
        with translate(f"read the outbox of account {account}", self._dsn):
            value = await self._pool.fetchval(QUERIES["next_outbox_due"], account)
        return value  # type: ignore[no-any-return]
