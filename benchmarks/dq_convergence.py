"""Does the committed QAT length sit where the curve flattens? Kodak RD of DPA-8 and DQ vs QAT steps.

Each (method, steps) pair is its own QAT run from the FP32 checkpoint of one λ (the temperature
schedule follows the total step count, so a 1000-step run is not a 300-step run continued): the
methods of a study file (default `studies/table1.toml`, same [train] settings, same training
photos), renamed "<name> @<steps> steps" so their checkpoints live next to, not on top of, the
table's (`<cache>/checkpoints/<slug>/`). Runs resume after a kill (`compare`'s checkpointing);
a run of the table's own length reuses the table's checkpoint when it exists. Finished points are
kept in the output JSON by model id and never evaluated twice:

    python benchmarks/dq_convergence.py --study studies/table1.toml --member embedded:3 \\
        --methods "Q (DPA-8)" "DQ {6,8,10}" --steps 300 1000 --threads 1 \\
        -o benchmarks/results/dq_convergence.json

One λ and one seed per point: the Kodak PSNR at (nearly) equal bpp stands in for BD-rate.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from dqsearch.compare import Benchmark, _family_checkpoint, method_checkpoint
from dqsearch.data import list_images
from dqsearch.evaluate import evaluate_checkpoint
from dqsearch.models import load_checkpoint


def point_summary(point: dict) -> dict:
    m = point["mean"]
    profiles = collections.Counter(json.dumps(img["profile"], sort_keys=True) for img in point["images"])
    return {"model_id": point["model_id"], "psnr": m["psnr"], "bpp": m["bpp"],
            "bpp_likelihood": m["bpp_likelihood"], "avg_bits": m["avg_bits"],
            "distinct_profiles": len(profiles) if point["images"][0]["profile"] else None,
            "worst_image_psnr": min(img["psnr"] for img in point["images"])}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    by_method = collections.defaultdict(list)
    for r in result["points"]:
        by_method[r["method"]].append(r)
    for name, rows in by_method.items():
        rows.sort(key=lambda r: r["steps"])
        steps = [r["steps"] for r in rows]
        axes[0].plot(steps, [r["psnr"] for r in rows], "o-", label=name)
        for r in rows:
            if r["avg_bits"] and r["avg_bits"] != 8:
                axes[0].annotate(f"{r['avg_bits']:.2f} b", (r["steps"], r["psnr"]), fontsize=7,
                                 textcoords="offset points", xytext=(4, 4))
        axes[1].plot(steps, [r["bpp"] for r in rows], "o-", label=name)
    fp = result.get("fp32")
    if fp:
        axes[0].axhline(fp["psnr"], color="gray", ls="--", lw=1, label="FP32")
        axes[1].axhline(fp["bpp"], color="gray", ls="--", lw=1)
    for ax, label in zip(axes, ("Kodak PSNR (dB)", "Kodak bpp (file bytes)"), strict=True):
        ax.set_xscale("log")
        ticks = sorted({r["steps"] for r in result["points"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("QAT steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['member']} (λ = {result['lmbda']}), one seed per point", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/table1.toml")
    ap.add_argument("--member", default="embedded:3", help="the family member (one λ)")
    ap.add_argument("--methods", nargs="+", default=["Q (DPA-8)", "DQ {6,8,10}"])
    ap.add_argument("--steps", nargs="+", type=int, default=[300, 1000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default="benchmarks/results/dq_convergence.json")
    ap.add_argument("--figure", help="PNG (default: the output with .png)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    study = Benchmark.load(args.study)
    by_name = {m.name: m for m in study.methods}
    missing = [n for n in args.methods if n not in by_name]
    if missing:
        raise SystemExit(f"{args.study} has no methods {missing}; it has {sorted(by_name)}")
    images = list_images(study.dataset)
    out = Path(args.output)
    result = json.loads(out.read_text()) if out.exists() else {}
    done = {(r["method"], r["steps"], r["model_id"]) for r in result.get("points", [])}
    base = _family_checkpoint(study, args.member)
    fp = load_checkpoint(base)
    result.update({"benchmark": "dq_convergence", "study": args.study, "member": args.member,
                   "lmbda": fp.meta.get("lmbda"), "train": study.train,
                   "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
                   "note": "one QAT run per (method, steps), seed 0; Kodak means over 24 images, "
                           "bpp from file bytes"})
    result.setdefault("points", [])
    if "fp32" not in result:
        result["fp32"] = point_summary(evaluate_checkpoint(fp, images, progress=False))
    for name in args.methods:
        for steps in args.steps:
            m = by_name[name]
            method = dataclasses.replace(m, name=f"{name} @{steps} steps", train={**m.train, "steps": steps})
            table_ck = study.cache / "checkpoints" / m.slug / f"{base.stem}.pt"
            if steps == int({**study.train, **m.train}.get("steps", 0)) and table_ck.exists():
                method = m  # the table's own run of this length: reuse it (same settings, same seed)
            t0 = time.perf_counter()
            ck = load_checkpoint(method_checkpoint(study, method, base, progress=False))
            train_s = time.perf_counter() - t0
            if (name, steps, ck.model_id) in done:
                continue
            row = {"method": name, "steps": steps, "checkpoint": str(ck.path),
                   "train_seconds": ck.meta.get("train_seconds"), "wall_seconds_this_call": round(train_s, 1),
                   **point_summary(evaluate_checkpoint(ck, images, progress=False))}
            result["points"] = [r for r in result["points"]
                                if (r["method"], r["steps"]) != (name, steps)] + [row]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name} @{steps}: {row['psnr']:.3f} dB {row['bpp']:.4f} bpp "
                  f"{row['avg_bits']:.2f} bits, {row['distinct_profiles']} profiles", flush=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, Path(args.figure) if args.figure else out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
