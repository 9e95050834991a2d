"""Does the ort-cpu latency table predict the deployed model? (issue 17 item 5, issue 16 item 1)

    python benchmarks/table_vs_deployed.py --image ../shared/data/kodak/kodim01.png \\
        --table latency_models/ort-cpu/bmshj2018-hyperprior-M96-N64-768x512-zen5-deployed.json \\
        --table latency_models/ort-cpu/bmshj2018-hyperprior-M96-N64-768x512-zen5-deployed-float-hyper.json \\
        -o benchmarks/results/table_vs_deployed.json

Models (no training, built in --work): the embedded ScaleHyperprior (N=64, M=96, quality 3) in
FP32, post-training quantized to 8 bits, and a DynaQuant PTQ model (candidates 6/8/10) forced to
two mixed profiles. Each is exported with `dqsearch export`'s defaults (int8 g_a/g_s, sub-pixel
where a deconvolution runs in int8, integer h_s; every profile folder also has the ONNX h_s) and
its ONNX sessions are timed at the image's size, one thread, thread CPU time, all variants
interleaved in each round (medians): encoder = g_a + h_a, decoder = h_s + g_s with the ONNX h_s
(what the table times) and with the integer h_s (numpy, what the default export runs).

The table's prediction per side: its layers of those transforms at the profile, the transitions
between them, and the transforms' fixed parts (`metadata.context.fixed_ms_by_transform`); a table
profiled with the integer h_s (`hyper = "integer"`, the default) is compared with the decoder that
runs it, one profiled with `--option hyper=float` with the ONNX-h_s decoder. Also
checked: the graph the backend times for each transform is the exported one (same multiset of
node op types, Identity aside).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploy_speed import inputs  # noqa: E402

from dqsearch.atomic import write_json  # noqa: E402
from dqsearch.backends import cpu_model, cpu_signature  # noqa: E402
from dqsearch.codec import PAD_MULTIPLE  # noqa: E402
from dqsearch.data import load_image, pad_to_multiple  # noqa: E402
from dqsearch.latency import LatencyTable  # noqa: E402

SIDES = {"encoder": ("g_a", "h_a"), "decoder": ("h_s", "g_s")}
MIXED = {  # benchmarks/deploy_pipeline.py's profile: g_a.0 at 10 bits (int16), the rest 6/8
    "mixed": {"g_a.0": 10, "g_a.2": 6, "g_a.4": 8, "g_a.6": 6, "h_a.0": 8, "h_a.2": 6, "h_a.4": 8,
              "h_s.0": 8, "h_s.2": 6, "h_s.4": 8, "g_s.0": 6, "g_s.2": 8, "g_s.4": 6, "g_s.6": 8},
    # 10-bit layers inside the decoder: g_s.2 in int16 next to int8 sub-pixel neighbours, h_s.2
    "mixed-decoder10": {"g_a.0": 8, "g_a.2": 8, "g_a.4": 6, "g_a.6": 8, "h_a.0": 8, "h_a.2": 8, "h_a.4": 8,
                        "h_s.0": 8, "h_s.2": 10, "h_s.4": 8, "g_s.0": 8, "g_s.2": 10, "g_s.4": 6, "g_s.6": 8},
}


def side_prediction(table: LatencyTable, profile: dict, transforms: tuple[str, ...]) -> dict:
    fixed_by = table.metadata["context"]["fixed_ms_by_transform"]
    mine = [n for n in table.layer_names if n.split(".")[0] in transforms]
    layers = sum(table.time(n, int(profile[n])) for n in mine)
    trans = 0.0
    for t in table.transitions:
        if t.src in mine and t.dst in mine:
            a, b = table.container(int(profile[t.src])), table.container(int(profile[t.dst]))
            if a != b:
                trans += t.cost.get(f"{a}>{b}", 0.0)
    fixed = sum(fixed_by[t] for t in transforms)
    return {"total_ms": layers + trans + fixed, "layers_ms": layers, "transitions_ms": trans,
            "fixed_ms": fixed}


def op_types(graph: onnx.ModelProto) -> dict[str, int]:
    """Node op types and counts, Identity left out: the exporter inserts one where two constants
    are equal (a freshly initialised model's GDNs), and ONNX Runtime removes them all."""
    ops = collections.Counter(n.op_type for n in graph.graph.node if n.op_type != "Identity")
    return dict(sorted(ops.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="a 768x512 image (Kodak)")
    ap.add_argument("--table", required=True, action="append",
                    help="an ort-cpu table (one thread) to check; repeat for several (its "
                         "metadata.graph.hyper says which decoder it predicts: integer h_s, the "
                         "default export, or the ONNX h_s)")
    ap.add_argument("--work", default="/tmp/dqsearch-table-vs-deployed")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    from dqsearch_ort.backend import OrtBackend
    from dqsearch_ort.deployment import session

    from dqsearch.deploy.artifact import Options, export_model
    from dqsearch.deploy.crosscheck import ptq_checkpoint
    from dqsearch.models import build_model, load_checkpoint, resolve_checkpoint

    torch.set_num_threads(1)
    tables = {Path(t).name: LatencyTable.load(t) for t in args.table}
    x = pad_to_multiple(load_image(args.image).unsqueeze(0), PAD_MULTIPLE)[0]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    specs = {"fp32": (resolve_checkpoint("embedded:3"), Options(hyper="float"), None),
             "int8": (ptq_checkpoint(work / "ptq8.pt"), Options(), None)}
    dq = ptq_checkpoint(work / "dq6810.pt", candidates=(6, 8, 10))
    for name in MIXED:
        specs[name] = (dq, Options(), MIXED[name])

    # the graphs the backend times (its table's model: random weights, as `dqsearch profile --model`)
    backend = OrtBackend("ort-cpu")
    table_model = build_model("bmshj2018-hyperprior", N=64, M=96)
    shape = f"{x.shape[-1]}x{x.shape[-2]}"

    variants, info = {}, {}
    for name, (ckpt, opts, forced) in specs.items():
        t0 = time.perf_counter()
        store = export_model(ckpt, work / name, options=opts, force=True)
        ck = load_checkpoint(ckpt)
        names = store.layer_names
        profile = forced or {e["name"]: max(e["bits"]) for e in store.manifest["layers"]}
        art, _ = store.profile(tuple(profile[n] for n in names))
        if not names:  # an FP32 checkpoint: no quantized layers, every conv at 32 bits
            profile = dict.fromkeys(next(iter(tables.values())).layer_names, 32)
        sessions = {t: session(art.path(f"{t}.onnx"), 1) for t in ("g_a", "h_a", "h_s", "g_s")}
        feeds = inputs(ck.model.eval(), x, profile)
        hyper = art.integer_hyper() if (art.folder / "h_s_int.npz").is_file() else None
        same = {}
        for t in sessions:
            deployed = op_types(onnx.load(str(art.path(f"{t}.onnx"))))
            profiled = op_types(backend.deployed_graph(table_model, t, profile, shape))
            same[t] = {"same_op_types": deployed == profiled, "deployed": deployed,
                       **({} if deployed == profiled else {"profiled": profiled})}
        variants[name] = (sessions, feeds, hyper)
        info[name] = {"profile": profile, "decisions": art.info["decisions"], "graphs": same,
                      "build_seconds": time.perf_counter() - t0}
        print(name, {t: v["same_op_types"] for t, v in same.items()}, flush=True)

    clock = time.thread_time
    runs = {n: {"encoder": [], "decoder": [], "decoder_integer_h_s": []} for n in variants}

    def once(n: str, record: bool) -> None:
        sessions, feeds, hyper = variants[n]
        for side, ts in SIDES.items():
            t0 = clock()
            for t in ts:
                sessions[t].run(None, {"x": feeds[t]})
            if record:
                runs[n][side].append((clock() - t0) * 1e3)
        if hyper is not None:
            t0 = clock()
            hyper.indexes(feeds["h_s"])
            sessions["g_s"].run(None, {"x": feeds["g_s"]})
            if record:
                runs[n]["decoder_integer_h_s"].append((clock() - t0) * 1e3)

    load = [os.getloadavg()]
    for _ in range(args.warmup):
        for n in variants:
            once(n, False)
    for _ in range(args.rounds):
        for n in variants:
            once(n, True)
    load.append(os.getloadavg())

    results = {}
    for n in variants:
        row = {**info[n], "measured": {}}
        for side, samples in runs[n].items():
            if samples:
                row["measured"][side] = {"median_ms": statistics.median(samples), "samples_ms": samples}
        for label, table in tables.items():
            # a table with the integer h_s predicts the default export's decoder, else the ONNX h_s's
            hyper = (table.metadata.get("graph") or {}).get("hyper", "float")
            decoder = "decoder_integer_h_s" if hyper == "integer" else "decoder"
            for side, measured_as in (("encoder", "encoder"), ("decoder", decoder)):
                if measured_as not in row["measured"]:
                    continue
                med = row["measured"][measured_as]["median_ms"]
                pred = side_prediction(table, info[n]["profile"], SIDES[side])
                row.setdefault("checks", []).append({
                    "table": label, "side": side, "measured_as": measured_as, "measured_ms": med,
                    "predicted_ms": pred["total_ms"], "predicted_parts_ms": pred,
                    "error": pred["total_ms"] / med - 1})
        results[n] = row
        print(n, [f"{c['table']} {c['measured_as']}: measured {c['measured_ms']:.1f} predicted "
                  f"{c['predicted_ms']:.1f} ({c['error']:+.1%})" for c in row.get("checks", [])], flush=True)
    write_json(args.output, {
        "machine": {"cpu": cpu_model(), "cpu_id": cpu_signature(), "cores": os.cpu_count(),
                    "load_average_before_after": load},
        "threads": 1, "clock": "thread CPU time", "rounds": args.rounds, "image": args.image,
        "input": list(x.shape[-2:]),
        "tables": {k: {"path": p, "graph": t.metadata.get("graph")}
                   for (k, t), p in zip(tables.items(), args.table, strict=True)},
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M"), "variants": results,
    })


if __name__ == "__main__":
    main()
