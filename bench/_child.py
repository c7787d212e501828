"""The benchmark's child processes: the simulator it serves from, and ``cdrsync backfill``.

Run as a script, this module is the simulator process: it builds the Acefone account, prints
``listening <port>`` once it accepts connections on 127.0.0.1, and serves until SIGTERM/SIGINT
or until its parent dies (so a killed benchmark leaves nothing behind). A separate process, so
that rendering payloads is not charged to cdrsync's CPU.

Imported, it starts and measures those processes for ``bench/backfill.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import RunningServer, start_server

TOKEN = "bench-token"  # noqa: S105 - a throwaway credential of a local simulator


def sim_config(records: int, days: int, seed: int) -> AcefoneSimConfig:
    """The benchmark's account: a backlog only, every record final, no faults, no rate limit."""
    return AcefoneSimConfig(
        seed=seed,
        backlog=records,
        backlog_days=float(days),
        live_per_minute=0.0,
        late_fraction=0.0,
        change_fraction=0.0,
        malformed_fraction=0.0,
        rate_limit=None,
        token=TOKEN,
    )


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """End a child we started: SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Simulator:
    """The simulator process (this file run as a script)."""

    def __init__(self, records: int, days: int, seed: int, t0: float) -> None:
        """Start building the account; ``wait_ready`` waits until it serves."""
        args = ["--records", str(records), "--days", str(days), "--seed", str(seed)]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args, "--t0", repr(t0)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops us in order
        )
        self._url = ""

    def wait_ready(self) -> str:
        """Wait for the port line (once); the base URL."""
        if self._url:
            return self._url
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening "):
            raise RuntimeError(f"the simulator did not start (exit code {self.proc.poll()})")
        self._url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self._url

    def cpu_seconds(self) -> float:
        """CPU time the simulator has used so far."""
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        stop_process(self.proc)


@dataclass(frozen=True, slots=True)
class ChildRun:
    """What one ``cdrsync backfill`` process took."""

    wall_s: float  # process start to exit
    peak_mb: float  # VmHWM: the process's own peak resident set
    cpu_s: float  # user + system, from wait4
    rss_mb: list[float]  # VmRSS samples, evenly spaced in time

    def rss_at(self, fraction: float) -> float:
        """The RSS sampled at ``fraction`` of the run."""
        if not self.rss_mb:
            return 0.0
        return self.rss_mb[min(int(fraction * len(self.rss_mb)), len(self.rss_mb) - 1)]


def _memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a running process, in MB."""
    fields: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line[:5]] = int(line.split()[1]) / 1024
    if len(fields) < 2:
        return None
    return fields["VmRSS"], fields["VmHWM"]


def run_measured(command: list[str], logs: Path, timeout: float) -> ChildRun:
    """Run ``command`` to its end, sampling its memory every 0.1 s; raise if it fails.

    The peak is the largest VmHWM sampled, not wait4's ``ru_maxrss``: Linux carries the maximum
    RSS across fork and exec, so ``ru_maxrss`` would report this (large) benchmark process's
    own RSS. VmHWM is monotonic, so only the last tenth of a second (shutdown) goes unseen.
    """
    out, err = logs.with_suffix(".stdout.log"), logs.with_suffix(".stderr.log")
    samples: list[float] = []
    peak = 0.0
    began = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True)
    pid = status = 0
    try:
        # wait4, not Popen.wait: its rusage is this child's alone.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        while not pid and time.perf_counter() - began < timeout:
            memory = _memory_mb(proc.pid)
            if memory is not None:
                samples.append(memory[0])
                peak = max(peak, memory[1])
            time.sleep(0.1)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    finally:
        if not pid:
            stop_process(proc)
    if not pid:
        raise RuntimeError(f"{command[3]} took over {timeout:.0f} s; see {err}")
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join((out.read_text() + err.read_text()).splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[1:4])} exited with {proc.returncode}:\n{tail}")
    return ChildRun(wall, peak, usage.ru_utime + usage.ru_stime, samples)


async def serve_until_stopped(start: Callable[[], Awaitable[RunningServer]]) -> None:
    """Start a server, print its port, and serve until SIGTERM/SIGINT or until the parent that
    started this process is gone (a benchmark killed mid-run leaves no simulator behind)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    server = await start()
    print(f"listening {server.port}", flush=True)
    try:
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await server.close()


async def _serve(sim: AcefoneSimulator) -> None:
    await serve_until_stopped(lambda: start_server(sim, "127.0.0.1", 0))


def main() -> int:
    """Build the simulated account and serve it."""
    args = argparse.ArgumentParser(description="the benchmark's Acefone simulator")
    args.add_argument("--records", type=int, required=True)
    args.add_argument("--days", type=int, required=True)
    args.add_argument("--seed", type=int, required=True)
    args.add_argument("--t0", type=float, required=True, help="end of the backlog, epoch seconds")
    ns = args.parse_args()
    sim = AcefoneSimulator(sim_config(ns.records, ns.days, ns.seed), t0=ns.t0)
    asyncio.run(_serve(sim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
