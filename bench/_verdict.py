"""The benchmark's figures per record count, and the targets of issue 11 with a verdict each."""

from __future__ import annotations

from dataclasses import dataclass

from _child import ChildRun
from _queries import SchemaReport

TARGET_CPU_US = 35.0  # cdrsync's CPU (user + system) per row, whole process
TARGET_RATIO = 0.8  # end to end / ceiling, rows per second
TARGET_CEILING_VS_COPY = 0.85  # ceiling / plain COPY
TARGET_RSS_MB = 120.0
TARGET_RSS_GROWTH = 1.10  # peak RSS at the largest count / at the smallest: "flat"
TARGET_QUERY_MS = 2000.0  # each documented query on the loaded table
TARGET_PEER_RATE = 5.0  # cdrsync rows/s over dlt's
TARGET_PEER_RSS = 0.4  # cdrsync peak RSS over dlt's
TARGET_REREAD = 3.0  # first backfill's wall time over the unchanged re-read's


@dataclass(frozen=True, slots=True)
class Result:
    """The figures of one record count."""

    records: int
    batch_mean: float
    copy_s: float
    ceiling_s: float
    run: ChildRun
    reread: ChildRun
    reread_written: int
    reread_wal_mb: float
    schema: SchemaReport

    @property
    def ceiling_rate(self) -> float:
        """Rows per second of the ceiling."""
        return self.records / self.ceiling_s

    @property
    def copy_rate(self) -> float:
        """Rows per second of the plain COPY."""
        return self.records / self.copy_s

    @property
    def e2e_rate(self) -> float:
        """Rows per second of ``cdrsync backfill`` (its whole process lifetime)."""
        return self.records / self.run.wall_s

    @property
    def cpu_us(self) -> float:
        """cdrsync's CPU microseconds per row."""
        return self.run.cpu_s / self.records * 1e6


@dataclass(frozen=True, slots=True)
class Peer:
    """dlt's run over the same records (``None`` fields: it could not run)."""

    records: int
    run: ChildRun | None
    note: str = ""

    @property
    def rate(self) -> float:
        """dlt's rows per second."""
        return self.records / self.run.wall_s if self.run else 0.0


Line = tuple[str, str, str, bool]  # target, measured, wanted, met


def _per_count(r: Result) -> list[Line]:
    n = f"{r.records:,}"
    slowest = max(r.schema.queries, key=lambda q: q.ms)
    idle = r.schema.idle()
    return [
        (f"CPU per row @{n}", f"{r.cpu_us:.1f} us", f"<= {TARGET_CPU_US:.0f} us",
         r.cpu_us <= TARGET_CPU_US),
        (f"end to end / ceiling @{n}", f"{r.e2e_rate / r.ceiling_rate:.2f}",
         f">= {TARGET_RATIO}", r.e2e_rate / r.ceiling_rate >= TARGET_RATIO),
        (f"ceiling / plain COPY @{n}", f"{r.ceiling_rate / r.copy_rate:.2f}",
         f">= {TARGET_CEILING_VS_COPY}", r.ceiling_rate / r.copy_rate >= TARGET_CEILING_VS_COPY),
        (f"peak RSS @{n}", f"{r.run.peak_mb:.0f} MB", f"<= {TARGET_RSS_MB:.0f} MB",
         r.run.peak_mb <= TARGET_RSS_MB),
        (f"re-read speed-up @{n}", f"{r.run.wall_s / r.reread.wall_s:.1f}x",
         f">= {TARGET_REREAD:.0f}x", r.run.wall_s / r.reread.wall_s >= TARGET_REREAD),
        (f"re-read rows written @{n}", f"{r.reread_written}", "0", r.reread_written == 0),
        (f"slowest documented query @{n}", f"{slowest.ms:.0f} ms ({slowest.title[:28]})",
         f"<= {TARGET_QUERY_MS:.0f} ms", slowest.ms <= TARGET_QUERY_MS),
        (f"indexes no documented query uses @{n}", ", ".join(idle) or "none", "none", not idle),
    ]  # fmt: skip


def verdicts(results: list[Result], peer: Peer | None) -> list[Line]:
    """Every target with what was measured, in the order of the issue."""
    lines = [line for r in results for line in _per_count(r)]
    first, last = results[0], results[-1]
    if len(results) > 1:
        growth = last.run.peak_mb / first.run.peak_mb
        lines.append(
            (f"peak RSS {last.records:,} / {first.records:,}", f"{growth:.2f}",
             f"<= {TARGET_RSS_GROWTH:.2f}", growth <= TARGET_RSS_GROWTH)
        )  # fmt: skip
    if peer is not None:
        mine = next((r for r in results if r.records == peer.records), None)
        if peer.run is None or mine is None:
            lines.append(("dlt peer", peer.note or "not measured", "measured", False))
        else:
            rate = mine.e2e_rate / peer.rate
            rss = mine.run.peak_mb / peer.run.peak_mb
            lines.append(
                (f"rows/s vs dlt @{peer.records:,}",
                 f"{rate:.1f}x ({mine.e2e_rate:,.0f} vs {peer.rate:,.0f})",
                 f">= {TARGET_PEER_RATE:.0f}x", rate >= TARGET_PEER_RATE)
            )  # fmt: skip
            lines.append(
                (f"peak RSS vs dlt @{peer.records:,}",
                 f"{rss:.2f}x ({mine.run.peak_mb:.0f} vs {peer.run.peak_mb:.0f} MB)",
                 f"<= {TARGET_PEER_RSS}x", rss <= TARGET_PEER_RSS)
            )  # fmt: skip
    return lines


def report(results: list[Result], peer: Peer | None, elapsed: float) -> bool:
    """Print the table over all record counts and the verdicts; whether every target is met."""
    print(
        f"\n{'records':>9} {'batch':>6} {'COPY/s':>8} {'ceiling/s':>10} {'cdrsync/s':>10} "
        f"{'ratio':>6} {'CPU/row':>8} {'peak RSS':>9} {'re-read':>8}"
    )
    for r in results:
        print(
            f"{r.records:>9} {r.batch_mean:>6.0f} {r.copy_rate:>8,.0f} {r.ceiling_rate:>10,.0f} "
            f"{r.e2e_rate:>10,.0f} {r.e2e_rate / r.ceiling_rate:>6.2f} {r.cpu_us:>5.1f} us "
            f"{r.run.peak_mb:>6.0f} MB {r.reread.wall_s:>6.1f} s"
        )
    lines = verdicts(results, peer)
    width = max(len(t) for t, _, _, _ in lines)
    print("\ntargets (issue 11):")
    for target, measured, wanted, met in lines:
        print(f"  {'PASS' if met else 'FAIL'}  {target:<{width}}  {measured}  (target {wanted})")
    ok = all(met for _, _, _, met in lines)
    missed = sum(not met for _, _, _, met in lines)
    print(f"verdict: {'all targets met' if ok else f'TARGETS MISSED ({missed} of {len(lines)})'}")
    print(f"total elapsed: {elapsed:.0f} s")
    return ok
