"""Settings, counters and verdicts of the Acefone simulator: the values that cross its modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FAULT_FIELDS = {
    "fault_5xx": float,
    "fault_slow": float,
    "slow_s": float,
    "fault_truncated": float,
    "rate_limit": int,
    "rate_period_s": float,
    "send_retry_after": bool,
}


@dataclass(frozen=True, slots=True)
class AcefoneSimConfig:
    """What the simulated account holds and how the simulated API misbehaves."""

    seed: int = 1
    backlog: int = 2000
    backlog_days: float = 3.0
    live_per_minute: float = 30.0
    visible_delay_s: tuple[float, float] = (2.0, 8.0)
    late_fraction: float = 0.02
    late_delay_s: tuple[float, float] = (180.0, 900.0)
    change_fraction: float = 0.05
    change_delay_s: tuple[float, float] = (30.0, 600.0)
    malformed_fraction: float = 0.0
    token: str = "sim-token"  # noqa: S105 - the simulator's documented demo credential
    email: str = "demo@example.com"
    password: str = "sim-password"  # noqa: S105 - the simulator's documented demo credential
    token_ttl_s: float = 3600
    rate_limit: int | None = None
    rate_period_s: float = 60.0
    send_retry_after: bool = True
    fault_5xx: float = 0.0
    fault_slow: float = 0.0
    slow_s: float = 2.0
    fault_truncated: float = 0.0
    max_limit: int = 100
    timezone: str = "Asia/Kolkata"
    count_mode: Literal["total", "page"] = "total"
    """What ``count`` says: the rows matching the query ("total", the Smartflo sample's reading)
    or the rows on this page ("page", the other reading of "records that are fetched")."""
    limit_cap: int | None = None
    """Serve at most this many rows a page, silently: the answer echoes the asked ``limit``."""

    def __post_init__(self) -> None:
        for name in ("late_fraction", "change_fraction", "malformed_fraction"):
            _check_probability(name, getattr(self, name))
        for name in ("visible_delay_s", "late_delay_s", "change_delay_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {lo, hi}")
        if self.backlog < 0 or self.backlog_days <= 0 or self.live_per_minute < 0:
            raise ValueError("backlog >= 0, backlog_days > 0 and live_per_minute >= 0 required")
        if self.max_limit < 1:
            raise ValueError(f"max_limit must be at least 1, got {self.max_limit}")
        if self.limit_cap is not None and self.limit_cap < 1:
            raise ValueError(f"limit_cap must be None or at least 1, got {self.limit_cap}")
        if self.count_mode not in ("total", "page"):
            raise ValueError(f"count_mode must be 'total' or 'page', got {self.count_mode!r}")
        faults_of(self)  # the fault fields obey the same rules as set_faults()


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """The misbehaviour that can change while the simulator runs (see ``set_faults``)."""

    fault_5xx: float
    fault_slow: float
    slow_s: float
    fault_truncated: float
    rate_limit: int | None
    rate_period_s: float
    send_retry_after: bool

    def __post_init__(self) -> None:
        for name in ("fault_5xx", "fault_slow", "fault_truncated"):
            _check_probability(name, getattr(self, name))
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError(f"rate_limit must be None or at least 1, got {self.rate_limit}")
        if self.rate_period_s <= 0 or self.slow_s < 0:
            raise ValueError("rate_period_s must be > 0 and slow_s >= 0")


@dataclass(slots=True)
class SimStats:
    """What the simulated API has been asked; ``request_times`` holds accepted list requests."""

    list_requests: int = 0
    responses: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    request_times: list[float] = field(default_factory=list)
    rows_served: int = 0
    logins: int = 0
    refreshes: int = 0

    def as_dict(self) -> dict[str, object]:
        """Return the counters as JSON-ready data (status codes become string keys)."""
        return {
            "list_requests": self.list_requests,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "rate_limited": self.rate_limited,
            "request_times": list(self.request_times),
            "rows_served": self.rows_served,
            "logins": self.logins,
            "refreshes": self.refreshes,
        }


@dataclass(frozen=True, slots=True)
class Admission:
    """The fate of one list request: its status, and the faults to play if it is served."""

    status: int  # 200 to serve, 401, 429 or 503
    retry_after: int | None = None
    slow_s: float = 0.0
    truncate: bool = False


class QueryError(ValueError):
    """The list request's query cannot be served; the message is the vendor-style 400 text."""


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value}")


def faults_of(cfg: AcefoneSimConfig) -> FaultSettings:
    """The fault settings a config starts with."""
    return FaultSettings(**{name: getattr(cfg, name) for name in FAULT_FIELDS})
