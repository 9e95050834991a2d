"""Paired ablation of the latency weight η: for each seed, the same (λ, γ, bit-set, data, steps) is
fine-tuned with η = 0 and with η > 0, then both are evaluated on the validation split (what the
study sees) and on a test set (Kodak). Reports the mean paired difference of bpp, PSNR, rate at
equal PSNR against the FP32 family, average bits and latency with 95% intervals, the feasible share
with and without η, the seed-to-seed spread of each arm, and how often L_lat was non-zero (an
ablation of a term that is always 0 tests nothing). Resumable: finished runs are kept in the JSON.

    python benchmarks/eta_ablation.py \
        --latency-table latency_models/tvm-cpu/bmshj2018-hyperprior-M96-N64-768x512-tuned16.json \
        --backend tvm-cpu --target-latency 500ms --bits 6,8,10 --lambda 0.013 --gamma 0.02 --eta 2 \
        --seeds 0 1 2 3 4 --steps 200 --data ../shared/data/train --dataset ../shared/data/kodak \
        -o benchmarks/results/eta-ablation-tvm-cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from dqsearch.atomic import write_json  # noqa: E402
from dqsearch.backends.host import cpu_model  # noqa: E402
from dqsearch.data import list_images  # noqa: E402
from dqsearch.evaluate import evaluate_image  # noqa: E402
from dqsearch.latency import LatencyTable  # noqa: E402
from dqsearch.latency_term import parse_latency  # noqa: E402
from dqsearch.models import EMBEDDED_QUALITIES, load_checkpoint, resolve_checkpoint  # noqa: E402
from dqsearch.paired import paired_difference, rate_overhead, spread  # noqa: E402
from dqsearch.study import Objective, StudyConfig, TrialParams  # noqa: E402

METRICS = ("bpp", "psnr", "avg_bits", "latency_ms", "rate_overhead_pct")


def _evaluate(path: Path, images: list[Path], table: LatencyTable) -> dict:
    ck = load_checkpoint(path)
    rows = [evaluate_image(ck, f)[0] for f in images]
    profiles = Counter(tuple(sorted(r.profile.items())) for r in rows)
    return {"bpp": statistics.fmean(r.bpp for r in rows), "psnr": statistics.fmean(r.psnr for r in rows),
            "avg_bits": statistics.fmean(r.avg_bits for r in rows),
            "latency_ms": statistics.fmean(table.predict(r.profile) for r in rows),
            "distinct_profiles": len(profiles),
            "per_image_bits": [r.avg_bits for r in rows]}


def _fp32_curve(family: list[str], images: list[Path]) -> tuple[list[float], list[float]]:
    pts = []
    for spec in family:
        ck = load_checkpoint(resolve_checkpoint(spec))
        rows = [evaluate_image(ck, f)[0] for f in images]
        pts.append((statistics.fmean(r.bpp for r in rows), statistics.fmean(r.psnr for r in rows)))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def _summarise(runs: dict, seeds: list[int], eta: float, split: str, target: float) -> dict:
    done = [s for s in seeds if f"s{s}-eta0" in runs and f"s{s}-eta{eta:g}" in runs]
    off = [runs[f"s{s}-eta0"][split] for s in done]
    on = [runs[f"s{s}-eta{eta:g}"][split] for s in done]
    out = {"pairs": len(on)}
    for m in METRICS:
        a, b = [r.get(m) for r in off], [r.get(m) for r in on]
        if all(v is not None for v in a + b):
            out[m] = {"eta_on_minus_off": paired_difference(a, b), "spread_eta0": spread(a),
                      "spread_eta_on": spread(b)}
    out["feasible_share"] = {"eta0": _share(off, target), "eta_on": _share(on, target)}
    return out


def _share(rows: list[dict], target: float) -> float | None:
    return sum(r["latency_ms"] <= target for r in rows) / len(rows) if rows else None


def report(res: dict) -> str:
    """Markdown: per split, the mean paired difference (η on − η off) with its 95% interval, each
    arm's seed-to-seed spread, and the feasible shares."""
    def ci(d):  # noqa: E306
        if d.get("ci95") is None:
            return f"{d['mean']:+.3f}"
        return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
    lines = []
    for split in ("validation", "test"):
        s = res.get(split)
        if not s or not s.get("pairs"):
            continue
        lines += [f"**{split}** ({s['pairs']} pairs; feasible share η off {s['feasible_share']['eta0']:.0%}, "
                  f"η on {s['feasible_share']['eta_on']:.0%})", "",
                  "| metric | η on − η off, mean [95% CI] | seed sd, η off | seed sd, η on |",
                  "|---|---|---|---|"]
        for m in METRICS:
            if m in s:
                d = s[m]
                sd = [d[k]["sd"] for k in ("spread_eta0", "spread_eta_on")]
                lines.append(f"| {m} | {ci(d['eta_on_minus_off'])} | "
                             + " | ".join("n/a" if v is None else f"{v:.3f}" for v in sd) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency-table", required=True)
    p.add_argument("--backend", help="backend to measure on (with --measure)")
    p.add_argument("--measure", action="store_true")
    p.add_argument("--target-latency", required=True)
    p.add_argument("--bits", default="6,8,10")
    p.add_argument("--lambda", dest="lmbda", type=float, default=0.013)
    p.add_argument("--gamma", type=float, default=0.02)
    p.add_argument("--eta", type=float, default=2.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--val-limit", type=int, default=5)
    p.add_argument("--calibration-images", type=int, default=8,
                   help="whole photos for activation ranges; 0 = the old random-crop calibration")
    p.add_argument("--arms", choices=["both", "off"], default="both",
                   help="off: η = 0 only (the seed-to-seed spread of one configuration)")
    p.add_argument("--data", required=True, help="training images (validation split held out)")
    p.add_argument("--dataset", help="test images (e.g. Kodak) to report on")
    p.add_argument("--work", default="runs/eta-ablation", help="checkpoints (resumable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--report", action="store_true", help="print the tables of an existing JSON and stop")
    args = p.parse_args(argv)
    if args.report:
        import json

        print(report(json.loads(Path(args.output).read_text())))
        return 0
    torch.set_num_threads(args.threads)

    target = parse_latency(args.target_latency)
    work = Path(args.work) / Path(args.output).stem
    family = [f"embedded:{q}" for q in EMBEDDED_QUALITIES]
    config = StudyConfig(family=family, latency_table=str(Path(args.latency_table).resolve()),
                         target_ms=target, train_data=str(Path(args.data).resolve()), trial_dir=str(work),
                         backend=args.backend, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         val_limit=args.val_limit, measure=args.measure,
                         calibration_images=args.calibration_images)
    objective = Objective(config)
    table = objective.table
    out_path = Path(args.output)
    import json

    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    setting = {k: v for k, v in vars(args).items() if k not in ("output", "work")}
    kept = res.get("setting", {})
    if differ := sorted(k for k in setting if k not in ("seeds", "threads", "report") and k in kept
                        and kept[k] != setting[k]):
        print(f"eta_ablation: {out_path} holds runs of another setting ({', '.join(differ)} differ): "
              "resume with its setting or write to another --output", file=sys.stderr)
        return 2
    res.update({"machine": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                "setting": setting})
    runs = res.setdefault("runs", {})
    images = list_images(args.dataset) if args.dataset else []
    if images and "fp32_test_curve" not in res:
        res["fp32_test_curve"] = _fp32_curve(family, images)
        write_json(out_path, res)
    bits = tuple(int(b) for b in args.bits.split(","))
    for seed in args.seeds:
        for eta in (0.0, args.eta) if args.arms == "both" else (0.0,):
            key = f"s{seed}-eta{eta:g}"
            if key in runs:
                continue
            t0 = time.time()
            load = os.getloadavg()[0]
            params = TrialParams(args.lmbda, bits, args.gamma, eta)
            attrs = objective.run(params, work / f"{key}.pt", seed=seed)
            val = {k: attrs[k] for k in ("bpp", "psnr", "avg_bits", "distinct_profiles")}
            measured = attrs["measured_ms"]
            val["latency_ms"] = measured if measured is not None else attrs["predicted_ms"]
            val["rate_overhead_pct"] = None
            run = {"seed": seed, "eta": eta, "validation": val, "seconds": time.time() - t0, "load1": load,
                   **{k: attrs[k] for k in attrs if k.startswith("latency_term") or k == "expected_ms_last"}}
            if images:
                test = _evaluate(Path(attrs["checkpoint"]), images, table)
                test["rate_overhead_pct"] = rate_overhead(res["fp32_test_curve"], test["bpp"], test["psnr"])
                run["test"] = test
            runs[key] = run
            res["validation"] = _summarise(runs, args.seeds, args.eta, "validation", target)
            res["spread_eta0"] = {split: {m: spread([r[split][m] for r in runs.values() if r["eta"] == 0
                                                     and r.get(split, {}).get(m) is not None])
                                          for m in METRICS}
                                  for split in ("validation", "test")}
            if images:
                res["test"] = _summarise(runs, args.seeds, args.eta, "test", target)
            write_json(out_path, res)
            print(f"{key}: val {val['bpp']:.4f} bpp {val['psnr']:.2f} dB {val['latency_ms']:.1f} ms, "
                  f"L_lat active {run.get('latency_term_active_share')}, {run['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
