"""Keep a rewrite only where it helps: time graph variants side by side and pick the fastest."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import numpy as np
import onnx

MARGIN = 0.03  # a rewrite must be at least 3% faster to be kept


def time_variants(variants: Mapping[str, onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                  threads: int = 1, rounds: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median ms per variant; variants alternate within each round so they share machine state
    (ratios stay meaningful on a loaded machine). Thread CPU time with one thread, else wall."""
    from .runtime import session, timer

    sessions = {k: session(m, threads) for k, m in variants.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, dict(feeds))
    now = timer(threads)
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = now()
            s.run(None, dict(feeds))
            samples[k].append((now() - t) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def choose(times: Mapping[str, float], baseline: str, candidate: str) -> bool:
    """Whether `candidate` beats `baseline` by the margin."""
    return times[candidate] < (1 - MARGIN) * times[baseline]
