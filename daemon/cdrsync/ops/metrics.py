"""Prometheus metrics, served at ``/metrics`` on ``daemon.http_listen``.

One private registry per process (tests build their own). The transport reports every request
attempt (``RequestObserver``), and each stream reports every finished cycle.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from cdrsync.errors import CdrsyncError
from cdrsync.http.limiter import SlidingWindowLimiter
from cdrsync.model import WriteResult

CONTENT_TYPE = CONTENT_TYPE_LATEST


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """``"acme-in/acefone.call_records"`` -> ``("acme-in", "acefone.call_records")``."""
    account, _, name = endpoint.rpartition("/")
    return account, name


class Metrics:
    """Every metric cdrsync exports; also the transport's ``RequestObserver``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows = Counter(
            "cdrsync_rows", "Calls a stream wrote or found unchanged, by outcome.",
            ["stream", "result"], registry=r,
        )  # fmt: skip
        self.rejects = Counter(
            "cdrsync_rejects", "Records that could not be normalized (see the rejects table).",
            ["stream"], registry=r,
        )  # fmt: skip
        self.cycles = Counter(
            "cdrsync_cycles", "Sync cycles, by outcome (ok or failed).", ["stream", "outcome"],
            registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "cdrsync_watermark_lag_seconds", "How far a stream's watermark is behind now.",
            ["stream"], registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "cdrsync_last_success_timestamp_seconds", "When a stream last finished a cycle.",
            ["stream"], registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "cdrsync_requests",
            "Vendor API responses, by vendor, account, endpoint and HTTP status.",
            ["vendor", "account", "endpoint", "status"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "cdrsync_rate_limited", "Vendor answers 429 (rate limited).",
            ["account", "endpoint"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "cdrsync_retries", "Request attempts retried after a transient failure.",
            ["account", "endpoint"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "cdrsync_request_errors", "Failed request attempts, by error category.",
            ["account", "endpoint", "error"], registry=r,
        )  # fmt: skip
        self.budget_used = Gauge(
            "cdrsync_rate_budget_used", "Requests in the current sliding window of a limit.",
            ["account", "limit"], registry=r,
        )  # fmt: skip
        self.budget_limit = Gauge(
            "cdrsync_rate_budget_limit", "Requests a limit allows in one window.",
            ["account", "limit"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "cdrsync_request_seconds", "Vendor API response time.", ["account", "endpoint"],
            registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip

        self.pushes = Counter(
            "cdrsync_pushes", "Webhook pushes received, by account and HTTP answer.",
            ["account", "status"], registry=r,
        )  # fmt: skip
        # cdrsync_rejects_total counts sightings: each re-read of the lookback counts a bad
        # record again. An alert on new bad records needs the distinct count.
        self.reject_records = Gauge(
            "cdrsync_reject_records",
            "Distinct records in the rejects table, by vendor and account (read at scrape time).",
            ["vendor", "account"], registry=r,
        )  # fmt: skip
        self.queue = Gauge(
            "cdrsync_queue_rows", "Rows of the lookups queue and the VCC Live outbox, by state.",
            ["vendor", "account", "queue", "state"], registry=r,
        )  # fmt: skip

        self.instance_streams = Gauge(
            "cdrsync_instance_streams",
            "Streams per live instance sharing the database: held (locks at its last "
            "heartbeat) and assigned (its share by the balance).",
            ["instance", "host", "pid", "state"], registry=r,
        )  # fmt: skip
        self.instances_live = Gauge(
            "cdrsync_instances_live", "Live cdrsync daemons sharing this database.", registry=r
        )

    def set_instances(self, instances: list[tuple[str, str, int, int, int]]) -> None:
        """The live instances at the last heartbeat: (id, host, pid, held, assigned) each. An
        instance gone since is cleared with the rest."""
        self.instance_streams.clear()
        self.instances_live.set(len(instances))
        for instance, host, pid, held, assigned in instances:
            self.instance_streams.labels(instance, host, str(pid), "held").set(held)
            self.instance_streams.labels(instance, host, str(pid), "assigned").set(assigned)

    def on_push(self, account: str, status: str) -> None:
        """A push was answered with ``status``."""
        self.pushes.labels(account, status).inc()

    def set_queues(self, depths: dict[tuple[str, str, str], dict[str, int]]) -> None:
        """The queue depths just read from the database (at scrape time). A state no row is
        in any more is not in ``depths``: the old series are cleared first, or its last
        count would stay (an alert on rows in doubt would never clear)."""
        self.queue.clear()
        for (vendor, account, queue), states in depths.items():
            for state, rows in states.items():
                self.queue.labels(vendor, account, queue, state).set(rows)

    def set_rejects(self, counts: dict[tuple[str, str], int]) -> None:
        """The distinct rejects just read from the database (at scrape time); accounts whose
        rejects were deleted drop out."""
        self.reject_records.clear()
        for (vendor, account), rows in counts.items():
            self.reject_records.labels(vendor, account).set(rows)

    def watch_limiter(self, account: str, group: str, limiter: SlidingWindowLimiter) -> None:
        """Export how much of ``limiter``'s budget the current sliding window has used."""
        self.budget_used.labels(account, group).set_function(lambda: limiter.used(time.monotonic()))
        self.budget_limit.labels(account, group).set(limiter.limit)

    def forget(self, account: str, streams: Iterable[str], groups: Iterable[str]) -> None:
        """An account was removed or disabled: drop its streams' lag and last-success gauges
        and its rate budgets. Left behind, their last values would look like a stream that
        stopped succeeding (an alert firing until the next restart). Counters stay."""
        for stream in streams:
            for gauge in (self.lag, self.last_success):
                with contextlib.suppress(KeyError):
                    gauge.remove(stream)
        for group in groups:
            for gauge in (self.budget_used, self.budget_limit):
                with contextlib.suppress(KeyError):
                    gauge.remove(account, group)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    # ---------------------------------------------------------------- streams

    def on_cycle(self, stream: str, ok: bool, lag_s: float | None, written: WriteResult) -> None:
        """A stream finished a cycle."""
        self.cycles.labels(stream, "ok" if ok else "failed").inc()
        for result, count in (
            ("inserted", written.inserted),
            ("updated", written.updated),
            ("unchanged", written.unchanged),
        ):
            self.rows.labels(stream, result).inc(count)
        self.rejects.labels(stream).inc(written.rejected)
        if lag_s is not None:
            self.lag.labels(stream).set(lag_s)
        if ok:
            self.last_success.labels(stream).set(time.time())

    # ---------------------------------------------------------------- transport

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
        """An attempt got a complete response."""
        account, name = split_endpoint(endpoint)
        self.requests.labels(name.split(".", 1)[0], account, name, str(status)).inc()
        self.latency.labels(account, name).observe(elapsed_s)
        if status == 429:
            self.rate_limited.labels(account, name).inc()

    def on_error(self, endpoint: str, error: CdrsyncError) -> None:
        """An attempt failed."""
        account, name = split_endpoint(endpoint)
        self.errors.labels(account, name, type(error).__name__).inc()

    def on_retry(self, endpoint: str, attempt: int, wait_s: float, error: CdrsyncError) -> None:
        """Another attempt follows."""
        account, name = split_endpoint(endpoint)
        self.retries.labels(account, name).inc()
