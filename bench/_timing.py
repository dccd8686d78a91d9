"""Timing shared by the benchmarks (run as scripts: ``bench/`` is on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    return min(timings(fn, repeats))
