"""Measured speed of deployed models: FP32 vs exported 8-bit vs a mixed-precision profile, encoder
(g_a + h_a) and decoder (h_s + g_s) separately, side by side in one run, one machine, same threads.

    python benchmarks/deploy_speed.py --checkpoint Q8.pt --mixed DQ.pt \\
        --image ../shared/data/kodak/kodim01.png -o benchmarks/results/deploy_speed.json

Variants alternate inside every round (so all see the same machine state) and each is timed with
the thread CPU clock at one thread (wall clock otherwise). The FP32 baseline is the same network with
every layer unquantized, in its original (ConvTranspose) form and in sub-pixel form. The decoder
is timed with h_s in ONNX Runtime (float, exact QDQ) and, for quantized variants, with the
integer-only h_s that exports use by default (`decoder_integer_h_s`). The op-type
breakdown of the decoders (ONNX Runtime's profiler) shows what bounds the speedup. Sizes: packed
weights at their bit-widths vs the paper's FP32 size × b̄/32. `--backend NAME` must name a backend with a
deployment part (dqsearch.deploy.targets); the timed graphs are ort-cpu's (dqsearch_ort.deployment).

`--engines x86-int8` (the default where the plugin is installed) also exports every quantized
variant with `dqsearch export --backend x86-int8` into a temporary folder and times the artifacts
the runtime loads (`Runtime.loaded(...).run`, the integer h_s of the export), interleaved with the
ONNX Runtime variants in every round; variant names get the suffix `@x86-int8`. Their per-op
profile (torch.profiler, `op_breakdown_ms`) shows what bounds the x86 decoder and encoder.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from dqsearch_ort.deployment import session, timer, transform_graph

from dqsearch.atomic import write_json
from dqsearch.backends import cpu_model
from dqsearch.codec import PAD_MULTIPLE, _profile_for
from dqsearch.data import load_image, pad_to_multiple
from dqsearch.deploy.artifact import CODECS, Options, export_model
from dqsearch.deploy.calibrate import calibration_images, output_ranges
from dqsearch.deploy.runtime import Runtime
from dqsearch.deploy.targets import deploy_targets, deployment_for
from dqsearch.integer.int_hyper import IntegerHyperSynthesis
from dqsearch.integer.packing import write_packed
from dqsearch.integer.params import model_layers
from dqsearch.models import load_checkpoint
from dqsearch.quant.wrap import average_bits, quantized_layers, set_profile, weight_bytes

SIDES = {"encoder": ("g_a", "h_a"), "decoder": ("h_s", "g_s")}


def graphs(model, arch: str, profile: dict, arithmetic: str, subpixel: bool, calib,
           weights: str = "exact") -> dict:
    """The four transforms of one variant (h_a/h_s exact, as exported; g_a/g_s per `arithmetic`)."""
    fp32 = all(b == 32 for b in profile.values())
    layers = model_layers(model, profile, allow_fp32=fp32)
    ranges = output_ranges(model, profile, calib) if arithmetic == "int8" and not fp32 else None
    out = {}
    for t in ("g_a", "h_a", "h_s", "g_s"):
        arith = arithmetic if t in ("g_a", "g_s") else "exact"
        out[t] = transform_graph(model, t, layers, arith, ranges, subpixel and t in ("h_s", "g_s"),
                                 abs_input=t == "h_a" and CODECS[arch]["abs_h_a"], int8_weights=weights)
    return out


def inputs(model, x: torch.Tensor, profile: dict) -> dict[str, np.ndarray]:
    """Real activations for each transform: the fake-quantized model's own intermediate tensors."""
    if quantized_layers(model):
        set_profile(model, profile, allow_fp32=True)
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y.abs())
        z_hat = torch.round(z)
        y_hat = torch.round(y)
    if quantized_layers(model):
        set_profile(model, None)
    return {"g_a": x.numpy(), "h_a": y.numpy(), "h_s": z_hat.numpy(), "g_s": y_hat.numpy()}


class DeployedRunner:
    """One quantized variant exported to a deployment backend, run as the runtime runs it: the
    loaded artifacts of its profile and the export's integer h_s (same calls as `Runtime.decode`)."""

    def __init__(self, checkpoint: str, engine: str, bits: tuple[int, ...], folder: str, threads: int):
        export_model(checkpoint, folder, engine, options=Options(), profiles=[bits], force=True)
        self.runtime = Runtime(folder, threads)
        self.lo = self.runtime.loaded(bits, ("g_a", "h_a", "h_s", "g_s", "h_s_int"))
        self.hyper = self.runtime._integer_hyper(self.lo)

    def run(self, transform: str, x: np.ndarray) -> None:
        if transform == "h_s_int":
            self.hyper.indexes(x)
        else:
            self.lo.run(transform, x)


def torch_op_breakdown(runner: DeployedRunner, feeds: dict, transforms: tuple[str, ...]) -> dict[str, float]:
    """Mean ms per op type over 3 runs of `transforms` in sequence (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    for t in transforms:
        runner.run(t, feeds[t.removesuffix("_int")])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            for t in transforms:
                runner.run(t, feeds[t.removesuffix("_int")])
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return {e.key: round(e.self_cpu_time_total / 1e3 / 3, 3) for e in ops if e.self_cpu_time_total > 30}


def op_breakdown(graph, feeds, threads: int) -> dict[str, float]:
    from dqsearch_ort.session import SessionConfig, profile_runs

    clock = "thread" if threads == 1 else "wall"
    pr = profile_runs(SessionConfig(threads=threads), graph, feeds, 2, 3, clock)
    tot: collections.Counter = collections.Counter()
    for run in pr.nodes:
        for n, v in run.items():
            tot[pr.op_types[n]] += v / len(pr.nodes)
    return {k: round(v, 2) for k, v in tot.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="fixed 8-bit QAT checkpoint (its FP32 twin is the baseline)")
    ap.add_argument("--mixed",
                    help="mixed-precision checkpoint (dynamic: the selectors' profile for --image)")
    ap.add_argument("--mixed-bits", help="force this profile on --mixed (comma-separated, layer order)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="another fixed-precision checkpoint timed as its default int8 export, as "
                         "variant NAME (e.g. a per-tensor twin of --checkpoint); repeatable")
    ap.add_argument("--image", required=True, help="a 768x512 image (Kodak)")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--engines", nargs="*", default=None,
                    help="deployment backends whose exports are timed too "
                         "(default: x86-int8 where installed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    deployment_for(args.backend)
    torch.set_num_threads(args.threads)
    x = pad_to_multiple(load_image(args.image).unsqueeze(0), PAD_MULTIPLE)[0]
    calib = calibration_images()

    ck = load_checkpoint(args.checkpoint)
    model = ck.model.eval()
    p8 = {n: m.candidates[0] for n, m in quantized_layers(model).items()}
    p32 = dict.fromkeys(p8, 32)
    variants = {
        "fp32": (model, ck, p32, "exact", False, "exact"),
        "fp32-subpixel": (model, ck, p32, "exact", True, "exact"),
        "int8": (model, ck, p8, "int8", True, "exact"),
        "int8-symmetric": (model, ck, p8, "int8", True, "symmetric"),
        "int8-deconv": (model, ck, p8, "int8", False, "exact"),
        "exact8": (model, ck, p8, "exact", True, "exact"),
    }
    if args.mixed:
        mk = load_checkpoint(args.mixed)
        with torch.no_grad():
            pm = _profile_for(mk.model.eval(), x)
        if args.mixed_bits:  # a forced profile (comma-separated, in layer order) instead
            pm = dict(zip(pm, (int(b) for b in args.mixed_bits.split(",")), strict=True))
        variants["mixed"] = (mk.model, mk, pm, "int8", True, "exact")

    for spec in args.also:
        name, _, path = spec.partition("=")
        if not path or name in variants:
            ap.error(f"--also needs NAME=CHECKPOINT with a new NAME, got {spec!r}")
        ak = load_checkpoint(path)
        pa = {n: m.candidates[0] for n, m in quantized_layers(ak.model).items()}
        variants[name] = (ak.model.eval(), ak, pa, "int8", True, "exact")

    built, feeds, info = {}, {}, {}
    for name, (m, c, prof, arith, sub, weights) in variants.items():
        t0 = time.perf_counter()
        built[name] = graphs(m, c.architecture, prof, arith, sub, calib, weights)
        feeds[name] = inputs(m, x, prof)
        info[name] = {"checkpoint": str(c.path), "arithmetic": arith, "subpixel": sub,
                      "int8_weights": weights,
                      "profile": prof, "build_seconds": time.perf_counter() - t0,
                      "avg_bits": average_bits(m, prof) if quantized_layers(m) else 32.0,
                      "avg_bits_weighted": average_bits(m, prof, weighted=True)}
        if not all(b == 32 for b in prof.values()):
            with tempfile.TemporaryDirectory() as tmp:
                packed = write_packed(model_layers(m, prof), tmp)
            wb = weight_bytes(m, prof)
            conv_names = tuple(n + "." for n in prof)
            other = sum(p.numel() for n, p in m.named_parameters() if not n.startswith(conv_names)) * 4
            info[name]["size_bytes"] = {"packed_model": packed["file"] + other,
                                        "packed_conv_weights": packed["weights"],
                                        "fp32_model": wb["fp32"], "paper_fp32_x_bbar_over_32": wb["paper"]}

    sessions = {n: {t: session(g, args.threads) for t, g in gs.items()} for n, gs in built.items()}
    engines = args.engines
    if engines is None:
        engines = [e for e in ("x86-int8",) if e in deploy_targets()]
    tmp = tempfile.TemporaryDirectory()
    for engine in engines:  # the exports of each quantized int8 variant, run as the runtime runs them
        for n, (m, c, prof, arith, _s, weights) in list(variants.items()):
            if arith != "int8" or weights != "exact" or not _s:
                continue
            name = f"{n}@{engine}"
            layer_bits = tuple(int(prof[k]) for k in quantized_layers(m))
            t0 = time.perf_counter()
            runner = DeployedRunner(str(c.path), engine, layer_bits, f"{tmp.name}/{name}", args.threads)
            sessions[name] = {t: runner for t in ("g_a", "h_a", "h_s", "g_s")}
            feeds[name] = feeds[n]
            info[name] = {**info[n], "engine": engine, "export_seconds": time.perf_counter() - t0}
            variants[name] = variants[n]
    integer_h_s = {}  # the default deployment computes the entropy parameters with integers
    for n, (m, _c, prof, _a, _s, _w) in variants.items():
        if "@" in n:  # a deployed export: its own integer h_s, run by its runner
            integer_h_s[n] = sessions[n]["h_s"]
        elif not all(b == 32 for b in prof.values()):
            hs = [lq for k, lq in model_layers(m, prof).items() if k.startswith("h_s.")]
            integer_h_s[n] = IntegerHyperSynthesis.build(hs, m.gaussian_conditional.scale_table.tolist())
    now = timer(args.threads)
    def run(n: str, t: str) -> None:
        s = sessions[n]["h_s" if t == "h_s_int" else t]
        if isinstance(s, DeployedRunner):
            s.run(t, feeds[n]["h_s" if t == "h_s_int" else t])
        else:
            s.run(None, {"x": feeds[n][t]})

    for _ in range(args.warmup):
        for n, ss in sessions.items():
            for t in ss:
                run(n, t)
    samples = {n: {side: [] for side in (*SIDES, "decoder_integer_h_s")} for n in sessions}
    other = {n: {side: [] for side in (*SIDES, "decoder_integer_h_s")} for n in sessions}
    # the other clock (wall with one thread, thread CPU with more), recorded on the same runs
    then = time.perf_counter if args.threads == 1 else time.thread_time
    for _ in range(args.rounds):
        for n in sessions:
            for side, ts in SIDES.items():
                t0, o0 = now(), then()
                for t in ts:
                    run(n, t)
                samples[n][side].append((now() - t0) * 1e3)
                other[n][side].append((then() - o0) * 1e3)
            if n in integer_h_s:
                t0, o0 = now(), then()
                integer_h_s[n].indexes(feeds[n]["h_s"]) if "@" not in n else run(n, "h_s_int")
                run(n, "g_s")
                samples[n]["decoder_integer_h_s"].append((now() - t0) * 1e3)
                other[n]["decoder_integer_h_s"].append((then() - o0) * 1e3)

    results = {}
    for n in sessions:
        results[n] = {**info[n]}
        for side in (*SIDES, "decoder_integer_h_s"):
            if not samples[n][side]:
                continue
            med = statistics.median(samples[n][side])
            base = statistics.median(samples["fp32"][side.split("_")[0]])
            omed = statistics.median(other[n][side])
            obase = statistics.median(other["fp32"][side.split("_")[0]])
            other_clock = "wall" if args.threads == 1 else "thread_cpu"
            fastest = min(statistics.median(samples[f][side.split("_")[0]])
                          for f in ("fp32", "fp32-subpixel"))
            results[n][side] = {"median_ms": med, "samples_ms": samples[n][side],
                                "speedup_vs_fp32": base / med, "speedup_vs_fastest_fp32": fastest / med,
                                f"{other_clock}_median_ms": omed,
                                f"{other_clock}_speedup_vs_fp32": obase / omed}
    breakdown = {n: {t: op_breakdown(built[n][t], {"x": feeds[n][t]}, args.threads)
                     for t in ("g_a", "g_s")} for n in ("fp32", "int8")}
    for n in sessions:
        if n.startswith("int8@"):
            r = sessions[n]["g_s"]
            breakdown[n] = {
                "decoder (integer h_s + g_s)": torch_op_breakdown(r, feeds[n], ("h_s_int", "g_s")),
                "encoder (g_a + h_a)": torch_op_breakdown(r, feeds[n], ("g_a", "h_a"))}
    tmp.cleanup()
    out = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg()},
        "threads": args.threads, "clock": "thread CPU time" if args.threads == 1 else "wall",
        "rounds": args.rounds, "image": args.image, "input": list(x.shape[-2:]), "backend": args.backend,
        "engines": engines, "x86_malloc": os.environ.get("DQSEARCH_X86_MALLOC", "keep"),
        "command": "python benchmarks/deploy_speed.py " + " ".join(sys.argv[1:]),
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M"), "variants": results, "op_breakdown_ms": breakdown,
    }
    write_json(args.output, out)
    for n, r in results.items():
        di = r.get("decoder_integer_h_s")
        extra = (f"  dec with integer h_s {di['median_ms']:7.1f} ms ({di['speedup_vs_fastest_fp32']:.2f}x "
                 "the fastest FP32)" if di else "")
        print(f"{n:14s} enc {r['encoder']['median_ms']:7.1f} ms ({r['encoder']['speedup_vs_fp32']:.2f}x)  "
              f"dec {r['decoder']['median_ms']:7.1f} ms ({r['decoder']['speedup_vs_fp32']:.2f}x)  "
              f"avg bits {r['avg_bits']:.2f}{extra}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
