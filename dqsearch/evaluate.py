"""Rate-distortion evaluation on real bitstreams, results JSON in CompressAI's format, BD-rate.

bpp is counted from the bytes of the file that `dqsearch compress` would write (header included);
the likelihood estimate is kept beside it only as a check. The reconstruction measured is the one
`decode` returns from those bytes.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_msssim import ms_ssim
from tqdm import tqdm

from .codec import PAD_MULTIPLE, decode, encode
from .data import load_image, pad_to_multiple
from .models import LoadedCheckpoint
from .quant.wrap import average_bits, quantized_layers, set_profile

BD_METHODS = ("pchip", "akima")


@dataclass
class ImageResult:
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    bpp_likelihood: float
    psnr: float
    ms_ssim: float | None
    encoding_time: float
    decoding_time: float
    avg_bits: float | None
    avg_bits_weighted: float | None
    profile: dict[str, int]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def msssim_or_none(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """MS-SSIM needs the short side above 160 px (5 scales of an 11-px window)."""
    if min(a.shape[-2:]) <= 160:
        return None
    return float(ms_ssim(a, b, data_range=1.0))


@torch.no_grad()
def likelihood_bpp(model: torch.nn.Module, x: torch.Tensor, profile: dict[str, int]) -> float:
    """The entropy model's own rate estimate for the same precision profile (a sanity check)."""
    xp, _ = pad_to_multiple(x, PAD_MULTIPLE)
    if profile:
        set_profile(model, profile)
    out = model(xp)
    bits = sum(torch.log2(lk).sum().neg() for lk in out["likelihoods"].values())
    return float(bits) / (x.shape[-2] * x.shape[-1])


@torch.no_grad()
def evaluate_image(ck: LoadedCheckpoint, path: Path) -> tuple[ImageResult, torch.Tensor]:
    """Encode, decode and measure one image; returns the result and the decoded image."""
    model = ck.model.eval()
    x = load_image(path).unsqueeze(0)
    enc = encode(model, ck.model_id, x, f"image {path}")  # the memory check names the file
    t0 = time.perf_counter()
    x_hat, _ = decode(model, ck.model_id, enc.data)
    dec_s = time.perf_counter() - t0
    h, w = x.shape[-2:]
    quantized = bool(quantized_layers(model))
    res = ImageResult(
        image=path.name, width=w, height=h, bytes=len(enc.data),
        bpp=8 * len(enc.data) / (h * w),
        bpp_likelihood=likelihood_bpp(model, x, enc.profile),
        psnr=psnr(x, x_hat), ms_ssim=msssim_or_none(x, x_hat),
        encoding_time=enc.encode_seconds, decoding_time=dec_s,
        avg_bits=average_bits(model, enc.profile) if quantized else None,
        avg_bits_weighted=average_bits(model, enc.profile, weighted=True) if quantized else None,
        profile=enc.profile,
    )
    return res, x_hat


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def evaluate_checkpoint(
    ck: LoadedCheckpoint, images: Sequence[Path], progress: bool = True
) -> dict[str, Any]:
    """Per-image results and their means for one checkpoint (one RD point)."""
    rows = []
    for path in tqdm(images, desc=ck.path.name if ck.path else "eval", disable=not progress):
        rows.append(evaluate_image(ck, path)[0])
    keys = ("bpp", "bpp_likelihood", "psnr", "ms_ssim", "encoding_time", "decoding_time",
            "avg_bits", "avg_bits_weighted")
    means = {k: _mean([getattr(r, k) for r in rows]) for k in keys}
    layer_names = list(rows[0].profile) if rows and rows[0].profile else []
    layer_bits = {n: _mean([r.profile[n] for r in rows]) for n in layer_names}
    worst = min(rows, key=lambda r: r.psnr) if rows else None
    return {
        "checkpoint": str(ck.path) if ck.path else None,
        "model_id": ck.model_id,
        "architecture": ck.architecture,
        "arch_args": ck.arch_args,
        "policy": ck.policy.to_dict() if ck.policy else None,
        "lmbda": ck.meta.get("lmbda"),
        "mean": means,
        "mean_layer_bits": layer_bits,
        "worst": {"psnr": worst.psnr, "image": worst.image} if worst else None,
        "images": [asdict(r) for r in rows],
    }


def reference_deltas(point: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Per-image PSNR loss against a reference point on the same images (e.g. the FP32 model a
    quantized one came from): the mean hides an image the quantizer ruins, the worst case shows it."""
    ref = {r["image"]: r["psnr"] for r in reference["images"]}
    deltas = {r["image"]: r["psnr"] - ref[r["image"]] for r in point["images"] if r["image"] in ref}
    if not deltas:
        raise ValueError("the reference was evaluated on none of these images")
    worst = min(deltas, key=deltas.get)
    return {"reference": reference.get("checkpoint"), "mean_delta_psnr": statistics.fmean(deltas.values()),
            "worst_delta_psnr": deltas[worst], "worst_image": worst}


def results_json(name: str, points: Sequence[dict[str, Any]], description: str = "") -> dict[str, Any]:
    """CompressAI's results format (one list entry per RD point, sorted by rate) plus our fields."""
    points = sorted(points, key=lambda p: p["mean"]["bpp"])
    col = lambda k: [p["mean"][k] for p in points]  # noqa: E731
    return {
        "name": name,
        "description": description,
        "results": {
            "psnr-rgb": col("psnr"),
            "ms-ssim-rgb": col("ms_ssim"),
            "bpp": col("bpp"),
            "encoding_time": col("encoding_time"),
            "decoding_time": col("decoding_time"),
            "bpp_likelihood": col("bpp_likelihood"),
            "avg_bits": col("avg_bits"),
            "avg_bits_weighted": col("avg_bits_weighted"),
        },
        "points": list(points),
    }


# --- BD-rate ---------------------------------------------------------------------------------------
def read_curve(path: str | Path, metric: str = "psnr-rgb") -> tuple[list[float], list[float]]:
    """(bpp, metric) lists from a CompressAI-format results JSON, with a clear error when unusable."""
    data = load_results(path, metric)
    results = data["results"]
    if metric not in results:
        raise ValueError(f"{path} has no '{metric}' in 'results' (CompressAI format); it has "
                         f"{sorted(results)}")
    bpp, dist = results["bpp"], results[metric]
    if not isinstance(dist, list) or len(bpp) != len(dist) or any(v is None for v in dist):
        raise ValueError(f"{path}: '{metric}' is missing for some RD points")
    if metric == "ms-ssim-rgb":  # BD on MS-SSIM in dB, as CompressAI plots it
        dist = [-10 * math.log10(1 - v) for v in dist]
    return list(bpp), list(dist)


def load_results(path: str | Path, metric: str = "psnr-rgb") -> dict[str, Any]:
    """A results JSON (CompressAI format), validated by its schema; ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"results file {path} does not exist")
    from .schemas import ResultsSchema, SchemaError, read_text, validate

    try:
        data = json.loads(read_text(path, "results file"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SchemaError) as e:
        raise ValueError(f"cannot read results file {path}: {e}") from None
    if isinstance(data, dict) and "results" not in data and "bpp" in data:
        data = {"results": data}  # a bare results block

    try:
        validate(ResultsSchema, data, f"results file {path}")
    except SchemaError as e:
        raise ValueError(f"{e}; expected CompressAI format: {{\"results\": {{\"bpp\": [...], "
                         f"\"{metric}\": [...]}}}}") from None
    return data


def bd_rate(anchor: tuple[Sequence[float], Sequence[float]], test: tuple[Sequence[float], Sequence[float]],
            method: str = "pchip") -> tuple[float, float]:
    """(BD-rate in %, BD-PSNR in dB) of test against anchor with the bjontegaard package."""
    import bjontegaard as bd

    if method not in BD_METHODS:
        raise ValueError(f"BD method must be one of {BD_METHODS}, got {method!r}")
    for name, (r, d) in (("anchor", anchor), ("test", test)):
        if len(r) < 2:
            raise ValueError(f"the {name} curve has {len(r)} RD point(s); BD-rate needs at least two")
        pts = sorted(zip(r, d, strict=True))
        if any(b[0] <= a[0] or b[1] <= a[1] for a, b in itertools.pairwise(pts)):
            raise ValueError(f"the {name} curve is not monotonic (quality must rise with rate at "
                             f"every point): BD-rate is undefined for it")
    rate = bd.bd_rate(anchor[0], anchor[1], test[0], test[1], method=method,
                      require_matching_points=False, min_overlap=0)
    dpsnr = bd.bd_psnr(anchor[0], anchor[1], test[0], test[1], method=method,
                       require_matching_points=False, min_overlap=0)
    return float(rate), float(dpsnr)


def bd_overlap(anchor: tuple[Sequence[float], Sequence[float]],
               test: tuple[Sequence[float], Sequence[float]]) -> float:
    """The share (0–1) of the two curves' joint quality range that both cover: the interval
    BD-rate integrates over, relative to the whole. `bjontegaard` warns below 0.75; we report it
    beside every BD-rate instead, so a reader sees how much of the curve the number rests on."""
    (lo_a, hi_a), (lo_t, hi_t) = ((min(d), max(d)) for _, d in (anchor, test))
    whole = max(hi_a, hi_t) - min(lo_a, lo_t)
    return max(0.0, min(hi_a, hi_t) - max(lo_a, lo_t)) / whole if whole > 0 else 0.0
