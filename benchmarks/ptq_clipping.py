"""Does MSE-optimal clipping beat min/max ranges for 6-bit layers? (issue 15: where DQ's 6 bits lose)

Post-training quantization of one embedded model at `--bits` for every layer, activation ranges
from 8 whole training photos (the QAT default), scored on the validation photos
(`split_files(train, 0.1, 0)[1]`, never Kodak): min/max ranges (what DPA starts from), and per-channel
clipping of the range to the fraction in `--grid` that minimises each quantizer's own squared
error (activations on 4 of the photos subsampled 2×2, weights on themselves), for activations,
weights and both. PSNR and bpp from the entropy model's estimate of the same forward pass;
J = bpp + λ·255²·MSE.

    python benchmarks/ptq_clipping.py --checkpoint embedded:3 --bits 6 -o benchmarks/results/ptq_clipping.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from dqsearch.codec import PAD_MULTIPLE
from dqsearch.data import crop_padding, list_images, load_image, pad_to_multiple, split_files
from dqsearch.evaluate import psnr
from dqsearch.models import load_checkpoint, resolve_checkpoint
from dqsearch.quant.wrap import QuantPolicy, calibrate, quantized_layers, wrap

GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2)


@torch.no_grad()
def score(model, images: list[torch.Tensor], lmbda: float) -> dict:
    rows = []
    for x in images:
        xp, pad = pad_to_multiple(x, PAD_MULTIPLE)
        out = model(xp)
        x_hat = crop_padding(out["x_hat"], pad).clamp(0, 1)
        bits = float(sum(torch.log2(lk).sum().neg() for lk in out["likelihoods"].values()))
        bpp = bits / (x.shape[-2] * x.shape[-1])
        mse = float(((x_hat - x) ** 2).mean())
        rows.append({"psnr": psnr(x, x_hat), "bpp": bpp, "rd_cost": bpp + lmbda * 255**2 * mse})
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


@torch.no_grad()
def mse_clip(q, samples: list[torch.Tensor], bits: int, grid: tuple[float, ...]) -> list[float]:
    """Shrink each channel's calibrated range to the grid fraction with the least squared error."""
    lo0, hi0 = q.range_low.clamp(max=0.0), q.range_high.clamp(min=0.0)
    qmax = 2**bits - 1
    errs = torch.zeros(len(grid), q.num_channels)
    for x in samples:
        xc = x.transpose(0, q.channel_dim).reshape(q.num_channels, -1)
        for i, a in enumerate(grid):
            s = ((hi0 - lo0) * a / qmax).clamp_min(1e-8)[:, None]
            z = (-lo0 * a / s[:, 0]).round().clamp(0, qmax)[:, None]
            xq = s * ((xc / s + z).round().clamp(0, qmax) - z)
            errs[i] += ((xq - xc) ** 2).sum(1)
    frac = torch.tensor(grid)[errs.argmin(0)]
    s = ((hi0 - lo0) * frac / qmax).clamp_min(1e-8)
    q.scale[str(bits)].copy_(s)
    q.zero_point[str(bits)].copy_((-lo0 * frac / s).round().clamp(0, qmax))
    return frac.tolist()


def build(checkpoint: str, bits: int, calib: list[torch.Tensor], variant: str) -> tuple:
    model = load_checkpoint(resolve_checkpoint(checkpoint)).model.eval()
    wrap(model, QuantPolicy(bits=(bits,)))
    calibrate(model, calib)
    layers = quantized_layers(model)
    fractions: dict[str, dict[str, float]] = {}
    if variant in ("activations", "both"):
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        def keep(name: str):
            return lambda mod, inp: seen[name].append(inp[0][:, :, ::2, ::2].clone())
        hooks = [m.register_forward_pre_hook(keep(n)) for n, m in layers.items()]
        for m in layers.values():
            m.calibrating = True
        with torch.no_grad():
            for x in calib[:4]:
                model(x)
        for m in layers.values():
            m.calibrating = False
        for h in hooks:
            h.remove()
        for n, m in layers.items():
            frac = mse_clip(m.input_quantizer, seen[n], bits, GRID)
            fractions.setdefault(n, {})["activation"] = statistics.fmean(frac)
    if variant in ("weights", "both"):
        for n, m in layers.items():
            w = m._effective_weight().detach()
            frac = mse_clip(m.weight_quantizer, [w], bits, GRID)
            fractions.setdefault(n, {})["weight"] = statistics.fmean(frac)
    return model, fractions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="embedded:3")
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--train-data", default="../shared/data/train")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default="benchmarks/results/ptq_clipping.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, val = split_files(list_images(args.train_data), 0.1, 0)
    picks = [train[int(j * len(train) / 8)] for j in range(8)]  # as calibration_inputs picks them
    calib = [pad_to_multiple(load_image(f, warn=False).unsqueeze(0), PAD_MULTIPLE)[0] for f in picks]
    images = [load_image(f, warn=False).unsqueeze(0) for f in val]
    fp = load_checkpoint(resolve_checkpoint(args.checkpoint))
    lmbda = float(fp.meta.get("lmbda") or 0.013)
    result = {"benchmark": "ptq_clipping", "checkpoint": args.checkpoint, "bits": args.bits, "lmbda": lmbda,
              "validation": [f.name for f in val], "grid": GRID,
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
              "fp32": score(fp.model.eval(), images, lmbda), "variants": {}}
    for variant in ("minmax", "activations", "weights", "both"):
        model, fractions = build(args.checkpoint, args.bits, calib, variant)
        result["variants"][variant] = {**score(model, images, lmbda), "mean_clip_fraction": fractions}
        r = result["variants"][variant]
        print(f"{variant:12s} {r['psnr']:.3f} dB {r['bpp']:.4f} bpp J {r['rd_cost']:.4f}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
