"""The real pipeline, per stage: `compress/decompress --runtime` (file read, transforms, entropy
parameters, rANS, file write) for FP32, uniform 8-bit and a mixed DynaQuant profile, interleaved.

    python benchmarks/deploy_pipeline.py --image ../shared/data/kodak/kodim01.png \\
        -o benchmarks/results/deploy_pipeline.json

Models (no training; built in --work): the embedded ScaleHyperprior (N=64, M=96, quality 3) in
FP32, exported in its fastest FP32 form (float h_s in ONNX Runtime, ConvTranspose: sub-pixel is
slower in FP32); the same model post-training quantized to 8 bits (int8 g_a/g_s, integer h_s,
sub-pixel g_s); and a DynaQuant model (candidates 6, 8, 10; PTQ, untrained selectors): `mixed`
codes with a fixed mixed profile (MIXED: g_a.0 at 10 bits, the rest alternating 6/8, b̄ ≈ 7.3),
`mixed-selectors` lets the selectors pick the profile per image in PyTorch at the encoder (the
`select` stage; untrained, they pick 6 bits everywhere). Sessions are created
once per variant (the CLI creates them per call: reported separately as `session_seconds`). Each
round runs every variant once, at 1 thread (thread CPU time) and at all cores (wall time).

`--engines ort-cpu x86-int8` (the default: every installed one) exports the quantized variants
once per deployment backend (`int8`, `mixed`, … on ort-cpu; `int8-x86`, `mixed-x86`, … on
x86-int8: PyTorch's x86 int8 engine, `backends/x86int8`); FP32 stays ONNX Runtime's (its fastest
FP32 form). `--checkpoint Q8.pt` adds that fixed checkpoint as `ckpt` (`ckpt-x86`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dqsearch.atomic import write_json
from dqsearch.backends import cpu_model

MIXED = {"g_a.0": 10, "g_a.2": 6, "g_a.4": 8, "g_a.6": 6, "h_a.0": 8, "h_a.2": 6, "h_a.4": 8,
         "h_s.0": 8, "h_s.2": 6, "h_s.4": 8, "g_s.0": 6, "g_s.2": 8, "g_s.4": 6, "g_s.6": 8}


def _dynamic_ptq(path: Path) -> Path:
    from dqsearch.deploy.crosscheck import ptq_checkpoint

    return ptq_checkpoint(path, candidates=(6, 8, 10))


ENGINE_SUFFIX = {"ort-cpu": "", "x86-int8": "-x86"}


def exports(work: Path, image: Path, engines: list[str] | tuple[str, ...] = ("ort-cpu",),
            checkpoint: str | None = None) -> dict[str, tuple[Path, tuple[int, ...] | None]]:
    """name → (export folder, forced bits or None)."""
    from dqsearch.data import load_image, pad_to_multiple
    from dqsearch.deploy.artifact import Options, export_model
    from dqsearch.deploy.crosscheck import ptq_checkpoint
    from dqsearch.models import resolve_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    x = pad_to_multiple(load_image(image).unsqueeze(0), 64)[0]
    specs = [("fp32", "ort-cpu", resolve_checkpoint("embedded:3"),
              Options(arithmetic="exact", hyper="float", subpixel="off"), None)]
    ptq8, dq = ptq_checkpoint(work / "ptq8.pt"), _dynamic_ptq(work / "dq6810.pt")
    for engine in engines:
        sfx = ENGINE_SUFFIX[engine]
        specs += [(f"int8{sfx}", engine, ptq8, Options(subpixel="on"), None),
                  (f"mixed{sfx}", engine, dq, Options(subpixel="on"), [x])]
        if checkpoint:
            specs.append((f"ckpt{sfx}", engine, Path(checkpoint), Options(subpixel="on"), None))
    out = {}
    for name, engine, ckpt, opts, images in specs:
        store = export_model(ckpt, work / name, engine, options=opts, images=images, force=True)
        out[name] = (work / name, None)
        if name.startswith("mixed"):
            bits = tuple(MIXED[n] for n in store.layer_names)
            store.profile(bits)
            out[name] = (work / name, bits)
            out[name.replace("mixed", "mixed-selectors")] = (work / name, None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True)
    ap.add_argument("--work", default="/tmp/dqsearch-pipeline")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--engines", nargs="+", help="deployment backends (default: ort-cpu and x86-int8 "
                    "where installed)")
    ap.add_argument("--checkpoint", help="also a fixed quantized checkpoint (e.g. made for int8)")
    ap.add_argument("--threads", nargs="+", type=int, help="thread counts (default: 1 and all cores)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    from dqsearch.deploy.files import compress_with, decompress_with
    from dqsearch.deploy.runtime import Runtime
    from dqsearch.deploy.targets import deploy_targets

    torch.set_num_threads(1)
    engines = args.engines or [e for e in ENGINE_SUFFIX if e in deploy_targets()]
    folders = exports(Path(args.work), Path(args.image), engines, args.checkpoint)
    all_cores = os.cpu_count() or 1
    runtimes, session_seconds = {}, {}
    forced = {}
    for name, (folder, bits) in folders.items():
        forced[name] = bits
        for threads in dict.fromkeys(args.threads or (1, all_cores)):
            runtimes[(name, threads)] = Runtime(folder, threads)
    samples: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.warmup + args.rounds):
            for (name, threads), rt in runtimes.items():
                stream, png = Path(tmp) / f"{name}.dqs", Path(tmp) / f"{name}.png"
                enc, ei = compress_with(rt, args.image, stream, forced[name])
                _, header, di = decompress_with(rt, stream, png)
                if r == 0:
                    session_seconds[f"{name}@{threads}"] = sum(
                        e.get("session_seconds", 0.0) for e in rt.events)
                    samples[(name, threads)] = {"bits": list(header.profile_bits), "bpp": enc.bpp,
                                                "arithmetic": header.hyper, "encode": [], "decode": []}
                if r < args.warmup:
                    continue
                for side, info in (("encode", ei), ("decode", di)):
                    st = info["stages"]
                    samples[(name, threads)][side].append({"wall": st.wall, "cpu": st.cpu})
    results: dict = {}
    for (name, threads), s in samples.items():
        clock = "cpu" if threads == 1 else "wall"
        row = {"bits": s["bits"], "bpp": s["bpp"], "arithmetic": s["arithmetic"], "clock": clock}
        for side in ("encode", "decode"):
            stages = sorted({k for run in s[side] for k in run[clock]})
            med = {k: 1e3 * statistics.median(run[clock].get(k, 0.0) for run in s[side]) for k in stages}
            walls = {k: 1e3 * statistics.median(run["wall"].get(k, 0.0) for run in s[side]) for k in stages}
            total = 1e3 * statistics.median(sum(run[clock].values()) for run in s[side])
            total_wall = 1e3 * statistics.median(sum(run["wall"].values()) for run in s[side])
            row[side] = {"stages_ms": med, "stages_wall_ms": walls, "total_ms": total,
                         "total_wall_ms": total_wall}
        results[f"{name}@{threads}"] = row
    for key, row in results.items():
        base = results["fp32@" + key.split("@")[1]]
        for side in ("encode", "decode"):
            row[side]["speedup_vs_fp32"] = base[side]["total_ms"] / row[side]["total_ms"]
            tr = ("g_a", "h_a") if side == "encode" else ("h_s", "g_s")
            t_self = sum(row[side]["stages_ms"].get(k, 0.0) for k in tr)
            t_base = sum(base[side]["stages_ms"].get(k, 0.0) for k in tr)
            row[side]["transforms_speedup_vs_fp32"] = t_base / t_self
    write_json(args.output, {
        "machine": {"cpu": cpu_model(), "cores": all_cores, "load_average": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M"), "image": args.image, "rounds": args.rounds,
        "command": "python benchmarks/deploy_pipeline.py " + " ".join(sys.argv[1:]), "engines": engines,
        "session_seconds": session_seconds, "variants": results})
    for key, row in results.items():
        e, d = row["encode"], row["decode"]
        print(f"{key:10s} enc {e['total_ms']:7.1f} ms ({e['speedup_vs_fp32']:.2f}x; transforms "
              f"{e['transforms_speedup_vs_fp32']:.2f}x)  dec {d['total_ms']:7.1f} ms "
              f"({d['speedup_vs_fp32']:.2f}x; transforms {d['transforms_speedup_vs_fp32']:.2f}x)  "
              f"{row['bpp']:.4f} bpp {row['arithmetic']}")
        for side in ("encode", "decode"):
            print("   ", side, {k: round(v, 1) for k, v in row[side]["stages_ms"].items()})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
