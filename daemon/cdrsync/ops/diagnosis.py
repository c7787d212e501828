"""`cdrsync doctor`'s judgement: what a handful of probes observed -> ✓ / ✗ / ? per check.

Pure: no I/O, ``now`` is passed in. ``app.doctor`` does the probing (a few requests from the
account's own rate budget) and hands the observations here; the table and ``--json`` are
rendered here too. A check fails (✗) only when it shows that the sync will not work; "?" means
the account's data could not tell (too few calls, for example) and says what would.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cdrsync.model import CallRecord

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
MARKS = {OK: "✓", FAIL: "✗", UNKNOWN: "?"}
# A call "starting" this far after now is a clock or zone error, not a slow clock.
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
# Columns that every record fills by construction; the rest may stay empty for an account.
_BOOKKEEPING = frozenset(
    {"vendor", "account", "call_key", "raw", "content_hash", "fetched_at", "local_date"}
)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the table: the verdict, what was observed, and what to change."""

    name: str
    verdict: str
    observed: str
    change: str = ""


@dataclass(frozen=True, slots=True)
class AccountReport:
    """Every check of one account."""

    account: str
    vendor: str
    checks: tuple[Check, ...]

    @property
    def failing(self) -> bool:
        return any(check.verdict == FAIL for check in self.checks)


def judge_request(name: str, error: str | None, observed: str) -> Check:
    """A request that either answered (``observed``) or failed with ``error``."""
    if error is None:
        return Check(name, OK, observed)
    return Check(name, FAIL, error, "fix what the error names, then run doctor again")


def judge_count(rows: int, count_of_one: int | None) -> Check:
    """Acefone ``count``: ``rows`` on a full-size first page of the probe window, and the
    ``count`` of a one-row page of the same window (docs: "Number of records that are
    fetched", which reads either as the window's total or as this page's rows)."""
    if count_of_one is None or rows < 2:
        return Check(
            "count",
            UNKNOWN,
            f"only {rows} call(s) in the probe window: both readings of count agree",
            "run doctor again once the account has had a few calls",
        )
    if count_of_one == 1:
        return Check(
            "count",
            OK,
            f"per page: a one-row page says count=1 while the window holds {rows}+ calls; "
            "the sync pages while pages come back full",
        )
    if count_of_one >= rows:
        return Check("count", OK, f"the window's total: count={count_of_one} on a one-row page")
    return Check(
        "count",
        UNKNOWN,
        f"count={count_of_one} on a one-row page, below the {rows} rows seen: neither reading",
        "report this answer to the cdrsync maintainers",
    )


def judge_page_cap(
    page_size: int, rows: int, *, total: int | None, second_page_rows: int | None
) -> Check:
    """The real page cap: ``rows`` served when ``page_size`` were asked. ``total`` is the
    window's count when count reads as the total; ``second_page_rows`` the rows of page 2
    (asked when count is per page and page 1 came back short)."""
    if rows >= page_size:
        return Check("page cap", OK, f"{rows} rows served when {page_size} were asked")
    more = (total is not None and total > rows) or bool(second_page_rows)
    if more:
        return Check(
            "page cap",
            OK,
            f"capped: {rows} rows a page served when page_size={page_size} was asked, and "
            "the window holds more; the sync pages by the real size",
            f"set page_size = {rows} for this account to ask for what is served",
        )
    return Check(
        "page cap",
        UNKNOWN,
        f"the probe window holds only {rows} call(s), fewer than page_size={page_size}",
        "run doctor again at a busier hour to see the real cap",
    )


def judge_zone(newest: dt.datetime | None, *, now: dt.datetime, zone: str) -> Check:
    """Time zone plausibility: the newest call's start, read in the configured ``zone``,
    against ``now``. A call that starts in the future means the zone is wrong."""
    if newest is None:
        return Check(
            "time zone", UNKNOWN, "no recent call to compare", "run doctor after a few calls"
        )
    ahead = newest - now
    if ahead > FUTURE_TOLERANCE:
        return Check(
            "time zone",
            FAIL,
            f"the newest call starts {_span(ahead)} in the future when read as {zone}: its "
            "times are not in that zone, so windows would ask for the wrong hours",
            "set the account's timezone to the zone its vendor reports in (check a call's "
            "time in the vendor's portal)",
        )
    return Check("time zone", OK, f"the newest call started {_span(-ahead)} ago, read as {zone}")


def judge_fields(records: Sequence[CallRecord]) -> Check:
    """Which ``calls`` columns the account's real records leave empty."""
    if not records:
        return Check("fields", UNKNOWN, "no records to inspect", "run doctor after a few calls")
    columns = [name for name in CallRecord._fields if name not in _BOOKKEEPING]
    empty = [name for name in columns if all(getattr(r, name) is None for r in records)]
    if not empty:
        return Check("fields", OK, f"every mapped column filled in {len(records)} record(s)")
    return Check(
        "fields",
        OK,
        f"{len(records)} record(s); these calls columns stay empty: {', '.join(empty)}",
    )


def judge_partition(day: dt.date, starts: Sequence[dt.datetime], zone: dt.tzinfo) -> Check:
    """VCC Live: whether the calls listed under ``day`` start on that day in the configured
    ``zone`` (the day partition's zone is undocumented; the sync asks day by day in it)."""
    if not starts:
        return Check(
            "day partition", UNKNOWN, f"no call listed under {day} yet",
            "run doctor again later in the day",
        )  # fmt: skip
    other = sum(1 for start in starts if start.astimezone(zone).date() != day)
    if other:
        return Check(
            "day partition",
            FAIL,
            f"{other} of {len(starts)} calls listed under {day} start on another day in "
            f"{zone}: the vendor's days are cut in another zone, and calls near midnight "
            "would be asked for on the wrong day",
            "set the account's timezone to the zone of VCC Live's day partitions",
        )
    return Check(
        "day partition", OK, f"all {len(starts)} calls listed under {day} start that day in {zone}"
    )


def judge_leg_ids(
    bulk: Iterable[Mapping[str, Any]], asked: str | None, answered: Sequence[Mapping[str, Any]]
) -> Check:
    """Ozonetel: whether bulk records carry ``UCID`` (and ``monitorUCID``), and whether the
    CallBacks record of leg ``asked`` names it by its own UCID or by another ``monitorUCID``
    (the parent's, shared by the legs of a transferred call)."""
    records = list(bulk)
    if not records:
        return Check("leg ids", UNKNOWN, "no records to inspect", "run doctor after a few calls")
    ucid = sum(1 for r in records if r.get("UCID") not in (None, ""))
    monitor = sum(1 for r in records if r.get("monitorUCID") not in (None, ""))
    observed = f"bulk: UCID in {ucid} of {len(records)}, monitorUCID in {monitor}"
    if asked is None:
        observed += "; no CallBacks lookup made"
    elif not answered:
        observed += f"; CallBacks has no record for UCID {asked} yet"
    else:
        shown = str(answered[0].get("monitorUCID") or "")
        if shown == asked:
            observed += f"; CallBacks names leg {asked} by its own UCID as monitorUCID"
        else:
            observed += (
                f"; CallBacks names leg {asked} by monitorUCID {shown or '(none)'}: "
                "monitorUCID differs from UCID (shared by a transfer's legs)"
            )
    if ucid < len(records):
        return Check("leg ids", FAIL, observed, "report this: a bulk record without UCID")
    return Check("leg ids", OK, observed)


def empty_answer_shape(doc: Any) -> str:
    """Ozonetel's answer for a window without calls, named by the reading it follows."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if "details" in doc and isinstance(doc.get("totalCount"), int):
        return "details"
    if isinstance(doc.get("totalCount"), str):
        return "string_total"
    if "details" not in doc and "no data" in str(doc.get("message", "")).lower():
        return "no_data"
    return "other"


def judge_empty_answer(doc: Any, error: str | None) -> Check:
    """Ozonetel: the shape of an empty window's answer, and whether the client read it."""
    shape = empty_answer_shape(doc)
    if error is not None:
        return Check(
            "empty window",
            FAIL,
            f"answered as {shape!r}, which the client did not read as empty: {error}",
            "upgrade cdrsync; until then quiet windows stall the backlog",
        )
    return Check("empty window", OK, f"answered as {shape!r}, read as an empty window")


def not_yet_answer(status: int | None, doc: Any) -> str:
    """VCC Live's answer for a CDR it does not have (yet), named by the reading it follows."""
    if status == 404:
        return "404"
    if isinstance(doc, dict) and doc.get("errors"):
        return "error200"
    if isinstance(doc, dict) and doc.get("response") in (None, [], {}, ""):
        return "empty"
    return f"other (HTTP {status})"


def judge_not_yet(status: int | None, doc: Any, outcome: str | None, error: str | None) -> Check:
    """VCC Live: a lookup of an unknown uuid must be "not yet" (retried), never final."""
    answer = not_yet_answer(status, doc)
    if outcome == "retry":
        return Check("not yet", OK, f"an unknown uuid is answered {answer!r}: retried later")
    what = error or f"the lookup ended {outcome!r} on the first answer"
    return Check(
        "not yet",
        FAIL,
        f"an unknown uuid is answered {answer!r}: {what}",
        "upgrade cdrsync; until then webhook calls not yet costed are never looked up again",
    )


def push_hint(account: str, secret_set: bool, listen: tuple[str, int] | None) -> Check:
    """Which URL and secret to set on the vendor's side (reachability is not testable here)."""
    if listen is None:
        return Check(
            "push", FAIL, "daemon.http_listen is off: pushes cannot arrive",
            "set daemon.http_listen and publish it behind TLS",
        )  # fmt: skip
    if not secret_set:
        return Check(
            "push", FAIL, f"account {account} has no webhook_secret: pushes are refused (404)",
            "set webhook_secret for this account",
        )  # fmt: skip
    host, port = listen
    return Check(
        "push",
        UNKNOWN,
        f"listening on {host}:{port}; the vendor must reach https://<your host>/hooks/"
        f"{account}?token=<webhook_secret> (not testable from here)",
        "set that URL on the vendor's side; the first push shows in `cdrsync status`",
    )


def _span(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def render(reports: Sequence[AccountReport], *, as_json: bool) -> str:
    """The table per account, or one JSON document for scripts."""
    if as_json:
        return json.dumps(
            {
                "ok": not any(r.failing for r in reports),
                "accounts": [
                    {**asdict(r), "failing": r.failing, "checks": [asdict(c) for c in r.checks]}
                    for r in reports
                ],
            },
            indent=2,
            ensure_ascii=False,
        )
    lines: list[str] = []
    for report in reports:
        lines.append(f"{report.account} ({report.vendor})")
        width = max(len(c.name) for c in report.checks)
        for check in report.checks:
            lines.append(f"  {MARKS[check.verdict]} {check.name:<{width}}  {check.observed}")
            if check.change:
                lines.append(f"    {'':<{width}}  -> {check.change}")
        verdict = "the sync will NOT work" if report.failing else "the sync will work"
        lines.append(f"  = {verdict}")
    return "\n".join(lines)
