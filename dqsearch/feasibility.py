"""What a latency table says a candidate bit-set can reach, before any trial trains.

A study whose target no profile of any candidate set can meet trains every trial for nothing; a set
whose every profile already meets the target makes the hinge latency term exactly 0 (η does
nothing). Both follow from the table alone, so the study says them up front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .latency import LatencyTable
from .quant.wrap import _first_and_last


@dataclass(frozen=True)
class SetReach:
    """The fastest and slowest predicted latency of one candidate set's profiles (ms)."""

    bits: tuple[int, ...]
    fastest_ms: float
    slowest_ms: float

    @property
    def label(self) -> str:
        return "{" + ",".join(map(str, self.bits)) + "}"


def _pinned(table: LatencyTable, bits: Sequence[int], selector: str) -> dict[str, int]:
    """Layers the policy fixes: the global selector pins the first analysis layer to the widest
    candidate (quant.wrap.QuantPolicy.layer_policy)."""
    if selector != "global":
        return {}
    first, _ = _first_and_last(table.layer_names)
    return {first: max(bits)}


def _extreme(table: LatencyTable, bits: Sequence[int], pinned: dict[str, int], sign: int) -> float:
    """Coordinate descent over layers (sign=+1 minimises, −1 maximises) from the uniform profile
    at the matching end of the set; transitions make the optimum non-separable, so iterate until
    no single-layer change helps."""
    start = min(bits) if sign > 0 else max(bits)
    profile = {n: pinned.get(n, start) for n in table.layer_names}
    best = sign * table.predict(profile)
    improved = True
    while improved:
        improved = False
        for name in table.layer_names:
            if name in pinned:
                continue
            for b in bits:
                trial = {**profile, name: b}
                v = sign * table.predict(trial)
                if v < best - 1e-9:
                    best, profile, improved = v, trial, True
    return sign * best


def reach(table: LatencyTable, bits: Sequence[int], selector: str = "global") -> SetReach:
    pinned = _pinned(table, bits, selector)
    return SetReach(tuple(sorted(bits)), _extreme(table, bits, pinned, +1), _extreme(table, bits, pinned, -1))


def assess(table: LatencyTable, bit_sets: Sequence[Sequence[int]], target_ms: float, selector: str,
           input_size: str, backend: str) -> list[str]:
    """Notes for the user (one line each) about the sets and the target; raises ValueError when no
    profile of any set can meet the target, naming the fastest prediction and what would fit."""
    reaches = [reach(table, b, selector) for b in bit_sets]
    fastest = min(reaches, key=lambda r: r.fastest_ms)
    slowest = max(reaches, key=lambda r: r.slowest_ms)
    if fastest.fastest_ms > target_ms:
        scale = target_ms / fastest.fastest_ms
        h, w = (int(v) for v in input_size.lower().split("x"))
        fit_h, fit_w = (max(64, int(v * math.sqrt(scale)) // 64 * 64) for v in (h, w))
        raise ValueError(
            f"target {target_ms:g} ms cannot be met on {backend} at {input_size}: the fastest profile of "
            f"the candidate sets predicts {fastest.fastest_ms:.1f} ms ({fastest.label}), the slowest "
            f"{slowest.slowest_ms:.1f} ms; what would fit: --target-latency "
            f"{math.ceil(fastest.fastest_ms)}ms or more, or a smaller --input (about {fit_h}x{fit_w}, "
            "if latency scales with pixels)")
    notes = []
    for r in reaches:
        if r.slowest_ms <= target_ms:
            notes.append(f"candidate set {r.label}: every profile predicts ≤ {target_ms:g} ms "
                         f"({r.fastest_ms:.1f}–{r.slowest_ms:.1f} ms), so the latency term is 0 for it "
                         "(η has no effect on trials that draw it)")
        elif r.fastest_ms > target_ms:
            notes.append(f"candidate set {r.label}: no profile meets {target_ms:g} ms "
                         f"(fastest {r.fastest_ms:.1f} ms); its trials will be infeasible")
    return notes
