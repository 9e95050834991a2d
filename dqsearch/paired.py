"""Paired comparisons over seeds: the mean difference with its 95% interval, and the spread.

Two runs of one configuration differ by up to ~0.9 dB here, so a method difference means
something only against that spread: compare runs that share λ, γ, bit-set, data and seed, and
report the interval of the mean paired difference (Student's t), not a single pair.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """Mean of b − a over pairs, its 95% t-interval, and the pairs' standard deviation."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None, "sd": None}
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": 1, "mean": mean, "ci95": None, "sd": None}
    sd = statistics.stdev(diffs)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half], "sd": sd}


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Seed-to-seed spread of one configuration: standard deviation and range."""
    v = list(values)
    return {"n": len(v), "mean": statistics.fmean(v) if v else None,
            "sd": statistics.stdev(v) if len(v) > 1 else None,
            "range": (max(v) - min(v)) if v else None}


def rate_overhead(anchor: tuple[Sequence[float], Sequence[float]], bpp: float, psnr: float) -> float | None:
    """Extra rate (%) of one (bpp, PSNR) point over the anchor curve at the same PSNR — a
    single-point BD-rate, log-rate interpolated linearly along PSNR; None outside the anchor's
    PSNR range (no extrapolation)."""
    pts = sorted(zip(anchor[1], anchor[0], strict=True))
    if not pts or not (pts[0][0] <= psnr <= pts[-1][0]):
        return None
    for (d0, r0), (d1, r1) in zip(pts, pts[1:], strict=False):
        if d0 <= psnr <= d1:
            t = (psnr - d0) / (d1 - d0) if d1 > d0 else 0.0
            log_r = math.log(r0) + t * (math.log(r1) - math.log(r0))
            return 100.0 * (bpp / math.exp(log_r) - 1.0)
    return 100.0 * (bpp / pts[-1][1] - 1.0)
