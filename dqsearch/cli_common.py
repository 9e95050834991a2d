"""What every command of the CLI shares: the `Command` base of the command table (`cli.COMMANDS`),
the one-line `UsageError`, the argument types (one integer-list parser, ranges, input sizes) and
the backend flags. Imports nothing heavy: building the parser must not load torch or CompressAI.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from typing import Any

from .units import DEFAULT_INPUT, INT8_TRANSFORMS


class UsageError(ValueError):
    """Bad command-line input; printed as one line, no traceback."""


class Command(ABC):
    """One entry of the command table. `name` may have several words ("study show", "latency
    validate"): each word is a level of sub-commands, so no argument list is rewritten. A command
    adds its flags in `add_arguments` and does its work in `run`, calling one library workflow."""

    name: str = ""
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's flags (none by default)."""
        return None

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the command's work (one library workflow); the exit status."""


THREADS_HELP = ("CPU threads (default: every CPU this process may use; give 1 when other jobs share "
                "the machine); also the backend's threads where one is measured (default 1 there)")

#: dqsearch.models.ARCHITECTURES' names, spelled out so that building the parser does not import
#: CompressAI (2.5 s, most of `dqsearch backends`); a test keeps the two equal
MODEL_NAMES = ("bmshj2018-factorized", "bmshj2018-hyperprior", "cheng2020-anchor", "cheng2020-attn",
               "elic2022-official", "mbt2018", "mbt2018-mean")


class RegistryChoices:
    """argparse `choices` read from a registry (a dict of a module) when first needed — to check
    a given value or to list them in an error — so building the parser imports none of the
    registry's code. Give the argument a `metavar`: argparse otherwise lists the choices while
    building the parser."""

    def __init__(self, module: str, registry: str) -> None:
        self.module, self.registry = module, registry

    def _names(self) -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(self.module), self.registry))

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self):
        return iter(self._names())


# --- argument types -------------------------------------------------------------------------------
def int_list(text: str) -> tuple[int, ...]:
    """`6,8,10` → (6, 8, 10): the one parser of comma-separated integers (bit-widths, profiles)."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def transform_list(text: str) -> tuple[str, ...]:
    """`g_a,g_s` → ("g_a", "g_s"): the int8-deployable transforms (`--quantize-outputs`)."""
    values = tuple(v for v in text.replace(" ", "").split(",") if v)
    allowed = INT8_TRANSFORMS
    if not values or not set(values) <= set(allowed):
        raise argparse.ArgumentTypeError(f"expected transforms among {', '.join(allowed)} "
                                         f"(comma-separated), got {text!r}")
    return values


def bit_sets(text: str) -> list[list[int]]:
    """`4,6,8;6,8,10` → [[4, 6, 8], [6, 8, 10]]: candidate sets, each an `int_list`, sorted."""
    try:
        sets = [sorted(int_list(s)) for s in text.split(";") if s.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected sets like '4,6,8;6,8,10', got {text!r}") from None
    if not sets or any(len(s) < 2 for s in sets):
        raise argparse.ArgumentTypeError("each candidate set needs at least two bit-widths")
    from .quant.quantizer import check_bits

    try:
        for s in sets:
            for b in s:
                check_bits(b)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return sets


def float_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    return lo, hi


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def height_width(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x768, got {text!r}") from None
    return h, w


def input_size(text: str) -> tuple[int, int, int, int]:
    """An --input HxW the codec actually runs: it pads images to a multiple of 64, so a latency
    for 250x256 would describe a size that never runs."""
    from .units import parse_input_shape

    shape = parse_input_shape(text)
    if shape[2] % 64 or shape[3] % 64:
        raise UsageError(f"--input {text}: height and width must be divisible by 64 (the codec pads "
                         f"images to a multiple of 64; a {shape[2]}x{shape[3]} image runs as "
                         f"{-(-shape[2] // 64) * 64}x{-(-shape[3] // 64) * 64})")
    return shape


def add_input_arg(p: argparse.ArgumentParser, help: str) -> None:  # noqa: A002
    p.add_argument("--input", default=DEFAULT_INPUT, help=f"{help} (HxW, default {DEFAULT_INPUT})")


# --- backends -------------------------------------------------------------------------------------
def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """--threads, --option and the dedicated flags as one dict of backend options (see
    `dqsearch.backends.options`): the same for every command that builds a backend."""
    from .backends.options import backend_options as combine
    from .backends.options import parse_options

    if getattr(args, "tune_trials", None) is not None and args.tune_trials < 0:
        raise UsageError(f"--tune-trials must be 0 or more, got {args.tune_trials}")
    try:
        return combine(getattr(args, "threads", None), parse_options(getattr(args, "option", None)),
                       spec=getattr(args, "spec", None),
                       **{f: getattr(args, f, None) for f in ("tune_trials", "rpc_tracker", "rpc_key",
                                                              "rpc")})
    except ValueError as e:
        raise UsageError(str(e)) from None


def open_backend_from_args(args: argparse.Namespace, name: str | None = None):
    """The backend of `--backend` (or `name`) with the command line's options."""
    from .backends import load_backend

    return load_backend(name or args.backend, **backend_options(args))


def add_backend_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--backend, --threads, --option and the TVM shortcuts: the same flags on every command that
    builds a backend."""
    p.add_argument("--backend", required=required, help="backend name (see `dqsearch backends`)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: every CPU this process may use) and for the "
                        "backend (default 1, reproducible on shared machines; --option threads=N sets "
                        "the backend's alone)")
    p.add_argument("--spec", help="device file for `--backend sim` (TOML; or a shipped name)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend-specific option, e.g. repeats=30 (repeatable); VALUE becomes an int if it "
                        "parses as one, else a float, else stays a string")
    # Shortcuts for the options of the TVM backends (same as --option tune_trials=N, ...).
    p.add_argument("--tune-trials", type=int, metavar="N",
                   help="tuning trials per kernel workload, for backends that tune (tvm-cpu, tvm-arm)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker of the board (tvm-arm)")
    p.add_argument("--rpc-key", metavar="KEY", help="key the board registered with at the tracker (tvm-arm)")
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help="a standalone TVM RPC server instead of a tracker (tvm-arm)")
