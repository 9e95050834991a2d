"""Every engine's stream decoded by every other engine, on a folder of images (Kodak: all 24).

    python benchmarks/cross_engine.py --dataset ../shared/data/kodak -o benchmarks/results/cross_engine.json

The model is the embedded ScaleHyperprior (N=64, M=96) post-training quantized to 8 bits
(`dqsearch.deploy.crosscheck.ptq_checkpoint`: calibrated on two bundled sample images, no
training), exported to each deployment engine (`--engines`, default every installed one: ort-cpu,
x86-int8) with the int8 g_a/g_s and the integer h_s, and once more with the float h_s. For each
image and each encoder (PyTorch default = integer entropy parameters; PyTorch's float h_s; each
engine with the integer and the float h_s) every other engine must decode to the latents of the
encoder's own engine or refuse with one line naming that engine.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from dqsearch.atomic import write_json
from dqsearch.data import list_images, load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--work", default="/tmp/dqsearch-cross-engine", help="checkpoint and export folder")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--engines", nargs="+", help="deployment backends (default: every installed one)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from dqsearch.deploy.artifact import Options, export_model
    from dqsearch.deploy.crosscheck import cross_check, ptq_checkpoint
    from dqsearch.deploy.runtime import Runtime
    from dqsearch.deploy.targets import deploy_targets
    from dqsearch.models import load_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = ptq_checkpoint(work / "ptq8.pt")
    engines = args.engines or [e for e in ("ort-cpu", "x86-int8") if e in deploy_targets()]
    runtimes, floats = {}, {}
    for e in engines:
        export_model(ckpt, work / e, e, options=Options(subpixel="on"), force=True)
        export_model(ckpt, work / f"{e}-float", e, options=Options(subpixel="on", hyper="float"), force=True)
        runtimes[e], floats[e] = Runtime(work / e), Runtime(work / f"{e}-float")
    ck = load_checkpoint(ckpt)
    rows, t0 = [], time.perf_counter()
    for path in list_images(args.dataset)[: args.limit]:
        x = load_image(path).unsqueeze(0)
        rows.append({"image": path.name, "size": list(x.shape[-2:]),
                     **cross_check(ck.model.eval(), ck.model_id, runtimes, x, floats)})
        print(path.name, {k: v for k, v in rows[-1].items() if isinstance(v, dict)}, flush=True)
    summary: dict = {}
    for row in rows:
        for enc, res in row.items():
            if not isinstance(res, dict):
                continue
            for dec, outcome in res.items():
                if dec == "bytes":
                    continue
                key = f"{enc} -> {dec}"
                kind = outcome.split(":")[0].split(" (")[0]
                summary.setdefault(key, {}).setdefault(kind, 0)
                summary[key][kind] += 1
    write_json(args.output, {
        "what": "latents decoded by each engine from each engine's stream (same / different / refused)",
        "command": "python benchmarks/cross_engine.py --dataset " + args.dataset, "engines": engines,
        "machine": {"cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")},
        "model": "embedded:3 PTQ 8-bit (ScaleHyperprior N=64 M=96), int8 exports, integer and float h_s",
        "seconds": time.perf_counter() - t0, "summary": summary, "images": rows})
    for key, counts in summary.items():
        print(f"{key}: {counts}")


if __name__ == "__main__":
    main()
