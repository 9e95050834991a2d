"""Layer times inside their transform, measured by switching one layer at a time.

Summing layers timed alone missed cheng2020-anchor's whole transforms by ~20% (docs/tvm-results.md:
its fp32 transforms run faster than their layers alone, an fp32 layer among int8 ones slower),
so a layer's in-graph cost is taken from whole-transform runs instead:
the transform at a *base* container everywhere (B) and the same transform with one layer `l`
switched to container `c` (S), run alternately so that both see the same machine state. The
paired difference S − B is that layer's cost change from base to `c` in its real surroundings.
Differences need no attribution of fused kernels to layers, which TVM's VM does not report.

Two bases — fp32 and the narrowest container, by default — give two estimates of every change;
their mean is used (neighbours in a random profile are a mix of both) and their gap is reported
as the size of the interactions an additive table cannot represent. One base (`context_bases`)
halves the runs; the narrowest container's transform is also the fastest to run. Absolute times
are anchored on each layer's isolated fp32 time (the all-fp32 profile was predicted exactly by
the isolated method):

    A_l(fp32) = isolated_l(fp32) (× T/Σ isolated when T is smaller)
    A_l(c)    = A_l(fp32) + mean over bases b of d_b,l(c)
    d_b,l(c)  = Δ_b(l→c) − Δ_b(l→fp32),   Δ_b(l→b) = 0
    fixed     = T(all fp32) − Σ_l A_l(fp32)   (T over every timing of the fp32 base transform)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

FP32 = "fp32"


def bases(containers: Sequence[str], chosen: Sequence[str] | None = None) -> list[str]:
    """The base containers to switch from: `chosen` (checked), by default fp32 and the narrowest."""
    if chosen is None:
        return [FP32] + ([containers[0]] if containers[0] != FP32 else [])
    bad = [b for b in chosen if b not in containers]
    if bad or not chosen:
        raise ValueError(f"context_bases {list(chosen)}: pick from the profiled containers "
                         f"{list(containers)}")
    return list(dict.fromkeys(chosen))


def switches(layers: Sequence[str], containers: Sequence[str], chosen: Sequence[str] | None = None
             ) -> list[tuple[str, str, str]]:
    """Every (base, layer, container) pair to run, container ≠ base."""
    return [(b, layer, c) for b in bases(containers, chosen) for layer in layers
            for c in containers if c != b]


def run_key(transform: str, base: str, layer: str | None = None, container: str | None = None) -> str:
    return f"{transform}|{base}" + (f"|{layer}>{container}" if layer else "")


@dataclass
class TransformFit:
    """One transform's layers (samples per container), fixed part and consistency figures."""

    layers: dict[str, dict[str, list[float]]]
    fixed: list[float]
    base_gap_ms: dict[str, float]  # per layer, |estimate_b1 − estimate_b2|
    uniform_check: dict[str, dict[str, float]]


def base_samples(runs: Mapping[str, Mapping[str, list[float]]], transform: str, base: str) -> list[float]:
    """Every timing of the base transform: its own run and the base half of each paired run.

    Pooling matters: a 5-sample fp32 transform on this shared box swung by 20%, and the fixed
    part is that time minus the layers."""
    prefix = run_key(transform, base)
    return [t for k, r in runs.items() if k == prefix or k.startswith(prefix + "|") for t in r["base"]]


def fit_transform(layers: Sequence[str], containers: Sequence[str], isolated_fp32: Mapping[str, list[float]],
                  runs: Mapping[str, Mapping[str, list[float]]], transform: str,
                  chosen: Sequence[str] | None = None) -> TransformFit:
    """Combine the stored paired runs of one transform into per-layer in-graph times.

    `runs[run_key(...)]` holds {"base": [...], "delta": [...]} for switched runs and
    {"base": [...]} for the base-only entries. From base b, layer n's change from fp32 to c is
    Δ_b(n→c) − Δ_b(n→fp32) (Δ_b(n→b) = 0); the estimate is the mean over bases.
    """
    med = statistics.median
    iso = {n: med(isolated_fp32[n]) for n in layers}
    used = bases(containers, chosen)
    pool = base_samples(runs, transform, FP32)
    # A transform can run faster than its layers timed alone (the fixed part would be negative):
    # then the anchors shrink in proportion until it is 0. Every profile holds every layer once,
    # so the predictions do not change.
    shrink = min(1.0, med(pool) / sum(iso.values())) if sum(iso.values()) > 0 else 1.0
    anchor = {n: iso[n] * shrink for n in layers}

    def delta(b: str, n: str, c: str) -> list[float]:
        return [0.0] if c == b else runs[run_key(transform, b, n, c)]["delta"]

    out: dict[str, dict[str, list[float]]] = {}
    gaps: dict[str, float] = {}
    for n in layers:
        out[n] = {FP32: [max(x * shrink, 1e-6) for x in isolated_fp32[n]]}
        for c in containers:
            if c == FP32:
                continue
            estimates = [med(delta(b, n, c)) - med(delta(b, n, FP32)) for b in used]
            d = delta(used[0], n, c if c != used[0] else FP32)
            spread = [x - med(d) for x in d]  # the first base's repeat-to-repeat spread
            value = anchor[n] + statistics.fmean(estimates)
            if len(estimates) > 1:
                gaps[n] = max(gaps.get(n, 0.0), max(estimates) - min(estimates))
            out[n][c] = [max(value + s, 1e-6) for s in spread]
    fixed = [t - sum(anchor.values()) for t in pool]
    check = {}
    for b in dict.fromkeys([FP32, *used]):
        measured = med(pool if b == FP32 else base_samples(runs, transform, b))
        predicted = med(fixed) + sum(med(out[n][b]) for n in layers)
        check[b] = {"measured_ms": measured, "predicted_ms": predicted}
    return TransformFit(out, fixed, gaps, check)


def runs_needed(layers: Sequence[str], containers: Sequence[str], chosen: Sequence[str] | None = None
                ) -> list[tuple[str, str | None, str | None]]:
    """The fp32 transform and each base alone, then every switch."""
    used = bases(containers, chosen)
    todo: list[tuple[str, str | None, str | None]] = [(b, None, None) for b in dict.fromkeys([FP32, *used])]
    return todo + switches(layers, containers, chosen)


def measure_all(transform: str, layers: Sequence[str], containers: Sequence[str], store: dict,
                paired: Callable[[str, str | None, str | None], tuple[list[float], list[float]]],
                save: Callable[[], None] | None = None, tick: Callable[[], None] | None = None,
                chosen: Sequence[str] | None = None) -> None:
    """Run every switch of one transform not yet in `store` (saved after each run).

    `paired(base, layer, container)` returns (base samples, switched − base samples); with
    layer None it times the base alone (second list empty).
    """
    todo = runs_needed(layers, containers, chosen)
    for b, n, c in todo:
        key = run_key(transform, b, n, c)
        if key not in store:
            base, diff = paired(b, n, c)
            store[key] = {"base": base, **({"delta": diff} if n else {})}
            if save:
                save()
        if tick:
            tick()
