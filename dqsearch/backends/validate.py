"""Validate a latency table: time random bit profiles end to end and compare with predictions.

Absolute errors mix prediction error with the machine's drift (on a shared box the same graph
runs 20–40% slower from one minute to the next), so the reference profile (FP32 everywhere) is
re-measured every few samples and each sample is also scored relative to the reference measured
around it: pred(P)/pred(ref) against meas(P)/meas(ref). Both figures are reported.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..latency import LatencyTable
from .base import Backend


@dataclass
class ValidationReport:
    backend: str
    table: str
    tolerance: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    references: list[float] = field(default_factory=list)

    def _errors(self, key: str) -> list[float]:
        return [abs(r[key]) for r in self.rows if r.get(key) is not None]

    def share_within(self, key: str = "error") -> float:
        errs = self._errors(key)
        return sum(e <= self.tolerance for e in errs) / len(errs) if errs else float("nan")

    def median_error(self, key: str = "error") -> float:
        errs = self._errors(key)
        return statistics.median(errs) if errs else float("nan")

    def summary(self) -> str:
        n, tol = len(self.rows), self.tolerance
        lines = [f"{self.table} on {self.backend}: {n} random bit profiles",
                 f"  absolute:   {self.share_within():.1%} within ±{tol:.0%}, median |error| "
                 f"{self.median_error():.1%}, max {max(self._errors('error'), default=0):.1%}",
                 f"  drift-corrected (vs FP32 reference measured alongside): "
                 f"{self.share_within('relative_error'):.1%} within ±{tol:.0%}, median |error| "
                 f"{self.median_error('relative_error'):.1%}"]
        if self.references:
            lo, hi = min(self.references), max(self.references)
            lines.append(f"  reference (FP32) measured {lo:.1f}–{hi:.1f} ms over the run "
                         f"(drift {hi / lo - 1:.0%})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "table": self.table, "tolerance": self.tolerance,
                "samples": len(self.rows), "share_within": self.share_within(),
                "median_abs_error": self.median_error(),
                "share_within_relative": self.share_within("relative_error"),
                "median_abs_relative_error": self.median_error("relative_error"),
                "references_ms": self.references, "rows": self.rows}


def random_profiles(table: LatencyTable, n: int, seed: int = 0) -> list[dict[str, int]]:
    rng = random.Random(seed)
    bits = {name: table.bits(name) for name in table.layer_names}
    return [{name: rng.choice(bs) for name, bs in bits.items()} for _ in range(n)]


def validate_table(table: LatencyTable, backend: Backend, model: nn.Module, samples: int = 100,
                   tolerance: float = 0.10, seed: int = 0, reference_every: int = 5,
                   progress: bool = True) -> ValidationReport:
    """Measure `samples` random profiles with `backend.profile_model`, interleaved with the
    reference profile, and compare each with `table.predict`."""
    from tqdm import tqdm

    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    shape = tuple(table.metadata["input_shape"])
    stat = table.statistic
    unmeasured = [name for name in table.layer_names if not table.bits(name)]
    if unmeasured or not table.layer_names:
        raise ValueError(f"{table.path or 'latency table'}: layers {unmeasured[:3] or '(none)'} have no "
                         "measurements; finish the table with `dqsearch profile --resume`")
    ref = {name: max(table.bits(name)) for name in table.layer_names}
    pred_ref = table.predict(ref)
    report = ValidationReport(backend.name, str(table.path or "table"), tolerance)

    def measure_ref() -> float:
        v = backend.profile_model(model, ref, shape).value(stat)
        report.references.append(v)
        return v

    last_ref = measure_ref()
    pending: list[dict[str, Any]] = []
    profiles = random_profiles(table, samples, seed)
    for i, profile in enumerate(tqdm(profiles, desc="validate", unit="profile", disable=not progress)):
        meas = backend.profile_model(model, profile, shape)
        pred = table.predict(profile)
        row = {"profile": profile, "predicted_ms": pred, "measured_ms": meas.value(stat),
               "measured": meas.to_dict(), "error": pred / meas.value(stat) - 1, "ref_before": last_ref}
        report.rows.append(row)
        pending.append(row)
        if (i + 1) % reference_every == 0 or i + 1 == len(profiles):
            new_ref = measure_ref()
            for r in pending:  # the reference around the sample: mean of the two bracketing it
                around = (r["ref_before"] + new_ref) / 2
                r["relative_error"] = (r["predicted_ms"] / pred_ref) / (r["measured_ms"] / around) - 1
            pending, last_ref = [], new_ref
    return report
