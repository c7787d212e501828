"""Faithful fake vendor servers, used by ``cdrsync demo``, the test suite and the benchmark.

Each simulator is deterministic from a seed and a pure function of time: a test drives a fake
clock and compares what the daemon stored against the simulator's ``truth()``.
"""

from __future__ import annotations
