"""What ONNX Runtime's CPU provider runs for each layer at int8 / int16 / fp32, and what it costs.

    python benchmarks/profile_ort_kernels.py --model bmshj2018-hyperprior --N 64 --M 96 \
        --input 768x512 [--json out.json]

Each transform is run at a uniform container under the profiler; for every layer the kernel of
its convolution and the time of its segment split by op type (the conv itself, quantize /
dequantize, layout transposes and reorders, the rest) are printed. This shows, for example,
that a ConvTranspose at int8 stays an fp32 ConvTranspose wrapped in QuantizeLinear /
DequantizeLinear (ONNX Runtime has no int8 ConvTranspose kernel), and what that wrapping costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dqsearch_ort import context
from dqsearch_ort.backend import OrtBackend
from dqsearch_ort.session import profile_runs

from dqsearch.models import build_model

KINDS = {"QuantizeLinear": "q/dq", "DequantizeLinear": "q/dq", "Transpose": "layout",
         "ReorderInput": "layout", "ReorderOutput": "layout"}


def breakdown(backend: OrtBackend, group, bits: int, repeats: int) -> dict[str, dict]:
    runs = profile_runs(backend.config, group.graph(dict.fromkeys(group.layers, bits)), group.feeds,
                        backend.timing.warmup, repeats, backend.timing.clock)
    owner = context.attribute(runs.graph, set(group.layers))
    ops = {n.name: n.op_type for n in runs.graph.graph.node}
    out: dict[str, dict] = {}
    for name, (seg, is_conv) in owner.items():
        if seg == context.HEAD:
            continue
        entry = out.setdefault(seg, {"kernel": None, "conv": [], "q/dq": [], "layout": [], "other": []})
        kind = "conv" if is_conv else KINDS.get(ops[name], "other")
        if is_conv:
            entry["kernel"] = ops[name]
        entry[kind].append(statistics.median(r.get(name, 0.0) for r in runs.nodes))
    return {seg: {k: (sum(v) if isinstance(v, list) else v) for k, v in e.items()} for seg, e in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bmshj2018-hyperprior")
    ap.add_argument("--N", type=int)
    ap.add_argument("--M", type=int)
    ap.add_argument("--input", default="768x512")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    arch = {k: v for k, v in (("N", args.N), ("M", args.M)) if v}
    model = build_model(args.model, **arch)
    backend = OrtBackend("ort-cpu", threads=1)
    result = {}
    print("| layer | bits | kernel | conv ms | q/dq ms | layout ms | other ms |")
    print("|---|---|---|---|---|---|---|")
    for group in backend._model_groups(model, args.input):
        for bits in (8, 16, 32):
            for seg, e in breakdown(backend, group, bits, args.repeats).items():
                result.setdefault(seg, {})[bits] = e
        for seg in group.layers:
            for bits in (8, 16, 32):
                e = result[seg][bits]
                print(f"| {seg} | {bits} | {e['kernel']} | {e['conv']:.2f} | {e['q/dq']:.2f} | "
                      f"{e['layout']:.2f} | {e['other']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
