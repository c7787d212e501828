"""The three vendors of ``cdrsync demo``: each one's simulator, account settings and truth.

A ``VendorDemo`` holds one simulator sized for a one-minute demo, the account table the daemon
gets for it, and the simulator's truth hashed the way the vendor module builds ``raw`` (so the
calls table can be compared with it row by row). Simulated rate limits are faster than the
vendors' (Ozonetel's bulk reports allow 2 requests a minute: a backlog would take an hour), and
the daemon is configured to the same limits, so it still never exceeds them.

The VCC Live outbox is filled and checked here as a user would do it, with plain SQL on the
``vcclive_outbox`` table (the daemon's store has no API for writing it, on purpose: the table
is the interface).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator
from cdrsync.simulator.ozonetel_server import run_pushes, start_ozonetel_server
from cdrsync.simulator.server import RunningServer, start_server
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
from cdrsync.simulator.vcclive_server import run_webhooks, start_vcclive_server
from cdrsync.vendors.acefone import digest, record_hash
from cdrsync.vendors.ozonetel import scrub

if TYPE_CHECKING:
    from cdrsync.store.store import Store

OZONETEL_BULK_PER_MIN = 60
"""The demo's Ozonetel bulk budget (the vendor's is 2 a minute), simulator and daemon alike."""
VCC_PER_MIN = 600
"""The demo's VCC Live budget per endpoint group (the vendor documents none)."""
OUTBOX_ROWS = 5
LIMITS_BANNER = (
    "simulated limits are faster than the vendors': Ozonetel bulk reports "
    f"{OZONETEL_BULK_PER_MIN}/min here (the vendor allows 2/min), VCC Live {VCC_PER_MIN}/min "
    "per endpoint group; the daemon is configured to the same limits"
)


def _hash(value: Any) -> bytes:
    return digest(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


class VendorDemo(Protocol):
    """One vendor's part of the demo: its simulator, account and truth."""

    vendor: str
    account: str
    takes_pushes: bool

    async def serve(self) -> RunningServer:
        """Serve the simulator on a free 127.0.0.1 port."""

    def account_table(self, base_url: str, start: dt.date, secret: str) -> dict[str, Any]:
        """The account's configuration table (``secret``: the push URL's token)."""

    def truth(self) -> dict[str, bytes]:
        """call_key -> content hash of every call the simulator shows now."""

    def stop_live(self) -> None:
        """No new calls from now on: the truth becomes finite."""

    def last_visible_time(self) -> float:
        """When the truth stops changing (inf while live calls run)."""

    async def send_pushes(self, url: str, stop: asyncio.Event) -> None:
        """Post the vendor's pushes to ``url`` until ``stop`` (nothing for a vendor without)."""

    def pushes(self) -> int:
        """Pushes the daemon accepted so far."""

    def requests(self) -> int:
        """Requests the simulator has answered so far (every endpoint)."""

    def traffic(self) -> str:
        """The requests the simulator served, for the final report."""


def _common(name: str, vendor: str, base_url: str, start: dt.date) -> dict[str, Any]:
    return {"name": name, "vendor": vendor, "base_url": base_url, "start": start.isoformat()}


@dataclass(slots=True)
class AcefoneDemo:
    """Acefone: the list endpoint only (late and changed records, a few malformed ones)."""

    sim: AcefoneSimulator
    vendor: str = "acefone"
    account: str = "demo-acefone"
    takes_pushes: bool = False

    @classmethod
    def sized(cls, records: int) -> AcefoneDemo:
        """Every behaviour switched on, with ``records`` calls of backlog."""
        return cls(
            AcefoneSimulator(
                AcefoneSimConfig(
                    seed=7, backlog=records, backlog_days=2.0, live_per_minute=120.0,
                    late_fraction=0.03, late_delay_s=(10.0, 25.0), change_fraction=0.05,
                    change_delay_s=(5.0, 20.0), malformed_fraction=0.002, rate_limit=1200,
                )
            )
        )  # fmt: skip

    async def serve(self) -> RunningServer:
        """Serve the simulator on a free 127.0.0.1 port."""
        return await start_server(self.sim)

    def account_table(self, base_url: str, start: dt.date, secret: str) -> dict[str, Any]:
        """A token account polled every 3 s (Acefone sends no push the demo uses)."""
        return _common(self.account, self.vendor, base_url, start) | {
            "token": self.sim.config.token, "poll_interval": "3s", "lookback": "30m",
            "settle": "3s", "audit_interval": "30s", "rate_limits": {"list": "1000/min"},
        }  # fmt: skip

    def truth(self) -> dict[str, bytes]:
        """The well-formed records (malformed ones belong in rejects)."""
        return expected_hashes(self.sim)

    def stop_live(self) -> None:
        """No new calls (late and changed records still arrive)."""
        self.sim.stop_live()

    def last_visible_time(self) -> float:
        """When the last late or changed record becomes visible."""
        return self.sim.last_visible_time()

    async def send_pushes(self, url: str, stop: asyncio.Event) -> None:
        """Nothing: the demo's Acefone account is list-only."""

    def pushes(self) -> int:
        """None are sent."""
        return 0

    def requests(self) -> int:
        """List requests."""
        return self.sim.stats.list_requests

    def traffic(self) -> str:
        """List requests and 429s, and the malformed records made on purpose."""
        stats = self.sim.stats
        return (
            f"the simulator made {len(self.sim.malformed_ids())} malformed records on purpose; "
            f"{stats.list_requests} requests, {stats.rate_limited} answered 429"
        )


def expected_hashes(sim: AcefoneSimulator) -> dict[str, bytes]:
    """The Acefone simulator's truth as call_key -> content hash (malformed records excluded)."""
    bad = sim.malformed_ids()
    # Acefone's hash is of the record's bytes as served (vendors.acefone.record_hash).
    return {
        key: record_hash(text.encode()) for key, text in sim.iter_truth_json() if key not in bad
    }


@dataclass(slots=True)
class OzonetelDemo:
    """Ozonetel: bulk reports (live + backlog streams), pushes, CallBacks lookups."""

    sim: OzonetelSimulator
    vendor: str = "ozonetel"
    account: str = "demo-ozonetel"
    takes_pushes: bool = True

    @classmethod
    def sized(cls, records: int) -> OzonetelDemo:
        """Two days of backlog (well inside the 15-day horizon), a call every 2 s."""
        return cls(
            OzonetelSimulator(
                OzonetelSimConfig(
                    seed=11, backlog=records, backlog_days=2.0, live_per_minute=30.0,
                    bulk_rate_limit=OZONETEL_BULK_PER_MIN, visible_delay_s=(2.0, 6.0),
                )
            )
        )  # fmt: skip

    async def serve(self) -> RunningServer:
        """Serve the simulator on a free 127.0.0.1 port."""
        return await start_ozonetel_server(self.sim)

    def account_table(self, base_url: str, start: dt.date, secret: str) -> dict[str, Any]:
        """The simulated bulk budget; pushes confirmed by a lookup 3 s later (not 2 min)."""
        cfg = self.sim.config
        return _common(self.account, self.vendor, base_url, start) | {
            "username": cfg.username, "api_key": cfg.api_key, "webhook_secret": secret,
            "poll_interval": "3s", "settle": "3s", "lookup_delay": "3s", "lookup_retry": "10s",
            "rate_limits": {"bulk": f"{OZONETEL_BULK_PER_MIN}/min", "lookup": "50/min"},
        }  # fmt: skip

    def truth(self) -> dict[str, bytes]:
        """Every visible leg's bulk record, without its Apikey, as the vendor module stores."""
        return {ucid: _hash(scrub(record)) for ucid, record in self.sim.truth().items()}

    def stop_live(self) -> None:
        """No new calls."""
        self.sim.stop_live()

    def last_visible_time(self) -> float:
        """When the last leg becomes visible."""
        return self.sim.last_visible_time()

    async def send_pushes(self, url: str, stop: asyncio.Event) -> None:
        """Ozonetel's "URL to Push": each call's record once it has ended."""
        await run_pushes(self.sim, url, stop)

    def pushes(self) -> int:
        """Pushes answered 2xx."""
        return self.sim.stats.pushes_sent

    def requests(self) -> int:
        """Token, bulk and CallBacks requests."""
        return sum(self.sim.stats.requests.values())

    def traffic(self) -> str:
        """Bulk and CallBacks requests, and 429s."""
        stats = self.sim.stats
        bulk = stats.requests.get("bulk", 0) + stats.requests.get("details", 0)
        return (
            f"{stats.pushes_sent} pushes delivered, {stats.pushes_failed} failed; {bulk} bulk "
            f"requests, {stats.requests.get('callbacks', 0)} lookups, "
            f"{sum(stats.rate_limited.values())} answered 429"
        )


@dataclass(slots=True)
class VccDemo:
    """VCC Live: day lists, disposition webhooks, CDR and record lookups, the outbox."""

    sim: VccSimulator
    vendor: str = "vcclive"
    account: str = "demo-vcclive"
    takes_pushes: bool = True

    @classmethod
    def sized(cls, records: int) -> VccDemo:
        """Two days of backlog, a call every 2 s, CDRs processed within seconds (not minutes)."""
        limit = (VCC_PER_MIN, 60.0)
        return cls(
            VccSimulator(
                VccSimConfig(
                    seed=13, backlog=records, backlog_days=2.0, live_per_minute=30.0,
                    processing_delay_s=(2.0, 8.0), dispose_delay_s=(1.0, 4.0),
                    rate_list=limit, rate_lookup=limit, rate_records=limit,
                )
            )
        )  # fmt: skip

    async def serve(self) -> RunningServer:
        """Serve the simulator on a free 127.0.0.1 port."""
        return await start_vcclive_server(self.sim)

    def account_table(self, base_url: str, start: dt.date, secret: str) -> dict[str, Any]:
        """Fast polling; CDR lookups 2 s after a webhook (VCC advises 5 min); outbox every 1 s."""
        cfg = self.sim.config
        rate = f"{VCC_PER_MIN}/min"
        return _common(self.account, self.vendor, base_url, start) | {
            "username": cfg.username, "api_key": cfg.api_key, "webhook_secret": secret,
            "poll_interval": "2s", "settle": "2s", "lookup_delay": "2s",
            "lookup_interval": "3s", "outbox_interval": "1s",
            "rate_limits": {"list": rate, "lookup": rate, "records": rate},
        }  # fmt: skip

    def truth(self) -> dict[str, bytes]:
        """Every processed CDR as the day list serves it."""
        return {key: _hash(cdr) for key, cdr in self.sim.truth().items()}

    def stop_live(self) -> None:
        """No new calls (processing and dispositions of ended ones still come)."""
        self.sim.stop_live()

    def last_visible_time(self) -> float:
        """When the last CDR is processed and the last disposition made."""
        return self.sim.last_visible_time()

    async def send_pushes(self, url: str, stop: asyncio.Event) -> None:
        """Call Disposition webhooks as agents dispose calls."""
        await run_webhooks(self.sim, url, stop)

    def pushes(self) -> int:
        """Webhooks answered 2xx."""
        return self.sim.stats.webhooks_sent

    def requests(self) -> int:
        """Requests on every vendor route."""
        return sum(self.sim.stats.requests.values())

    def traffic(self) -> str:
        """Webhooks, requests per route, and 429s."""
        stats = self.sim.stats
        routes = ", ".join(f"{n} {route}" for route, n in sorted(stats.requests.items()))
        return (
            f"{stats.webhooks_sent} webhooks delivered, {stats.webhooks_failed} failed; "
            f"requests: {routes or 'none'}; {stats.rate_limited} answered 429"
        )


def vendor_demos(records: int) -> list[VendorDemo]:
    """The three vendors: Acefone with ``records`` of backlog, the others a tenth of it."""
    smaller = max(records // 10, 0)
    return [AcefoneDemo.sized(records), OzonetelDemo.sized(smaller), VccDemo.sized(smaller)]


# ---------------------------------------------------------------------------- the VCC outbox


def outbox_payloads(count: int = OUTBOX_ROWS) -> list[dict[str, Any]]:
    """The records the demo asks the daemon to add to VCC Live."""
    return [{"form": {"name": f"Demo lead {n}", "city": "Budapest"}} for n in range(1, count + 1)]


async def seed_outbox(store: Store, account: str, projectid: int) -> None:
    """Put the demo's rows into ``vcclive_outbox``, as a user's application would."""
    await store.queues.outbox_add(account, projectid, outbox_payloads())


async def check_outbox(store: Store, demo: VccDemo) -> list[str]:
    """What is wrong with the delivery: rows not delivered, without a numberid, or not in VCC
    Live exactly once under that numberid with the same form (empty: all is well)."""
    rows = await store.queues.outbox_rows(demo.account)
    added = demo.sim.added_records()
    by_numberid = {numberid: payload for _, numberid, payload in added}
    problems = []
    for row in rows:
        payload = row["payload"]
        copies = sum(1 for _, _, p in added if p == payload)
        if row["state"] != "delivered" or row["numberid"] is None:
            problems.append(f"row {row['id']} is {row['state']}")
        elif by_numberid.get(row["numberid"]) != payload or copies != 1:
            problems.append(f"row {row['id']} is in VCC Live {copies} times")
    if len(rows) != len(outbox_payloads()):
        problems.append(f"{len(rows)} rows in the outbox, {len(outbox_payloads())} put there")
    return problems
