"""How would a naive table (isolated layer times + one fixed term) have done on a validation run?

    python benchmarks/profile_naive_baseline.py TABLE.json TABLE.validation.json

Uses the table's isolated per-layer measurements and the validation's own FP32 reference
measurements (fixed = reference − Σ isolated FP32 layers, i.e. exact at FP32 by construction), so
the comparison with the in-context prediction is on the very same measured profiles.
"""

from __future__ import annotations

import argparse
import json
import statistics

from dqsearch.latency import LatencyTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("validation")
    ap.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args()
    t = LatencyTable.load(args.table)
    v = json.loads(open(args.validation).read())
    if not t.isolated:
        raise SystemExit(f"{args.table} has no isolated measurements")
    iso = {n: {b: m.median for b, m in per.items()} for n, per in t.isolated.items()}
    fp32 = sum(per[32] for per in iso.values())
    fixed = statistics.median(v["references_ms"]) - fp32
    ctx_ref = t.predict(dict.fromkeys(t.layer_names, 32))
    naive, context, naive_rel, context_rel = [], [], [], []
    for r in v["rows"]:
        pred = fixed + sum(iso[n][int(b)] for n, b in r["profile"].items())
        naive.append(pred / r["measured_ms"] - 1)
        context.append(r["error"])
        # the FP32 reference measured around this sample, recovered from the drift-corrected error
        around = r["measured_ms"] * (1 + r["relative_error"]) * ctx_ref / r["predicted_ms"]
        naive_rel.append((pred / (fixed + fp32)) / (r["measured_ms"] / around) - 1)
        context_rel.append(r["relative_error"])
    for label, errs in (("naive isolated sum", naive), ("in-context table", context),
                        ("naive, drift-corr.", naive_rel), ("in-context, drift-corr.", context_rel)):
        a = [abs(e) for e in errs]
        print(f"{label:24}: {sum(e <= args.tolerance for e in a) / len(a):.1%} within ±{args.tolerance:.0%}, "
              f"median |error| {statistics.median(a):.1%}, mean error {statistics.fmean(errs):+.1%}, "
              f"max |error| {max(a):.1%}")


if __name__ == "__main__":
    main()
