"""Interleaved timing shared by the benchmarks: every variant runs once per round, so all see the
same machine state and their ratios stay meaningful on a loaded machine."""

from __future__ import annotations

import statistics
import time


def timed(runs: dict, rounds: int) -> dict[str, dict[str, float]]:
    """Median thread CPU and wall ms of each callable, all interleaved in every round."""
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():  # warm-up: prepacking, first-call allocations, compilation
        f(), f()
    for _ in range(rounds):
        for k, f in runs.items():
            t, w = time.thread_time(), time.perf_counter()
            f()
            cpu[k].append(1000 * (time.thread_time() - t))
            wall[k].append(1000 * (time.perf_counter() - w))
    return {k: {"cpu_ms": statistics.median(cpu[k]), "wall_ms": statistics.median(wall[k])} for k in runs}
