"""Command-line interface: a thin command table. Each entry of `COMMANDS` is a `Command` (name,
flags, run) that parses flags and calls one library workflow; multi-word names ("study show",
"latency validate") are levels of sub-commands."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

# Before torch loads OpenMP (commands import it lazily, after this): idle OpenMP workers sleep
# instead of spinning on cores other jobs need (QAT steps took 6-36 s instead of ~0.5 s on a busy
# machine without it). A user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import __version__, cli_backends, cli_deploy, cli_study  # noqa: E402
from .cli_common import (  # noqa: E402
    MODEL_NAMES,
    THREADS_HELP,
    Command,
    RegistryChoices,
    UsageError,
    add_input_arg,
    backend_options,
    input_size,
    int_list,
    transform_list,
)
from .threads import set_torch_threads  # noqa: E402  (imports torch lazily)

__all__ = ["COMMANDS", "MODEL_NAMES", "UsageError", "build_parser", "error_line", "main"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODEL_NAMES,
                   help="CompressAI architecture for a model built from scratch or taken from the zoo "
                        "(default: bmshj2018-hyperprior, workflows.TrainRun's)")
    p.add_argument("--N", type=int, help="channel count N (architecture default otherwise)")
    p.add_argument("--M", type=int, help="latent channel count M (where the architecture has it)")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization (QAT); without --bits or --candidates the model stays FP32")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--bits", type=int, help="fixed bit-width for every layer (DPA, a 'Q-' model)")
    x.add_argument("--candidates", type=int_list,
                   help="candidate bit-widths for the selector, e.g. 6,8,10 (DBWS, a 'DQ-' model)")
    g.add_argument("--quantizer", default="dpa", metavar="NAME",
                   choices=RegistryChoices("dqsearch.quant.quantizer", "QUANTIZERS"),
                   help="a registered quantizer (dqsearch.quant.quantizer.QUANTIZERS): dpa (default): "
                        "learnable s,z (DynaQuant); minmax: static min/max + STE (FPQ); pams: "
                        "learnable clipping")
    g.add_argument("--rounding", default="dgm", choices=["dgm", "ste"])
    g.add_argument("--beta", type=float, default=1.0, help="DGM sharpness β")
    g.add_argument("--no-learn-scale", action="store_true", help="freeze s (ablation)")
    g.add_argument("--no-learn-zero-point", action="store_true", help="freeze z (ablation)")
    g.add_argument("--percentile", type=float, help="calibrate ranges at this percentile, e.g. 99.99")
    g.add_argument("--activation-granularity", default="channel", choices=["channel", "tensor"],
                   help="input-activation quantizers: one learned (s, z) per input channel (DPA, "
                        "default) or one per tensor (what int8 kernels take: the int8 ONNX export "
                        "then quantizes conv inputs exactly as trained); weights stay per channel")
    g.add_argument("--quantize-outputs", type=transform_list, default=(), metavar="TRANSFORMS",
                   help="g_s, g_a or g_a,g_s: learn a per-tensor 8-bit quantizer on each conv output "
                        "of these transforms at <= 8 bits (the uint8 requantization of an int8 kernel, "
                        "trained instead of calibrated at export; with --activation-granularity tensor "
                        "--quantize-outputs g_s the int8 decoder computes the fake-quantized one)")
    g.add_argument("--selector", default="per-layer", choices=["per-layer", "global"])
    g.add_argument("--pin-first", type=int, help="bits of the first layer (32 = FP32)")
    g.add_argument("--pin-last", type=int, help="bits of the last layer (32 = FP32)")
    g.add_argument("--fusion", default="output", choices=["output", "input-mix"],
                   help="DQ training: fuse the quantized branches' outputs (paper, default) or mix "
                        "inputs and weights before one convolution (earlier dqsearch)")
    g.add_argument("--relaxation", default="st", choices=["st", "soft"],
                   help="DQ training: straight-through hard Gumbel one-hot (paper, default) or the "
                        "soft Gumbel sample")
    g.add_argument("--selector-features", default="mean-std", choices=["mean-std", "mean"],
                   help="what the selector reads from each pooled cell")


def policy_from_args(args: argparse.Namespace):
    from .quant.wrap import QuantPolicy

    if args.bits is None and args.candidates is None:
        return None
    common = dict(quantizer=args.quantizer, rounding=args.rounding, beta=args.beta,
                  learn_scale=not args.no_learn_scale, learn_zero_point=not args.no_learn_zero_point,
                  percentile=args.percentile, selector=args.selector, pin_first=args.pin_first,
                  pin_last=args.pin_last, activation_granularity=args.activation_granularity,
                  quantize_outputs=args.quantize_outputs)
    if args.candidates is not None:
        common.update(fusion=args.fusion, relaxation=args.relaxation,
                      selector_features=args.selector_features)
    if args.bits is not None:
        return QuantPolicy.fixed(args.bits, **common)
    return QuantPolicy.dynamic(args.candidates, **common)


# --- commands -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .workflows import LatencyGoal, TrainRun, train_run

    set_torch_threads(args.threads)
    given = [args.latency_table, args.target_latency, args.latency_weight]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise UsageError("the latency term needs --latency-table, --target-latency and --latency-weight")
    latency = None if args.latency_table is None else LatencyGoal(
        args.latency_table, args.target_latency, args.latency_weight, args.latency_form,
        per_image=args.latency_reduce == "image")
    config = {k: getattr(args, k) for k in (
        "lmbda", "metric", "steps", "batch_size", "crop", "lr", "lr_end", "aux_lr", "quant_lr", "selector_lr",
        "gamma", "diversity", "bits_cost", "calibration_images", "checkpoint_every", "seed", "device",
        "compile")
        if getattr(args, k) is not None}
    run = TrainRun(
        output=Path(args.output), data=Path(args.data) if args.data else None, resume=args.resume,
        force=args.force, checkpoint=args.checkpoint, pretrained=args.pretrained, quality=args.quality,
        **({"architecture": args.model} if args.model else {}),
        arch_args={k: v for k, v in (("N", args.N), ("M", args.M)) if v is not None},
        policy=policy_from_args(args), config=config, latency=latency,
        command="dqsearch " + shlex.join(args.argv) if args.record_command else None,
        progress=not args.no_progress)
    last = train_run(run)
    if last is None:
        return 0
    print(f"wrote {run.output}: step {last.get('step')}, bpp {last.get('bpp', 0):.3f}, "
          f"PSNR {last.get('psnr', 0):.2f} dB")
    return 0


def _load(spec: str | None):
    from .models import load_checkpoint, resolve_checkpoint

    return load_checkpoint(resolve_checkpoint(spec))


def cmd_compress(args: argparse.Namespace) -> int:
    if args.runtime:
        return cli_deploy.cmd_compress_runtime(args)
    from .codec import compress_file
    from .quant.wrap import average_bits

    set_torch_threads(args.threads)
    ck = _load(args.checkpoint)
    enc = compress_file(ck.model, ck.model_id, args.image, args.output, _memory(args))
    msg = f"{args.output}: {len(enc.data)} bytes, {enc.bpp:.4f} bpp, {enc.width}x{enc.height}"
    if enc.profile:
        msg += f", average {average_bits(ck.model, enc.profile):.2f} bits"
    print(msg + f", {enc.encode_seconds:.2f} s")
    return 0


def _memory(args: argparse.Namespace) -> int | None:
    from .codec import parse_bytes

    return parse_bytes(args.memory_limit) if args.memory_limit else None


def cmd_decompress(args: argparse.Namespace) -> int:
    if args.runtime:
        return cli_deploy.cmd_decompress_runtime(args)
    from .codec import BitstreamError, check_output, decompress_file, read_stream, unpack
    from .data import save_image
    from .models import find_embedded_by_id, load_checkpoint

    set_torch_threads(args.threads)
    check_output(args.output, args.file)
    if args.checkpoint:
        ck = _load(args.checkpoint)
    else:
        try:
            header = unpack(read_stream(args.file))[0]
        except BitstreamError as e:
            raise BitstreamError(str(e) if str(args.file) in str(e) else f"{args.file}: {e}") from None
        path = find_embedded_by_id(header.model_id)
        if path is None:
            raise UsageError(f"{args.file} was written by model {header.model_id}, which is not "
                             "bundled: pass the checkpoint that encoded it with --checkpoint PATH")
        ck = load_checkpoint(path)
    x_hat, header = decompress_file(ck.model, ck.model_id, args.file, _memory(args))
    save_image(x_hat, args.output)
    print(f"{args.output}: {header.width}x{header.height}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .atomic import write_json
    from .data import list_images, sample_images_dir
    from .evaluate import evaluate_checkpoint, reference_deltas, results_json
    from .models import EMBEDDED_QUALITIES, load_checkpoint, resolve_checkpoint

    set_torch_threads(args.threads)
    specs = args.checkpoint or [f"embedded:{q}" for q in EMBEDDED_QUALITIES]
    images = list_images(args.dataset) if args.dataset else list_images(sample_images_dir())
    if args.limit:
        images = images[: args.limit]
    reference = None
    if args.reference:
        reference = evaluate_checkpoint(load_checkpoint(resolve_checkpoint(args.reference)), images,
                                        progress=not args.no_progress)
    points = []
    for spec in specs:
        ck = load_checkpoint(resolve_checkpoint(spec))
        point = evaluate_checkpoint(ck, images, progress=not args.no_progress)
        points.append(point)
        m = point["mean"]
        bits = f", {m['avg_bits']:.2f} bits" if m["avg_bits"] is not None else ""
        w = point["worst"]
        worst = f", worst {w['psnr']:.2f} dB ({w['image']})" if w else ""
        print(f"{spec}: {m['bpp']:.4f} bpp, {m['psnr']:.2f} dB PSNR{bits}{worst}")
        if reference is not None:
            d = point["vs_reference"] = reference_deltas(point, reference)
            print(f"  vs {args.reference}: mean {d['mean_delta_psnr']:+.3f} dB, worst image "
                  f"{d['worst_delta_psnr']:+.3f} dB ({d['worst_image']})")
    name = args.name or (Path(specs[0]).stem if len(specs) == 1 else "dqsearch")
    dataset = args.dataset or "bundled sample images"
    out = results_json(name, points, args.description or f"{len(images)} images of {dataset}")
    if args.output:
        write_json(args.output, out)
        print(f"wrote {args.output}")
    return 0


def cmd_bd_rate(args: argparse.Namespace) -> int:
    from .evaluate import bd_overlap, bd_rate, read_curve

    anchor = read_curve(args.anchor, args.metric)
    print(f"anchor {args.anchor}, metric {args.metric}, method {args.method}")
    for test in args.tests:
        curve = read_curve(test, args.metric)
        rate, dpsnr = bd_rate(anchor, curve, args.method)
        print(f"{test}: BD-rate {rate:+.2f}%  BD-{'PSNR' if args.metric == 'psnr-rgb' else 'MS-SSIM'} "
              f"{dpsnr:+.3f} dB  (curves overlap on {bd_overlap(anchor, curve):.0%} of their quality range)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import Benchmark, run_benchmark
    from .report import markdown_table

    set_torch_threads(args.threads)
    bench = Benchmark.load(args.study)
    bench.backend_options = {**backend_options(args), **bench.backend_options}  # the file's own win

    names = [m.name for m in bench.methods]
    for name in args.only or []:
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            raise UsageError(f"--only {name!r}: {args.study} has no such method"
                             + (f" (did you mean {close[0]!r}?)" if close else f"; it has {names}"))
    if args.limit:
        bench.limit = args.limit
    if args.remeasure and not args.report_only:
        raise UsageError("--remeasure goes with --report-only (a full run measures every row it runs)")
    if args.report_only:
        from .compare import report_from_saved

        summary = report_from_saved(bench, remeasure=args.remeasure)
    else:
        summary = run_benchmark(bench, only=args.only, progress=not args.no_progress)
    print(markdown_table(summary["rows"]))
    print(f"results, table and figures in {summary['output']}")
    return 0


def cmd_fmpq(args: argparse.Namespace) -> int:
    from .workflows import FmpqRun, fmpq_run

    set_torch_threads(args.threads)
    needs_table = bool(args.target_latency and not args.latency_table and args.backend)
    recipe = {k: getattr(args, k) for k in ("bits", "steps", "batch_size", "crop", "lr",
                                            "calibration_batches", "seed")}
    run = FmpqRun(
        checkpoint=args.checkpoint, output=args.output, target_size=args.target_size,
        target_latency=args.target_latency, latency_table=args.latency_table, backend=args.backend,
        backend_options=backend_options(args) if needs_table else {},
        input_shape=input_size(args.input) if needs_table else None,
        data=args.data, compile=bool(args.compile), progress=not args.no_progress,
        **{k: v for k, v in recipe.items() if v is not None})  # else FmpqRun's recipe
    found, target = fmpq_run(run)
    unit, goal = ("size ratio", target.size) if target.size is not None else ("ms", target.latency_ms)
    print(f"β = {found.beta:.4g} after {found.iterations} iterations: {unit} {found.score:.4f} "
          f"(target {goal:g}, {'met' if found.met else 'closest below the target'}); bits "
          + ",".join(str(b) for b in found.allocation.values()))
    print(f"wrote {args.output}")
    return 0


class Train(Command):
    name = "train"
    help = "train an FP32 model or fine-tune a quantized one (QAT)"
    run = staticmethod(cmd_train)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        _add_model_args(p)
        p.add_argument("--checkpoint", help="initial weights: a checkpoint path or embedded:Q")
        p.add_argument("--pretrained", action="store_true", help="start from CompressAI's zoo weights")
        p.add_argument("--quality", type=int, default=3, help="zoo quality for --pretrained")
        p.add_argument("--data", help="training image folder (default ../shared/data/train)")
        p.add_argument("-o", "--output", required=True, help="checkpoint to write")
        p.add_argument("--resume", action="store_true", help="continue the run stored in --output")
        p.add_argument("--force", action="store_true", help="overwrite an existing --output")
        p.add_argument("--lambda", dest="lmbda", type=float, help="rate-distortion trade-off λ")
        p.add_argument("--metric", choices=["mse", "ms-ssim"])
        p.add_argument("--steps", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--crop", type=int, help="random crop size in pixels")
        p.add_argument("--lr", type=float)
        p.add_argument("--lr-end", type=float, help="cosine-decay the learning rate to this")
        p.add_argument("--aux-lr", type=float)
        p.add_argument("--quant-lr", type=float, help="learning rate of quantizer scales")
        p.add_argument("--selector-lr", type=float, help="learning rate of the bit-width selectors (1e-3)")
        p.add_argument("--gamma", type=float, help="weight γ of the average-bit-width loss")
        p.add_argument("--diversity", type=float,
                       help="δ: reward the mutual information between image and bit choice in a batch")
        p.add_argument("--bits-cost", choices=["uniform", "distortion"],
                       help="price of a bit per image: uniform γ (default) or γ·MSE_i/mean MSE (the "
                            "log-MSE trade-off: clean images buy precision more cheaply)")
        p.add_argument("--calibration-images", type=int,
                       help="whole training photos that set the activation ranges (default 8; 0: "
                            "random crop batches as before)")
        p.add_argument("--latency-table", help="latency table of the target device (adds η·L_lat)")
        p.add_argument("--target-latency", help="latency budget for L_lat, e.g. 20ms")
        p.add_argument("--latency-weight", type=float, help="η, the weight of L_lat")
        p.add_argument("--latency-reduce", choices=["image", "batch"], default="image",
                       help="hinge per image, then averaged (default), or of the batch mean")
        p.add_argument("--latency-form", choices=["hinge", "linear"], default="hinge",
                       help="hinge: max(0, E[T]/T - 1); linear: E[T]/T")
        p.add_argument("--checkpoint-every", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--device", help="cpu or cuda")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the fake quantizer: ~3x faster QAT after a 20-45 s compile")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--record-command", action=argparse.BooleanOptionalAction, default=True,
                       help="store the command line in the checkpoint")
        _add_quant_args(p)


class Compress(Command):
    name = "compress"
    help = "encode an image into a dqsearch bitstream"
    run = staticmethod(cmd_compress)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("image")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--checkpoint", help="checkpoint path or embedded:Q (default: embedded model)")
        p.add_argument("--memory-limit", help="refuse images needing more memory than this (default 4G, "
                       "or $DQSEARCH_MEMORY_LIMIT)")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        cli_deploy.add_runtime_args(p, "encode")


class Decompress(Command):
    name = "decompress"
    help = "decode a dqsearch bitstream to PNG"
    run = staticmethod(cmd_decompress)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("file")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--checkpoint", help="the checkpoint that encoded the file (bundled ones are found)")
        p.add_argument("--memory-limit", help="refuse streams needing more memory than this (default 4G)")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        cli_deploy.add_runtime_args(p, "decode")


class Eval(Command):
    name = "eval"
    help = "RD points from real bitstreams; results JSON (CompressAI format)"
    run = staticmethod(cmd_eval)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", nargs="+", help="checkpoints (one RD point each; default: the "
                       "embedded family embedded:1..4)")
        p.add_argument("--dataset", help="image folder (default: the bundled sample images)")
        p.add_argument("--limit", type=int, help="only the first N images")
        p.add_argument("--reference", help="checkpoint (e.g. the FP32 one) to report each image's PSNR "
                                           "loss against: mean and worst case")
        p.add_argument("-o", "--output", help="results JSON to write")
        p.add_argument("--name", help="curve name in the JSON")
        p.add_argument("--description")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        p.add_argument("--no-progress", action="store_true")


class BdRate(Command):
    name = "bd-rate"
    help = "BD-rate and BD-PSNR of results JSONs against an anchor"
    run = staticmethod(cmd_bd_rate)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("anchor")
        p.add_argument("tests", nargs="+")
        p.add_argument("--metric", default="psnr-rgb", choices=["psnr-rgb", "ms-ssim-rgb"])
        p.add_argument("--method", default="pchip", choices=["pchip", "akima"],
                       help="interpolation (named explicitly: bjontegaard's defaults differ by version)")


class Compare(Command):
    name = "compare"
    help = "run or collect every method of a benchmark (study) file; table + figures"
    run = staticmethod(cmd_compare)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("study", help="study TOML (see studies/)")
        p.add_argument("--only", nargs="+", action="extend",
                       help="(re)run only these methods (repeatable); others are collected")
        p.add_argument("--report-only", action="store_true",
                       help="rewrite the table and figures from the saved results; run nothing")
        p.add_argument("--remeasure", action="store_true",
                       help="with --report-only: measure every row's latency again, in this run, from the "
                            "saved bit profiles (rows measured on another machine or day become comparable)")
        p.add_argument("--limit", type=int, help="evaluate on the first N images only")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        p.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="option of the backends in [latency] measure (the file's [latency] options win)")
        p.add_argument("--no-progress", action="store_true")


class Fmpq(Command):
    name = "fmpq"
    help = "FMPQ baseline: sensitivity-based bits under a size or latency target"
    run = staticmethod(cmd_fmpq)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", help="FP32 checkpoint (default: the embedded model)")
        p.add_argument("--bits", type=int_list,
                       help="candidate bit-widths (default: fmpq.DEFAULT_BITS, 4,6,8,10,16)")
        t = p.add_mutually_exclusive_group(required=True)
        t.add_argument("--target-size", type=float, help="packed conv weights / FP32, e.g. 0.25")
        t.add_argument("--target-latency", help="latency budget, e.g. 20ms (needs a table)")
        p.add_argument("--backend", help="backend whose table gives the latency")
        p.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="backend option (as for `dqsearch profile`), for finding or profiling its table")
        p.add_argument("--latency-table")
        add_input_arg(p, "input size for a table profiled now")
        p.add_argument("--data", help="training/calibration images (default ../shared/data/train)")
        p.add_argument("-o", "--output", required=True, help="QAT checkpoint to write")
        # the recipe: None means workflows.FmpqRun's default
        p.add_argument("--steps", type=int, help="QAT steps with the leaky clip (default 300)")
        p.add_argument("--batch-size", type=int)
        p.add_argument("--crop", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--calibration-batches", type=int, help="batches for ζ")
        p.add_argument("--seed", type=int)
        p.add_argument("--compile", action="store_true")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        p.add_argument("--no-progress", action="store_true")


#: The command table, in the order `dqsearch -h` lists them.
COMMANDS: dict[str, type[Command]] = {c.name: c for c in (
    Train, Compress, Decompress, Eval, BdRate, Compare, Fmpq, *cli_backends.COMMANDS, *cli_study.COMMANDS,
    *cli_deploy.COMMANDS)}
GROUPS = {**cli_backends.GROUPS}  # help of a command group that is not itself a command


def build_parser() -> argparse.ArgumentParser:
    """One parser per command of `COMMANDS`; a name's words nest as sub-commands."""
    parser = argparse.ArgumentParser(prog="dqsearch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dqsearch {__version__}")
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    subs: dict[tuple[str, ...], argparse._SubParsersAction] = {}

    def node(words: tuple[str, ...], help: str | None) -> argparse.ArgumentParser:  # noqa: A002
        if words not in parsers:
            parent = node(words[:-1], GROUPS.get(" ".join(words[:-1])))
            if words[:-1] not in subs:
                is_command = " ".join(words[:-1]) in COMMANDS
                subs[words[:-1]] = parent.add_subparsers(
                    dest="command" if not words[:-1] else argparse.SUPPRESS, metavar="COMMAND",
                    required=not is_command, title="commands" if not words[:-1] else "sub-commands")
            parsers[words] = subs[words[:-1]].add_parser(words[-1], help=help)
            parsers[words].set_defaults(command=" ".join(words))
        return parsers[words]

    for name, cls in COMMANDS.items():
        cmd = cls()
        p = node(tuple(name.split()), cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.run, command=name)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors printed as one line. Imported lazily: dqsearch.models pulls in CompressAI (2.5 s),
    which commands like `dqsearch backends` never need."""
    from .data import ImageError
    from .models import CheckpointError

    return (UsageError, CheckpointError, ImageError, OSError, RuntimeError, ValueError, KeyError,
            FloatingPointError, MemoryError)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"dqsearch: warning: {message}", file=sys.stderr)


MAX_MESSAGE = 600


def error_line(e: BaseException, storage: str | None = None) -> str:
    """One line for an error: no secrets of the storage URL, no megabyte-long messages."""
    if isinstance(e, MemoryError):
        return ("ran out of memory; use smaller images or crops, a smaller --batch-size, or a "
                "machine with more memory")
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    if storage:
        from .storage_url import scrub

        msg = scrub(msg, storage)
    msg = " ".join(msg.split())
    if len(msg) > MAX_MESSAGE:
        msg = msg[:MAX_MESSAGE] + f"… ({len(msg) - MAX_MESSAGE} more characters; DQSEARCH_DEBUG=1 shows all)"
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation inside CompressAI
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except _user_errors() as e:  # evaluated only when something is raised
        if os.environ.get("DQSEARCH_DEBUG"):
            raise
        print(f"dqsearch {args.command}: error: {error_line(e, getattr(args, 'storage', None))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed work is saved (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
