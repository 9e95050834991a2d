"""Per-layer int8 / fp32 and int16 / fp32 latency on a TVM backend, measured side by side.

    python benchmarks/tvm_layer_ratios.py --model bmshj2018-hyperprior --N 64 --M 96 \
        --input 768x512 --tune-trials 16 --rounds 3 --json benchmarks/results/tvm-layer-ratios.json

For every layer the three containers are timed one after the other, `rounds` times, and the
ratio is taken within each round (the machine is shared: absolute times drift, ratios of
neighbouring measurements much less); the table shows the median ratio and its spread. With
`--tune-trials N` the kernels come from (or are added to) the tuning database.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from dqsearch.backends import load_backend, trace_model
from dqsearch.models import build_model

CONTAINERS = {"int8": 8, "int16": 16, "fp32": 32}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="tvm-cpu")
    p.add_argument("--model", default="bmshj2018-hyperprior")
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--M", type=int, default=96)
    p.add_argument("--input", default="768x512")
    p.add_argument("--tune-trials", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()

    backend = load_backend(args.backend, threads=args.threads, tune_trials=args.tune_trials,
                           repeats=5, budget_seconds=1.0)
    model = build_model(args.model, N=args.N, M=args.M)
    started = time.perf_counter()
    rows = []
    print("| layer | op | GMAC | fp32 ms | int8/fp32 | int16/fp32 |")
    print("|---|---|---|---|---|---|")
    for spec in trace_model(model, args.input).layers:
        runs: dict[str, list[float]] = {c: [] for c in CONTAINERS}
        for _ in range(args.rounds):
            for c, bits in CONTAINERS.items():
                runs[c].append(backend.profile_layer(spec, bits).median)
        ratio = {c: [a / f for a, f in zip(runs[c], runs["fp32"], strict=True)] for c in ("int8", "int16")}
        row = {"layer": spec.name, "op": spec.op, "gmac": spec.macs / 1e9,
               "ms": {c: statistics.median(v) for c, v in runs.items()}, "runs_ms": runs,
               "ratio": {c: statistics.median(v) for c, v in ratio.items()},
               "ratio_range": {c: [min(v), max(v)] for c, v in ratio.items()}}
        rows.append(row)
        print(f"| {spec.name} | {spec.op} | {row['gmac']:.2f} | {row['ms']['fp32']:.2f} | "
              f"{row['ratio']['int8']:.2f} ({min(ratio['int8']):.2f}–{max(ratio['int8']):.2f}) | "
              f"{row['ratio']['int16']:.2f} ({min(ratio['int16']):.2f}–{max(ratio['int16']):.2f}) |",
              flush=True)
    total = {c: sum(r["ms"][c] for r in rows) for c in CONTAINERS}
    print(f"| all layers | | | {total['fp32']:.1f} | {total['int8'] / total['fp32']:.2f} | "
          f"{total['int16'] / total['fp32']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"backend": args.backend, "metadata": backend.metadata(), "model": args.model, "N": args.N,
             "M": args.M, "input": args.input, "rounds": args.rounds, "rows": rows, "total_ms": total,
             "seconds": round(time.perf_counter() - started, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
