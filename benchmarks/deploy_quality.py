"""Quality of the codec through exported artifacts against the PyTorch fake-quantized codec, per image.

    python benchmarks/deploy_quality.py --checkpoint Q8.pt --dataset ../shared/data/kodak \\
        --exports int8=DIR1 exact=DIR2 integer=DIR3 -o benchmarks/results/deploy_quality.json

Exports of any deployment backend (ort-cpu, x86-int8: `dqsearch export --backend NAME`).

For each image: the PyTorch codec's file and PSNR; that same file decoded through each export (bpp
is the file's, so identical by construction; the test is that it decodes and how far the PSNR
moves); and each export's own encode + decode round trip (its bpp can differ: an int8 g_a rounds
a few latents differently). The file fed to every export is PyTorch's default stream (integer
entropy parameters: since bitstream v2 every export decodes it, one made with --hyper float
builds the integer h_s from its source checkpoint); an export's own encode is compared with the
PyTorch codec of the same arithmetic (float:torch for --hyper float exports).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dqsearch.atomic import write_json
from dqsearch.codec import BitstreamError, decode, encode
from dqsearch.data import list_images, load_image
from dqsearch.deploy import torch_codec
from dqsearch.deploy.runtime import Runtime
from dqsearch.evaluate import psnr
from dqsearch.models import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--exports", nargs="+", required=True, help="NAME=DIR of `dqsearch export` folders")
    ap.add_argument("--limit", type=int)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint)
    model = ck.model.eval()
    runtimes = {k: Runtime(v) for k, v in (e.split("=", 1) for e in args.exports)}
    hypers = sorted({"integer", *(rt.manifest["options"]["hyper"] for rt in runtimes.values())})
    codecs = {"float": (lambda m, i, x: encode(m, i, x, hyper="float:torch"), decode),
              "integer": (torch_codec.encode, torch_codec.decode)}
    rows = []
    for path in list_images(args.dataset)[: args.limit]:
        x = load_image(path).unsqueeze(0)
        row, files, refs = {"image": path.name}, {}, {}
        for hyper in hypers:
            enc_fn, dec_fn = codecs[hyper]
            enc = enc_fn(model, ck.model_id, x)
            ref, _ = dec_fn(model, ck.model_id, enc.data)
            files[hyper], refs[hyper] = enc.data, ref
            row |= {f"bpp_torch_{hyper}": enc.bpp, f"psnr_torch_{hyper}": psnr(x, ref)}
        for name, rt in runtimes.items():
            try:
                x_hat, _, _ = rt.decode(files["integer"])
                row[f"{name}:psnr_torch_file"] = psnr(x, x_hat)
                # the deployment's stated tolerance (`Deployment.min_psnr_db`) is on this one
                row[f"{name}:psnr_vs_torch_decode"] = psnr(refs["integer"], x_hat)
            except BitstreamError as e:
                row[f"{name}:psnr_torch_file"] = None
                row[f"{name}:error"] = str(e)
            own, _ = rt.encode(x)
            x_own, _, _ = rt.decode(own.data)
            row[f"{name}:bpp_own"] = own.bpp
            row[f"{name}:psnr_own"] = psnr(x, x_own)
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    keys = [k for k in rows[0] if k != "image" and not k.endswith(":error")]
    means = {k: statistics.fmean(r[k] for r in rows if r.get(k) is not None) for k in keys}
    deltas = {}
    for name, rt in runtimes.items():
        h = rt.manifest["options"]["hyper"]
        d = [r[f"{name}:psnr_torch_file"] - r["psnr_torch_integer"] for r in rows
             if r[f"{name}:psnr_torch_file"] is not None]
        deltas[name] = {"hyper": h, "torch_file_mean_db": statistics.fmean(d), "torch_file_worst_db": min(d),
                        "torch_file_broken (> 1 dB below)": sum(v < -1 for v in d),
                        "decode_errors": sum(r[f"{name}:psnr_torch_file"] is None for r in rows),
                        "vs_torch_decode_min_db": min((r[f"{name}:psnr_vs_torch_decode"] for r in rows
                                                       if r.get(f"{name}:psnr_vs_torch_decode") is not None),
                                                      default=None),
                        "own_bpp_vs_torch_mean": means[f"{name}:bpp_own"] - means[f"bpp_torch_{h}"],
                        "own_psnr_vs_torch_mean_db": means[f"{name}:psnr_own"] - means[f"psnr_torch_{h}"]}
    write_json(args.output, {"checkpoint": args.checkpoint, "dataset": args.dataset, "images": len(rows),
                             "date": time.strftime("%Y-%m-%d %H:%M"), "exports": args.exports,
                             "means": means, "deltas": deltas, "rows": rows})
    for name, d in deltas.items():
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
