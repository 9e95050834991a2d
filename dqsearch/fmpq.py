"""FMPQ baseline (Hossain, Duan, Zhu, ICME 2024): sensitivity-based mixed precision.

1. ζ_n(b): the fractional change of the RD loss on calibration crops when layer n alone runs at b
   bits (min/max-calibrated, every other layer FP32). Cached per checkpoint, bit list and data.
2. A tolerance β gives each layer the lowest b with ζ_n(b) ≤ β (the widest candidate when none is).
3. An adaptive search on β — big steps far from the target, smaller ones near it — meets a target
   compression ratio (packed conv weights / FP32) within ±0.01, or, our extension, a latency
   target from a latency table; it reports its iterations.
4. QAT of that allocation with the RD loss and a leaky clip (clipped values keep a small slope).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import write_json
from .models import LoadedCheckpoint, build_model
from .quant.wrap import FP32, LayerPolicy, QuantPolicy, calibrate, quantized_layers, set_profile, wrap
from .train import rate_distortion

LEAKY_SLOPE = 0.01
DEFAULT_BITS = (4, 6, 8, 10, 16)  # the candidate bit-widths when a run names none


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dqsearch" / "fmpq"


@dataclass
class Sensitivity:
    model_id: str
    bits: list[int]
    base_loss: float
    zeta: dict[str, dict[str, float]]  # layer → str(bits) → ζ (JSON keys are strings)

    def of(self, layer: str, bits: int) -> float:
        return 0.0 if bits == FP32 else self.zeta[layer][str(bits)]


@torch.no_grad()
def _rd_loss(model: nn.Module, batches: Sequence[torch.Tensor], lmbda: float) -> float:
    return sum(float(rate_distortion(model(x), x, lmbda)["loss"]) for x in batches) / len(batches)


def sensitivities(ck: LoadedCheckpoint, bits: Sequence[int], batches: Sequence[torch.Tensor],
                  lmbda: float, cache: Path | None = None) -> Sensitivity:
    """ζ_n(b) for every conv layer and candidate; reads/writes a JSON cache keyed by the model,
    the bits, λ and the calibration data."""
    bits = sorted({int(b) for b in bits if int(b) != FP32})
    h = hashlib.sha256()
    for x in batches:
        h.update(x.numpy().tobytes())
    key = f"{ck.model_id}-{'-'.join(map(str, bits))}-{lmbda:g}-{h.hexdigest()[:12]}"
    path = (cache or cache_dir()) / f"{key}.json"
    if path.exists():
        return Sensitivity(**json.loads(path.read_text()))
    model = build_model(ck.architecture, **ck.arch_args)
    model.load_state_dict(ck.model.state_dict())
    model.eval()
    base = _rd_loss(model, batches, lmbda)
    wrap(model, QuantPolicy.dynamic(bits, quantizer="minmax", selector="per-layer"))
    calibrate(model, batches)
    model.eval()
    names = list(quantized_layers(model))
    zeta: dict[str, dict[str, float]] = {}
    for name in names:
        zeta[name] = {}
        for b in bits:
            set_profile(model, {n: (b if n == name else FP32) for n in names}, allow_fp32=True)
            zeta[name][str(b)] = (_rd_loss(model, batches, lmbda) - base) / base
    out = Sensitivity(ck.model_id, bits, base, zeta)
    write_json(path, asdict(out), indent=1)
    return out


def allocate(sens: Sensitivity, beta: float) -> dict[str, int]:
    """Each layer's lowest candidate with ζ ≤ β (its widest candidate when none is)."""
    return {n: next((b for b in sens.bits if sens.of(n, b) <= beta), max(sens.bits)) for n in sens.zeta}


def size_ratio(weights: dict[str, int], allocation: dict[str, int]) -> float:
    """Packed conv weights over FP32 conv weights (FMPQ's compression ratio; 0.25 ≈ 8 bits)."""
    total = sum(weights.values())
    return sum(weights[n] * allocation[n] for n in weights) / (FP32 * total)


@dataclass
class SearchResult:
    beta: float
    allocation: dict[str, int]
    score: float
    iterations: int
    met: bool


def search_beta(sens: Sensitivity, score: Callable[[dict[str, int]], float], target: float,
                tolerance: float, max_iter: int = 60) -> SearchResult:
    """Adaptive search over the tolerances where the allocation changes (the sorted ζ values).

    The score (size ratio or latency) falls as β grows. Steps are proportional to the relative
    error — large far from the target, small near it — and halve whenever the search crosses the
    target, so it ends within ±`tolerance` when such an allocation exists (else at the closest one
    below the target) after a bounded number of iterations."""
    grid = sorted({-math.inf, *(z for layer in sens.zeta.values() for z in layer.values())})
    n = len(grid)
    i, gain, last_sign, iterations = n // 2, 0.5, 0, 0
    best: SearchResult | None = None
    seen: dict[int, float] = {}
    while iterations < max_iter:
        iterations += 1
        if i not in seen:
            seen[i] = score(allocate(sens, grid[i]))
        s = seen[i]
        err = s - target
        if s <= target + tolerance and (best is None or abs(err) < abs(best.score - target)):
            best = SearchResult(grid[i], allocate(sens, grid[i]), s, iterations, abs(err) <= tolerance)
        if abs(err) <= tolerance:
            break
        sign = 1 if err > 0 else -1  # score too high → larger β
        if last_sign and sign != last_sign:
            gain /= 2
        last_sign = sign
        step = max(1, round(gain * n * min(1.0, abs(err) / max(abs(target), 1e-12))))
        j = min(n - 1, max(0, i + sign * step))
        if j == i or (j in seen and gain < 1 / n):
            break
        i = j
    if best is None:  # even the lowest bits miss the target: report the smallest score
        j = n - 1
        best = SearchResult(grid[j], allocate(sens, grid[j]), score(allocate(sens, grid[j])), iterations,
                            False)
    best.iterations = iterations
    return best


def fmpq_policy(allocation: dict[str, int], leaky: float = LEAKY_SLOPE) -> QuantPolicy:
    """The fixed per-layer allocation as a policy: STE rounding, learnable ranges, leaky clip."""
    overrides = {n: LayerPolicy("fixed", (b,)) if b != FP32 else LayerPolicy("fp32")
                 for n, b in allocation.items()}
    quantized = [b for b in allocation.values() if b != FP32]
    default = max(quantized) if quantized else 8
    return QuantPolicy(mode="fixed", bits=(default,), rounding="ste", leaky_clip=leaky, overrides=overrides)


@dataclass
class FMPQTarget:
    """Exactly one of a size ratio (e.g. 0.25) or a latency in ms with its table."""

    size: float | None = None
    latency_ms: float | None = None
    latency_table: str | None = None

    def __post_init__(self) -> None:
        if (self.size is None) == (self.latency_ms is None):
            raise ValueError("FMPQ needs exactly one target: --target-size or --target-latency")
        if self.size is not None and not 0 < self.size <= 1:
            raise ValueError(f"target size ratio must be in (0, 1], got {self.size}")
        if self.latency_ms is not None and not self.latency_table:
            raise ValueError("a latency target needs a latency table (--latency-table or --backend)")


def search(ck: LoadedCheckpoint, sens: Sensitivity, target: FMPQTarget) -> SearchResult:
    """Run the β search for a size or latency target on this model."""
    if target.size is not None:
        weights = {n: m.weight.numel() for n, m in quantized_layers(
            wrap(build_model(ck.architecture, **ck.arch_args), QuantPolicy.fixed(8))).items()}
        return search_beta(sens, lambda a: size_ratio(weights, a), target.size, 0.01)
    from .latency import LatencyTable

    table = LatencyTable.load(target.latency_table)
    return search_beta(sens, table.predict, target.latency_ms, 0.0)


def run_fmpq(ck: LoadedCheckpoint, bits: Sequence[int], target: FMPQTarget, sampler, config,
             output: str | Path, calibration_batches: int = 4, cache: Path | None = None,
             progress: bool = True) -> SearchResult:
    """Sensitivities (cached) → β search → leaky-clip QAT of the allocation, written to `output`."""
    from .train import RunSpec, train

    gen = torch.Generator().manual_seed(config.seed)
    batches = [sampler.sample(config.batch_size, gen) for _ in range(calibration_batches)]
    sens = sensitivities(ck, bits, batches, config.lmbda, cache)
    found = search(ck, sens, target)
    policy = fmpq_policy(found.allocation)
    model = wrap(ck.model, policy)
    meta = {"method": "fmpq", "beta": found.beta, "iterations": found.iterations,
            "target": asdict(target), "achieved": found.score, "target_met": found.met,
            "init_model_id": ck.model_id, "lmbda": config.lmbda}
    train(model, RunSpec(ck.architecture, ck.arch_args, policy, meta), sampler, config, output,
          progress=progress)
    return found
