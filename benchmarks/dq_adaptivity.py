"""Does a DQ model's per-image precision pay? Profiles per image, their spread, and the ablation.

For one checkpoint (a fixed-precision model too: its scores are the paired baseline, one
profile by construction), on Kodak and on the validation split of the training photos (the split the
studies use: `split_files(..., val_fraction, seed)`):

- each image's profile as the selectors choose it at encode time, the number of distinct
  profiles, the spread of per-image average bits and how often each layer takes each bit-width;
- the decisive ablation: the same model with every image forced to its most frequent profile,
  and with the chosen profiles shuffled between images (the same multiset of profiles, so exactly
  the same average bits, but not matched to content). If content-aware choice pays, the adaptive
  assignment has a lower RD cost J = bpp + λ·255²·MSE than the shuffled one at equal bits;
- with `--train-path`, the train/inference gap: the same images through the training forward
  (quantized blocks and selectors in training mode at the stored final temperature, one Gumbel
  draw per image; entropy models in inference mode) against the decoder's forward;
- with `--headroom`, what any per-image choice could gain: every single-layer change of the most
  frequent profile to a neighbouring candidate, on every image, and on how many images it lowers
  the training objective J + γ·L_bits. If no change helps some images and not others, no selector can profit.

Rates are the entropy model's estimate of the same forward pass (within 1% of file bytes, see
the README), so the three assignments differ only in the profile. One thread is plenty:

    python benchmarks/dq_adaptivity.py --checkpoint dq.pt --threads 1 \\
        --kodak ../shared/data/kodak --train-data ../shared/data/train \\
        -o benchmarks/results/dq_adaptivity.json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from dqsearch.codec import PAD_MULTIPLE
from dqsearch.data import crop_padding, list_images, load_image, pad_to_multiple, split_files
from dqsearch.models import load_checkpoint, resolve_checkpoint
from dqsearch.quant.wrap import (
    average_bits,
    dynamic_layers,
    get_profile,
    quantized_layers,
    selectors,
    set_profile,
)


@torch.no_grad()
def run_image(model, x: torch.Tensor, lmbda: float, profile: dict[str, int] | None) -> dict:
    """One inference forward, with the selectors (profile None) or a forced profile."""
    set_profile(model, profile)
    xp, pad = pad_to_multiple(x, PAD_MULTIPLE)
    out = model(xp)
    used = get_profile(model) if profile is None else dict(profile)
    x_hat = crop_padding(out["x_hat"], pad).clamp(0, 1)
    mse = torch.mean((x_hat - x) ** 2).item()
    bits = sum(torch.log2(lk).sum().neg() for lk in out["likelihoods"].values()).item()
    bpp = bits / (x.shape[-2] * x.shape[-1])
    return {"profile": used, "avg_bits": average_bits(model, used), "bpp": bpp,
            "psnr": -10 * math.log10(max(mse, 1e-12)), "rd_cost": bpp + lmbda * 255**2 * mse}


def summarise(rows: list[dict]) -> dict:
    return {k: statistics.fmean(r[k] for r in rows) for k in ("avg_bits", "bpp", "psnr", "rd_cost")}


def headroom(model, images: list[torch.Tensor], lmbda: float, gamma: float, mode: dict[str, int],
             base: list[dict]) -> dict:
    """Per (layer, bits) change of the mode profile: ΔJ and ΔPSNR per image, and the share of
    images whose training objective J + γ·L_bits it lowers (L_bits: mean over dynamic layers),
    with a uniform price of a bit and with `--bits-cost distortion`'s γ·MSE_i/mean MSE. `oracle`
    adds up, per image, the best change of each layer: about what a perfect per-image selector
    could gain over the mode profile on that objective (layers taken as independent)."""
    layers = dynamic_layers(model)
    mse = [10 ** (-o["psnr"] / 10) for o in base]
    price = [m / statistics.fmean(mse) for m in mse]
    changes = {}
    best = {"uniform": [0.0] * len(images), "distortion": [0.0] * len(images)}
    for name, m in layers.items():
        i = m.candidates.index(mode[name])
        layer_best = {k: [0.0] * len(images) for k in best}
        for b in m.candidates[max(0, i - 1) : i] + m.candidates[i + 1 : i + 2]:  # neighbours
            prof = {**mode, name: b}
            rows = [run_image(model, x, lmbda, prof) for x in images]
            dj = [r["rd_cost"] - o["rd_cost"] for r, o in zip(rows, base, strict=True)]
            dp = [r["psnr"] - o["psnr"] for r, o in zip(rows, base, strict=True)]
            dbits = gamma * (b - mode[name]) / len(layers)
            obj = {"uniform": [d + dbits for d in dj],
                   "distortion": [d + dbits * w for d, w in zip(dj, price, strict=True)]}
            for k in best:
                layer_best[k] = [min(a, v) for a, v in zip(layer_best[k], obj[k], strict=True)]
            changes[f"{name}:{mode[name]}->{b}"] = {
                "delta_rd_cost": {"mean": statistics.fmean(dj), "min": min(dj), "max": max(dj)},
                "delta_psnr": {"mean": statistics.fmean(dp), "min": min(dp), "max": max(dp)},
                "gamma_delta_lbits": dbits,
                "share_improved": sum(v < 0 for v in obj["uniform"]) / len(dj),
                "share_improved_distortion_price": sum(v < 0 for v in obj["distortion"]) / len(dj),
            }
        for k in best:
            best[k] = [a + v for a, v in zip(best[k], layer_best[k], strict=True)]
    mean_obj = statistics.fmean(o["rd_cost"] for o in base)
    return {"changes": changes,
            "oracle": {k: {"mean_objective_gain": statistics.fmean(v), "max_objective_gain": min(v),
                           "images_that_gain": sum(g < 0 for g in v), "mode_rd_cost": mean_obj}
                       for k, v in best.items()}}


def train_path(model, images: list[torch.Tensor], lmbda: float, seed: int) -> dict:
    """The training forward of the quantized layers on each image (see the module docstring)."""
    torch.manual_seed(seed)
    blocks = list(quantized_layers(model).values()) + list(selectors(model))
    for m in blocks:
        m.train()
    try:
        rows = [run_image(model, x, lmbda, None) for x in images]
    finally:
        model.eval()
    return {**summarise(rows), "distinct_profiles": len({tuple(r["profile"].items()) for r in rows})}


def study_set(model, files: list[Path], lmbda: float, shuffles: int, seed: int,
              gamma: float | None = None, with_train_path: bool = False) -> dict:
    images = [load_image(f, warn=False).unsqueeze(0) for f in files]
    adaptive = [run_image(model, x, lmbda, None) for x in images]
    keys = [tuple(r["profile"].items()) for r in adaptive]
    counts = collections.Counter(keys)
    mode_profile = dict(counts.most_common(1)[0][0])
    forced = [run_image(model, x, lmbda, mode_profile) for x in images]
    shuffled_runs = []
    if len(counts) > 1:
        rng = random.Random(seed)
        for _ in range(shuffles):
            perm = [r["profile"] for r in adaptive]
            while all(a == b for a, b in zip(perm, (r["profile"] for r in adaptive), strict=True)):
                rng.shuffle(perm)
            shuffled_runs.append(summarise([run_image(model, x, lmbda, p)
                                            for x, p in zip(images, perm, strict=True)]))
    bits = [r["avg_bits"] for r in adaptive]
    names = list(dynamic_layers(model))
    layer_use = {n: dict(collections.Counter(r["profile"][n] for r in adaptive)) for n in names}
    result = {
        "images": len(files),
        "distinct_profiles": len(counts),
        "profile_counts": sorted(counts.values(), reverse=True),
        "avg_bits": {"mean": statistics.fmean(bits), "min": min(bits), "max": max(bits),
                     "std": statistics.pstdev(bits)},
        "layer_bit_counts": layer_use,
        "adaptive": summarise(adaptive),
        "most_frequent_profile": {"profile": mode_profile, "share": counts.most_common(1)[0][1] / len(files),
                                  **summarise(forced)},
        "per_image": [{"image": f.name, **{k: r[k] for k in ("avg_bits", "bpp", "psnr", "rd_cost")},
                       "profile_id": list(counts).index(k)}
                      for f, r, k in zip(files, adaptive, keys, strict=True)],
    }
    if with_train_path:
        result["train_path"] = train_path(model, images, lmbda, seed)
    if gamma is not None:
        result["headroom"] = headroom(model, images, lmbda, gamma, mode_profile, forced)
        split = {k: v["share_improved"] for k, v in result["headroom"]["changes"].items()
                 if 0 < v["share_improved"] < 1}
        result["headroom_split_layers"] = split  # changes some images want and others do not
    if shuffled_runs:
        result["shuffled_profiles"] = {k: statistics.fmean(s[k] for s in shuffled_runs)
                                       for k in shuffled_runs[0]} | {"runs": len(shuffled_runs)}
        a, s = result["adaptive"], result["shuffled_profiles"]
        result["adaptive_minus_shuffled"] = {k: a[k] - s[k] for k in ("avg_bits", "bpp", "psnr", "rd_cost")}
    else:
        result["shuffled_profiles"] = None  # one profile for every image: nothing to shuffle
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--kodak", default="../shared/data/kodak")
    ap.add_argument("--train-data", default="../shared/data/train")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0, help="validation split and shuffles")
    ap.add_argument("--shuffles", type=int, default=2)
    ap.add_argument("--limit", type=int, help="first N images of each set (quick checks)")
    ap.add_argument("--headroom", action="store_true",
                    help="also try every single-layer change of the most frequent profile per image")
    ap.add_argument("--gamma", type=float, default=0.15, help="γ of the training objective (headroom)")
    ap.add_argument("--train-path", action="store_true", help="also run the training forward (the gap)")
    ap.add_argument("--sets", default="kodak,validation",
                    help="which image sets to run, comma-separated (a recipe is chosen on validation only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default="benchmarks/results/dq_adaptivity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(resolve_checkpoint(args.checkpoint))
    model = ck.model.eval()
    if not quantized_layers(model):
        raise SystemExit(f"{args.checkpoint} has no quantized layers (an FP32 model)")
    if not dynamic_layers(model) and (args.headroom or args.train_path):
        raise SystemExit(f"{args.checkpoint} has no bit-width selectors: --headroom and --train-path "
                         "need a DQ model")
    # A fixed-precision model (DPA-8, a static profile) gets the same PSNR/bpp/J on the same images:
    # the paired baseline a recipe choice needs; it has one profile by construction.
    lmbda = float(ck.meta.get("lmbda") or 0.013)
    val = split_files(list_images(args.train_data), args.val_fraction, args.seed)[1]
    sets = {"kodak": list_images(args.kodak), "validation": val}
    wanted = [n.strip() for n in args.sets.split(",") if n.strip()]
    if not wanted or set(wanted) - set(sets):
        raise SystemExit(f"--sets takes a comma-separated subset of {sorted(sets)}, got {args.sets!r}")
    sets = {n: sets[n] for n in wanted}
    t0 = time.perf_counter()
    result = {
        "benchmark": "dq_adaptivity",
        "checkpoint": args.checkpoint,
        "policy": ck.policy.to_dict() if ck.policy else None,
        "lmbda": lmbda,
        "note": "validation = split_files(train, val_fraction, seed)[1]; a model trained by "
                "`dqsearch train --data <all train photos>` has seen these photos",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "sets": {name: study_set(model, files[: args.limit], lmbda, args.shuffles, args.seed,
                                 args.gamma if args.headroom else None, args.train_path)
                 for name, files in sets.items()},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    for name, r in result["sets"].items():
        a, m = r["adaptive"], r["most_frequent_profile"]
        line = (f"{name}: {r['images']} images, {r['distinct_profiles']} distinct profiles, bits "
                f"{r['avg_bits']['mean']:.2f} [{r['avg_bits']['min']:.2f}, {r['avg_bits']['max']:.2f}]; "
                f"adaptive {a['psnr']:.3f} dB {a['bpp']:.4f} bpp J {a['rd_cost']:.4f} | most frequent "
                f"({m['share']:.0%}) {m['avg_bits']:.2f} bits {m['psnr']:.3f} dB {m['bpp']:.4f} bpp "
                f"J {m['rd_cost']:.4f}")
        if r["shuffled_profiles"]:
            s = r["shuffled_profiles"]
            line += f" | shuffled {s['psnr']:.3f} dB {s['bpp']:.4f} bpp J {s['rd_cost']:.4f}"
        print(line)
        if "train_path" in r:
            t = r["train_path"]
            print(f"  training path: {t['psnr']:.3f} dB {t['bpp']:.4f} bpp J {t['rd_cost']:.4f}, "
                  f"{t['avg_bits']:.2f} bits, {t['distinct_profiles']} distinct profiles")
        for k, v in r.get("headroom", {}).get("oracle", {}).items():
            print(f"  oracle ({k} price): J + γ·L_bits lower by {-v['mean_objective_gain']:.4f} on average "
                  f"(at most {-v['max_objective_gain']:.4f}), {v['images_that_gain']} images gain")
        for k, v in r.get("headroom", {}).get("changes", {}).items():
            print(f"  {k:16s} ΔJ {v['delta_rd_cost']['mean']:+.4f} [{v['delta_rd_cost']['min']:+.4f}, "
                  f"{v['delta_rd_cost']['max']:+.4f}]  ΔPSNR {v['delta_psnr']['mean']:+.3f} "
                  f"[{v['delta_psnr']['min']:+.3f}, {v['delta_psnr']['max']:+.3f}]  γΔL_bits "
                  f"{v['gamma_delta_lbits']:+.4f}  improves {v['share_improved']:.0%} of images "
                  f"({v['share_improved_distortion_price']:.0%} at the distortion price)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
