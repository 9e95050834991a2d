"""The commands `dqsearch profile`, `dqsearch backends` and `dqsearch latency validate` (parsing
only; the work is in dqsearch.backends)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cli_common import (
    MODEL_NAMES,
    Command,
    UsageError,
    add_backend_args,
    add_input_arg,
    input_size,
    int_list,
    open_backend_from_args,
)

DEFAULT_BITS = (4, 6, 8, 10, 16, 32)
#: the bundled family's architecture (embedded:1..4), what `dqsearch study` searches by default
EMBEDDED_ARCH = ("bmshj2018-hyperprior", {"N": 64, "M": 96})


def _load_model(args: argparse.Namespace):
    """A model from --checkpoint or built from --model/--N/--M, and what to record about it."""
    from .models import build_model, load_checkpoint, resolve_checkpoint

    if args.checkpoint:
        ck = load_checkpoint(resolve_checkpoint(args.checkpoint))
        return ck.model, {"architecture": ck.architecture, "arch_args": ck.arch_args,
                          "checkpoint": str(args.checkpoint), "model_id": ck.model_id}
    if args.model is None:  # the study's default family, so its table is the one a study looks for
        args.model = EMBEDDED_ARCH[0]
        if args.N is None and args.M is None:
            args.N, args.M = EMBEDDED_ARCH[1]["N"], EMBEDDED_ARCH[1]["M"]
    arch_args = {k: v for k, v in (("N", args.N), ("M", args.M)) if v is not None}
    return build_model(args.model, **arch_args), {"architecture": args.model, "arch_args": arch_args}


def _model_slug(info: dict[str, Any]) -> str:
    args = "".join(f"-{k}{v}" for k, v in sorted(info.get("arch_args", {}).items()))
    return info["architecture"] + args


def cmd_profile(args: argparse.Namespace) -> int:
    from .backends.profiling import profile_table
    from .threads import set_torch_threads

    set_torch_threads(args.threads)
    shape = input_size(args.input)
    backend = open_backend_from_args(args)
    model, info = _load_model(args)
    bits = args.bits or tuple(b for b in DEFAULT_BITS if b in backend.capabilities())
    output = Path(args.output) if args.output else (
        Path("latency_models") / backend.name / f"{_model_slug(info)}-{shape[2]}x{shape[3]}.json")
    if output.exists() and args.force and not args.resume:
        output.unlink()
    table = profile_table(backend, model, shape, bits, output, resume=args.resume, model_info=info,
                          progress=not args.no_progress, command="dqsearch " + " ".join(sys.argv[1:]))
    fp32 = {n: max(table.bits(n)) for n in table.layer_names}
    print(f"wrote {output}: {len(table.layer_names)} layers x bits {table.metadata['bits']} on "
          f"{backend.name} in {table.metadata.get('profiling_seconds', 0):.0f} s; predicted "
          f"{table.predict(fp32):.2f} ms at {max(table.metadata['bits'])} bits everywhere")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from .backends import inspect_backends

    infos = inspect_backends()
    if args.json:
        print(json.dumps([{"name": i.name, "distribution": i.distribution, "entry_point": i.target,
                           "loaded": i.ok, "needs_options": i.needs_options, "error": i.error,
                           "capabilities": i.backend.capabilities() if i.ok else None,
                           "deploys": i.ok and i.backend.deployment() is not None,
                           "metadata": i.backend.metadata() if i.ok else None} for i in infos], indent=1))
        return 0
    if not infos:
        print("no backends installed: pip install -e backends/simulated -e backends/onnxruntime")
        return 1
    for i in infos:
        if i.ok:
            caps = i.backend.capabilities()
            by: dict[str, list[int]] = {}
            for b, c in sorted(caps.items()):
                by.setdefault(c, []).append(b)
            text = ", ".join(f"{c}: {','.join(map(str, bs))}" for c, bs in by.items())
            desc = i.backend.metadata().get("description") or i.backend.metadata().get("device", "")
            print(f"{i.name:<15} ok       [{i.distribution}] bits → container  {text}")
            if desc:
                print(f"{'':<15}          {desc}")
            if i.backend.deployment() is not None:
                print(f"{'':<15}          deploys: dqsearch export --backend {i.name}")
        elif i.needs_options:
            print(f"{i.name:<15} options  [{i.distribution}] {i.error}")
        else:
            print(f"{i.name:<15} FAILED   [{i.distribution}] {i.error}")
    return 0


def cmd_latency_validate(args: argparse.Namespace) -> int:
    from .backends.identity import describe, differences, identity_of
    from .backends.validate import validate_table
    from .latency import LatencyTable
    from .models import build_model, load_checkpoint, resolve_checkpoint
    from .threads import set_torch_threads

    set_torch_threads(args.threads)
    table = LatencyTable.load(args.table)
    name = args.backend or table.metadata["backend"]
    if name != table.metadata["backend"] and not args.any_backend:
        raise UsageError(f"{args.table} was measured on {table.metadata['backend']}, not {name}: "
                         "validate on the same backend (or pass --any-backend to compare devices)")
    backend = open_backend_from_args(args, name)
    diffs = differences(identity_of(table.metadata), backend.identity())
    if diffs and name == table.metadata["backend"]:
        print(f"note: {args.table} was measured on another device or setting ({describe(diffs)}); "
              "validating it here measures how well it transfers", file=sys.stderr)
    info = table.metadata.get("model") or {}
    if info.get("checkpoint"):
        model = load_checkpoint(resolve_checkpoint(info["checkpoint"])).model
    elif info.get("architecture"):
        model = build_model(info["architecture"], **info.get("arch_args", {}))
    else:
        raise UsageError(f"{args.table}: metadata.model names no architecture; cannot rebuild the model")
    report = validate_table(table, backend, model, samples=args.samples, tolerance=args.tolerance,
                            seed=args.seed, progress=not args.no_progress)
    print(report.summary())
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


class Profile(Command):
    name = "profile"
    help = "measure a latency table: every layer at every bit-width"
    run = staticmethod(cmd_profile)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_backend_args(p)
        src = p.add_mutually_exclusive_group()
        src.add_argument("--model", choices=MODEL_NAMES,
                         help="architecture built from scratch (latency does not depend on weights); "
                              "default: the bundled family's, bmshj2018-hyperprior N=64 M=96, which "
                              "`dqsearch study` uses (a --model without --N/--M gets CompressAI's default "
                              "widths)")
        src.add_argument("--checkpoint", help="a checkpoint path or embedded:Q instead of --model")
        p.add_argument("--N", type=int, help="channel count N")
        p.add_argument("--M", type=int, help="latent channel count M")
        add_input_arg(p, "input size, multiples of 64")
        p.add_argument("--bits", type=int_list, help="bit-widths to measure, 32 = FP32 "
                       f"(default: {','.join(map(str, DEFAULT_BITS))} where supported)")
        p.add_argument("-o", "--output",
                       help="table to write (default latency_models/<backend>/<model>-<HxW>.json)")
        p.add_argument("--resume", action="store_true",
                       help="complete an existing table, skipping what it holds")
        p.add_argument("--force", action="store_true", help="overwrite an existing table")
        p.add_argument("--no-progress", action="store_true")


class Backends(Command):
    name = "backends"
    help = "list installed backends, their bit-widths, whether they deploy, and load failures"
    run = staticmethod(cmd_backends)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")


class LatencyValidate(Command):
    name = "latency validate"
    help = "measure random bit profiles end to end and compare with the table"
    run = staticmethod(cmd_latency_validate)

    def add_arguments(self, v: argparse.ArgumentParser) -> None:
        v.add_argument("table", help="latency table (JSON) from `dqsearch profile`")
        add_backend_args(v, required=False)
        v.add_argument("--samples", type=int, default=100,
                       help="random bit profiles to measure (default 100)")
        v.add_argument("--tolerance", type=float, default=0.10,
                       help="relative error counted as a hit (0.10)")
        v.add_argument("--seed", type=int, default=0)
        v.add_argument("--any-backend", action="store_true", help="allow a backend other than the table's")
        v.add_argument("-o", "--output", help="write every sample and the summary as JSON")
        v.add_argument("--no-progress", action="store_true")


COMMANDS = (Profile, Backends, LatencyValidate)
#: help of a command group that is not itself a command
GROUPS = {"latency": "latency tables: validate predictions against measurements"}
