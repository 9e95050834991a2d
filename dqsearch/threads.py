"""CPU threads: defaults that degrade gracefully when other jobs share the cores.

Two OpenMP threads fighting for one busy core are many times slower than one, and OpenMP's idle
workers spin (burning the core another job needs) unless OMP_WAIT_POLICY=PASSIVE, which the CLI
sets before torch is imported. The default thread count is what this process may actually run
on (its CPU affinity and cgroup quota), not the machine's core count that torch assumes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def check_threads(threads: int | None) -> None:
    if threads is not None and int(threads) < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")


def default_threads() -> int:
    """$DQSEARCH_THREADS if set (a machine-wide choice, e.g. 1 on a shared box), else every CPU
    this process may use."""
    env = os.environ.get("DQSEARCH_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"DQSEARCH_THREADS must be a positive integer, got {env!r}")
        return int(env)
    return available_cpus()


def set_torch_threads(threads: int | None) -> int:
    """torch's intra-op threads: `threads`, or `default_threads()`. Returns the count."""
    import torch

    check_threads(threads)
    n = int(threads) if threads else default_threads()
    torch.set_num_threads(n)
    return n


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with torch at `threads` intra-op threads and restore the caller's setting: a
    backend must not change process-wide state (the conformance suite checks it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
