"""Per-stage timing of one encode or decode: wall time and this thread's CPU time side by side.

Thread CPU time is immune to other jobs' load but misses work on other threads (ONNX Runtime's
intra-op pool with threads > 1), so both clocks are kept and `primary` picks the honest one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# stage → what it is, for the `--timing` table (rows in this order; absent stages are skipped)
LABELS = {
    "read": "I/O: read input (file + PNG decode / stream parse)",
    "select": "precision profile (selectors, PyTorch)",
    "g_a": "transform g_a",
    "h_a": "transform h_a",
    "h_s": "entropy parameters (h_s)",
    "entropy": "entropy coding (rANS)",
    "g_s": "transform g_s",
    "write": "I/O: write output (stream / PNG encode + file)",
}


@dataclass
class Stages:
    threads: int = 1
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - c

    @property
    def primary(self) -> dict[str, float]:
        """Thread CPU time with one thread, wall time otherwise (what `info["times"]` reports)."""
        return dict(self.cpu if self.threads == 1 else self.wall)

    def merge(self, other: Stages) -> None:
        for mine, theirs in ((self.wall, other.wall), (self.cpu, other.cpu)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0.0) + v


def table(wall: dict[str, float], cpu: dict[str, float], title: str) -> str:
    """The `--timing` table: one row per stage, transform / entropy / I/O subtotals, total."""
    rows = [f"{title}", f"  {'stage':52s} {'wall ms':>9s} {'thread CPU ms':>14s}"]
    for k in [*LABELS, *(k for k in wall if k not in LABELS)]:
        if k in wall:
            rows.append(f"  {LABELS.get(k, k):52s} {wall[k] * 1e3:9.1f} {cpu.get(k, 0) * 1e3:14.1f}")
    groups = {"transforms (g_a, h_a, h_s, g_s)": ("g_a", "h_a", "h_s", "g_s"),
              "entropy coding": ("entropy",), "I/O": ("read", "write")}
    for label, keys in groups.items():
        w = sum(wall.get(k, 0.0) for k in keys)
        c = sum(cpu.get(k, 0.0) for k in keys)
        rows.append(f"  {'= ' + label:52s} {w * 1e3:9.1f} {c * 1e3:14.1f}")
    rows.append(f"  {'= total':52s} {sum(wall.values()) * 1e3:9.1f} {sum(cpu.values()) * 1e3:14.1f}")
    return "\n".join(rows)
