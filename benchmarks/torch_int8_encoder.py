"""The encoder (g_a + h_a) of the x86-int8 deployment against ONNX Runtime (issue 17, the encoder side).

The counterpart of `torch_int8_decoder.py`. g_a and h_a of an 8-bit model exactly as
`dqsearch export --backend x86-int8` deploys them (`x86_module`: the plugin's program builder and
module, `backends/x86int8`): oneDNN int8 convolutions (`torch.ops.onednn.qconv_pointwise`, the
kernels behind PyTorch's x86 quantized engine) on plain channels-last uint8 tensors, int8 GDN
between them (Γx² an int8 1×1 convolution, the element-wise parts uint8 → uint8 kernels generated
by torch.compile), the image quantized in one pass, h_a in int8 on |y| (quantized in one pass) with
ReLU and the next input quantizer fused into each convolution. The building blocks that were
prototyped here (`Int8Conv`, the kernels, the int8 GDN, the malloc policy) now live in the plugin
(`dqsearch_x86.onednn`, `.kernels`, `.transform`, `.memory`); the prototype on PyTorch quantized
modules that used to be timed beside them is gone (the committed JSONs before this change hold it).

Timed interleaved with ONNX Runtime's FP32 and int8 transforms and the eager fallback (no C++
compiler), thread CPU and wall time. Quality over Kodak through the codec's own forward (entropy
bottleneck, h_s, gaussian conditional, g_s of the fake-quantized model): y and z from the int8
encoder against the fake-quantized g_a and h_a, ΔPSNR and Δbpp (y + z) per image.

    python benchmarks/torch_int8_encoder.py --checkpoint /work/wt17-runs/q3-dpa8-tensor-out-g_s-s0.pt \\
        --rounds 15 -o benchmarks/results/torch_int8_encoder_x86_plugin.json
    python benchmarks/torch_int8_encoder.py --malloc default ...   # glibc's own malloc policy
    python benchmarks/torch_int8_encoder.py --profile --rounds 15   # per-layer segments of the encoder
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from dqsearch_ort.deployment import session, transform_graph
from dqsearch_x86.memory import keep_freed_memory

from dqsearch.atomic import write_json
from dqsearch.backends import cpu_model
from dqsearch.codec import PAD_MULTIPLE
from dqsearch.data import crop_padding, list_images, load_image, pad_to_multiple
from dqsearch.deploy.calibrate import calibration_images
from dqsearch.evaluate import psnr
from dqsearch.models import load_checkpoint, resolve_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from torch_int8_decoder import eight_bit_model, timed, x86_module  # noqa: E402


class Encoder:
    """The deployment's encoder transforms: x → (y, z) with z = h_a(|y|) (the runtime's order)."""

    def __init__(self, g_a: torch.nn.Module, h_a: torch.nn.Module) -> None:
        self.g_a, self.h_a = g_a, h_a

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.g_a(x)
        return y, self.h_a(y)


@torch.no_grad()
def codec_forward(model: torch.nn.Module, img: torch.Tensor, xp: torch.Tensor, pad, y: torch.Tensor,
                  z: torch.Tensor) -> dict[str, float]:
    """The codec's forward (as CompressAI's ScaleHyperprior.forward, eval mode) from a given y and
    z: PSNR of g_s(ŷ) against `img` and the rate of ŷ and ẑ in bits per pixel."""
    pixels = img.shape[-2] * img.shape[-1]
    z_hat, z_lk = model.entropy_bottleneck(z.contiguous())
    y_hat, y_lk = model.gaussian_conditional(y.contiguous(), model.h_s(z_hat))
    x_hat = crop_padding(model.g_s(y_hat), pad).clamp(0, 1)
    bits_y, bits_z = float(-torch.log2(y_lk).sum()), float(-torch.log2(z_lk).sum())
    return {"psnr": psnr(img, x_hat), "bpp": (bits_y + bits_z) / pixels, "bpp_z": bits_z / pixels}


def profile(enc: Encoder, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median thread CPU ms of each layer segment of g_a and h_a (`X86Transform.segments`: a layer's
    convolution up to the next one's, its GDN or requantization included)."""
    times: dict[str, list[float]] = {}
    for r in range(rounds + 3):
        y = enc.g_a(x)
        for name, mod, inp in (("g_a", enc.g_a, x), ("h_a", enc.h_a, y)):
            segs = mod.segments(inp, time.thread_time)
            labels = ["head (input quantizer)"] + [f"{e.name} ({e.kind}, {e.act})" for e in mod.layers]
            for label, v in zip(labels, segs, strict=False):
                if r >= 3:
                    times.setdefault(f"{name} {label}", []).append(1000 * v)
    out = {k: statistics.median(v) for k, v in times.items()}
    for k, v in out.items():
        print(f"  {k:48s} {v:7.3f} ms")
    print(f"  {'sum of stages':48s} {sum(out.values()):7.3f} ms   load {os.getloadavg()}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="fixed 8-bit checkpoint (default: embedded:3 calibrated to 8 bits)")
    ap.add_argument("--image", default="../shared/data/kodak/kodim01.png", help="the timed image")
    ap.add_argument("--kodak", default="../shared/data/kodak", help="images for the quality check")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch and ONNX Runtime intra-op threads")
    ap.add_argument("--profile", action="store_true", help="only the per-stage profile of the int8 encoder")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--malloc", choices=("keep", "default"), default="keep",
                    help="keep: glibc keeps freed memory (what the x86-int8 runtime sets at load unless "
                    "DQSEARCH_X86_MALLOC=default, `dqsearch_x86.memory`); default: glibc's own policy")
    ap.add_argument("-o", "--output", help="JSON (default benchmarks/results/torch_int8_encoder.json, "
                    "with --profile …_profile.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kept = args.malloc == "keep" and keep_freed_memory()
    calib = calibration_images()
    model, _, layers8, layers32, ranges = eight_bit_model(args.checkpoint, calib)
    enc, eager = (Encoder(*(x86_module(model, t, layers8, ranges, calib, c, args.threads)
                            for t in ("g_a", "h_a"))) for c in (True, False))
    x = pad_to_multiple(load_image(args.image).unsqueeze(0), PAD_MULTIPLE)[0]
    if args.profile:
        print(f"x86-int8 encoder per layer segment, {args.image} {tuple(x.shape)}, {args.threads} thread(s), "
              f"malloc keeps freed memory: {kept}, thread CPU ms:")
        write_json(args.output or "benchmarks/results/torch_int8_encoder_profile.json", {
            "benchmark": "torch_int8_encoder --profile", "cpu": cpu_model(), "threads": args.threads,
            "rounds": args.rounds, "timer": "thread CPU time per stage, median over rounds",
            "image": args.image, "checkpoint": args.checkpoint or "embedded:3, PTQ 8 bits",
            "malloc_keeps_freed_memory": kept, "versions": {"torch": torch.__version__},
            "profile_ms": profile(enc, x, args.rounds), "load_average": os.getloadavg()})
        return
    graphs = {"g_a ort fp32": transform_graph(model, "g_a", layers32, "exact", None, False),
              "g_a ort int8": transform_graph(model, "g_a", layers8, "int8", ranges, False),
              "h_a ort fp32": transform_graph(model, "h_a", layers32, "exact", None, False, abs_input=True),
              "h_a ort exact": transform_graph(model, "h_a", layers8, "exact", None, False, abs_input=True)}
    sessions = {k: session(g, args.threads) for k, g in graphs.items()}

    def ort(name: str, t: torch.Tensor) -> np.ndarray:
        return sessions[name].run(None, {"x": t.numpy()})[0]

    per_image = []
    quality = {}
    if not args.skip_quality:
        with torch.no_grad():
            for path in list_images(args.kodak):
                img = load_image(path, warn=False).unsqueeze(0)
                xp, pad = pad_to_multiple(img, PAD_MULTIPLE)
                y_ref = model.g_a(xp)
                y8, z8 = enc(xp)
                y_ort = torch.from_numpy(ort("g_a ort int8", xp))
                z_ort = torch.from_numpy(ort("h_a ort exact", y_ort))
                row = {"image": path.name,
                       "fake-quantized": codec_forward(model, img, xp, pad, y_ref, model.h_a(y_ref.abs())),
                       "ort int8 g_a, exact h_a": codec_forward(model, img, xp, pad, y_ort, z_ort),
                       "x86-int8 g_a + h_a": codec_forward(model, img, xp, pad, y8, z8),
                       "x86-int8 g_a, fake-quantized h_a": codec_forward(model, img, xp, pad, y8,
                                                                         model.h_a(y8.abs()))}
                per_image.append(row)
        for k in [k for k in per_image[0] if k not in ("image", "fake-quantized")]:
            dp = [r[k]["psnr"] - r["fake-quantized"]["psnr"] for r in per_image]
            db = [r[k]["bpp"] / r["fake-quantized"]["bpp"] - 1 for r in per_image]
            quality[k] = {"mean_delta_db": statistics.fmean(dp), "worst_delta_db": min(dp),
                          "mean_bpp_change": statistics.fmean(db), "worst_bpp_change": max(db)}
    with torch.no_grad():
        y = model.g_a(x)
    fp32 = load_checkpoint(resolve_checkpoint("embedded:3")).model.eval()
    fp32 = fp32.to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    runs = {
        "g_a: ort fp32": lambda: ort("g_a ort fp32", x),
        "g_a: torch fp32 channels-last": lambda: fp32.g_a(x_last),
        "g_a: ort int8 (ort-cpu export)": lambda: ort("g_a ort int8", x),
        "g_a: x86-int8 plugin, eager (no compiler)": lambda: eager.g_a(x),
        "g_a: x86-int8 plugin": lambda: enc.g_a(x),
        "h_a: ort fp32": lambda: ort("h_a ort fp32", y),
        "h_a: ort exact (ort-cpu export)": lambda: ort("h_a ort exact", y),
        "h_a: x86-int8 plugin": lambda: enc.h_a(y),
        "encoder: ort fp32 (g_a + h_a)": lambda: (ort("g_a ort fp32", x), ort("h_a ort fp32", y)),
        "encoder: ort int8 export (g_a + h_a)": lambda: (ort("g_a ort int8", x), ort("h_a ort exact", y)),
        "encoder: x86-int8 plugin, eager (g_a + h_a)": lambda: eager(x),
        "encoder: x86-int8 plugin (g_a + h_a)": lambda: enc(x),
    }
    with torch.no_grad():
        ms = timed(runs, args.rounds)
    clock = "cpu_ms" if args.threads == 1 else "wall_ms"
    for k, v in ms.items():
        part = k.split(":")[0]
        base = min(ms[b][clock] for b in ms if b.startswith(part + ":") and "fp32" in b)
        v["speedup_vs_fastest_fp32"] = base / v[clock]
        print(f"{k:48s} {v['cpu_ms']:7.2f} ms cpu {v['wall_ms']:7.2f} ms wall  "
              f"{v['speedup_vs_fastest_fp32']:.2f}x")
    for k, v in quality.items():
        print(f"quality {k}: PSNR {v['mean_delta_db']:+.3f} dB mean, {v['worst_delta_db']:+.3f} worst; "
              f"bpp {v['mean_bpp_change']:+.2%} mean, {v['worst_bpp_change']:+.2%} worst")
    args.output = args.output or "benchmarks/results/torch_int8_encoder.json"
    write_json(args.output, {
        "benchmark": "torch_int8_encoder", "cpu": cpu_model(), "threads": args.threads, "rounds": args.rounds,
        "timer": "thread CPU time and wall time, median over interleaved rounds; speedups on "
                 + ("thread CPU time" if args.threads == 1 else "wall time"),
        "load_average": os.getloadavg(), "image": args.image,
        "checkpoint": args.checkpoint or "embedded:3, PTQ 8 bits", "malloc_keeps_freed_memory": kept,
        "versions": {"torch": torch.__version__},
        "timings": ms, "profile_ms": profile(enc, x, args.rounds) if args.threads == 1 else None,
        "quality_kodak": quality, "per_image": per_image})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
