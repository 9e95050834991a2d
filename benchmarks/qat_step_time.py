"""QAT step time against FP32 step time, side by side in one run (issue 2's targets: DPA ≤ 1.5×,
DQ with three candidates ≤ 2.5×). Variants are interleaved round by round so machine load
affects all of them alike; medians over rounds, ratios against FP32.

    python benchmarks/qat_step_time.py --threads 1 -o benchmarks/results/qat_step_time.json
    python benchmarks/qat_step_time.py --threads 1 --compile -o benchmarks/results/qat_step_time_compiled.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dqsearch.models import build_model
from dqsearch.quant.quantizer import use_compiled_quantization
from dqsearch.quant.wrap import QuantPolicy, calibrate, set_temperature, wrap
from dqsearch.train import rate_distortion

VARIANTS = {
    "fp32": None,
    "dpa-8": QuantPolicy.fixed(8),
    "dq-6,8,10 per-layer": QuantPolicy.dynamic((6, 8, 10)),
    "dq-6,8,10 global": QuantPolicy.dynamic((6, 8, 10), selector="global"),
    "dq-6,8,10 global input-mix st": QuantPolicy.dynamic((6, 8, 10), selector="global", fusion="input-mix"),
    "dq-6,8,10 global input-mix soft": QuantPolicy.dynamic((6, 8, 10), selector="global", fusion="input-mix",
                                                           relaxation="soft"),
}
# dq-* use the default fusion (output, straight-through hard sample) unless named; the last one
# is the earlier default (soft Gumbel sample mixed into inputs and weights).


def make(policy, args, x):
    torch.manual_seed(0)
    model = build_model(args.model, N=args.N, M=args.M)
    if policy is not None:
        wrap(model, policy)
        calibrate(model, [x])
        set_temperature(model, 1.0)
    model.train()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.endswith("quantiles")], 1e-5)
    return model, opt


def step(model, opt, x):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = rate_distortion(model(x), x, 0.013)["loss"]
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bmshj2018-hyperprior")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--M", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default="benchmarks/results/qat_step_time.json")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fake quantizer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    use_compiled_quantization(args.compile)
    x = torch.rand(args.batch_size, 3, args.crop, args.crop, generator=torch.Generator().manual_seed(0))
    runs = {name: make(pol, args, x) for name, pol in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for m, o in runs.values():  # warm-up (and compilation, with --compile)
        for _ in range(3):
            step(m, o, x)
    for _ in range(args.rounds):
        for name, (m, o) in runs.items():
            times[name].append(statistics.median(step(m, o, x) for _ in range(args.steps_per_round)))
    base = statistics.median(times["fp32"])
    result = {
        "benchmark": "qat_step_time",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        "setup": {k: getattr(args, k) for k in ("model", "N", "M", "batch_size", "crop", "rounds",
                                                 "steps_per_round", "compile")},
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_vs_fp32": {k: statistics.median(v) / base for k, v in times.items()},
        "targets": {"dpa-8": 1.5, **{k: 2.5 for k in VARIANTS if k.startswith("dq-")}},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for k, r in result["ratio_vs_fp32"].items():
        print(f"{k:32s} {result['median_step_s'][k] * 1000:8.1f} ms/step  {r:.2f}x FP32")


if __name__ == "__main__":
    main()
