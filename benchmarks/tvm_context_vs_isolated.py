"""In-context versus isolated layer times, scored on the same measured validation profiles.

    python benchmarks/tvm_context_vs_isolated.py \
        latency_models/tvm-cpu/bmshj2018-hyperprior-M96-N64-768x512-tuned16.json \
        benchmarks/results/tvm-cpu-validate-tuned16.json \
        --json benchmarks/results/tvm-context-vs-isolated.json

An in-context table (`"method": "in-context"`) also stores every layer timed alone, and a
validation file stores each random profile's measured whole-model time, so both methods can be
scored against the very same measurements: in-context predictions are the table's; isolated
predictions sum the isolated layer times plus the isolated method's fixed part (whole fp32 model
minus its fp32 layers timed alone, i.e. the same all-fp32 prediction).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dqsearch.latency import LatencyTable


def score(errors: list[float], tolerance: float) -> dict[str, float]:
    return {"share_within": sum(abs(e) <= tolerance for e in errors) / len(errors),
            "median_abs_error": statistics.median(abs(e) for e in errors),
            "max_abs_error": max(abs(e) for e in errors), "mean_error": statistics.fmean(errors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table")
    p.add_argument("validation", help="JSON written by `dqsearch latency validate -o`")
    p.add_argument("--json")
    args = p.parse_args()

    table = LatencyTable.load(args.table)
    if table.metadata.get("method") != "in-context" or not table.isolated:
        raise SystemExit(f"{args.table}: not an in-context table with isolated times (metadata.method)")
    val = json.loads(Path(args.validation).read_text())
    tol = float(val.get("tolerance", 0.1))
    names = table.layer_names
    fp32 = dict.fromkeys(names, 32)

    def isolated(profile: dict[str, int]) -> float:
        return sum(table.isolated[n][int(b)].median for n, b in profile.items())

    offset = table.predict(fp32) - isolated(fp32)  # the isolated method's fixed part
    rows, ctx_err, iso_err = [], [], []
    for r in val["rows"]:
        profile, measured = r["profile"], float(r["measured_ms"])
        pc, pi = table.predict(profile), isolated(profile) + offset
        ctx_err.append(pc / measured - 1)
        iso_err.append(pi / measured - 1)
        rows.append({"profile": profile, "measured_ms": measured, "in_context_ms": pc, "isolated_ms": pi})
    out = {"table": args.table, "validation": args.validation, "tolerance": tol, "samples": len(rows),
           "in_context": score(ctx_err, tol), "isolated": score(iso_err, tol), "rows": rows}
    for k in ("in_context", "isolated"):
        s = out[k]
        print(f"{k:10s}: {s['share_within']:.0%} within ±{tol:.0%}, "
              f"median |error| {s['median_abs_error']:.1%}, max {s['max_abs_error']:.1%}, "
              f"mean {s['mean_error']:+.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
