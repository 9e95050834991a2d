"""dqsearch-tvm: Apache TVM backends (`tvm-cpu`, `tvm-arm`).

Each layer is lowered at its container precision — fp32, int8 (uint8 × int8 → int32 in the
packed NCHWc layout that VNNI / sdot kernels use) or int16 (→ int32) — compiled with TVM's Relax
pipeline for the host (`tvm-cpu`, `-mcpu` detected) or cross-compiled for an ARM board
(`tvm-arm`, measured over TVM RPC), and timed with `time_evaluator`. Whole transforms are
imported with `torch.export` + the Relax frontend and their convolutions replaced by the same
layer kernels. `tune_trials=N` tunes every kernel with meta-schedule first, keeping the records
in a database on disk shared by layers of the same shape and reused by later runs.
"""

from __future__ import annotations

import shutil
from typing import Any

from dqsearch.backends import BackendError, OptionRequired

from .backend import TvmBackend
from .device import LocalDevice, RemoteDevice
from .target import ARM_TARGET

_DEVICE_OPTIONS = ("rpc_tracker", "rpc_key", "rpc", "cc", "rpc_timeout", "rpc_retries", "rpc_retry_wait",
                   "rpc_connect_timeout")


def cpu(**options: Any) -> TvmBackend:
    """Entry point `tvm-cpu`: the host CPU (LLVM target with the detected -mcpu)."""
    options.pop("spec", None)
    return TvmBackend("tvm-cpu", **options)


def arm(**options: Any) -> TvmBackend:
    """Entry point `tvm-arm`: cross-compile for aarch64 and measure on a board over TVM RPC.

    Options: rpc_tracker=HOST:PORT with rpc_key=KEY, or rpc=HOST:PORT; target (default
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}); cc (cross compiler,
    default aarch64-linux-gnu-g++; "host" links with the host's compiler); rpc_timeout (session
    seconds), rpc_retries, rpc_retry_wait (seconds, growing per retry), rpc_connect_timeout (how
    long to wait for a busy board); plus every tvm-cpu option.
    """
    options.pop("spec", None)
    dev = {k: options.pop(k) for k in _DEVICE_OPTIONS if k in options}
    if not dev.get("rpc_tracker") and not dev.get("rpc"):
        raise OptionRequired("tvm-arm measures on a board over TVM RPC: pass --rpc-tracker HOST:PORT "
                             "--rpc-key KEY (or --rpc HOST:PORT); see docs/tvm.md")
    compiler = str(dev.get("cc", "aarch64-linux-gnu-g++"))
    compiler = None if compiler in ("host", "", "none") else compiler
    if compiler and shutil.which(compiler) is None:
        raise BackendError(f"cross compiler {compiler!r} not found: apt-get install g++-aarch64-linux-gnu "
                           "(or pass --option cc=PATH, or cc=host when the board is this machine's arch)")
    device = RemoteDevice(tracker=dev.get("rpc_tracker"), key=dev.get("rpc_key"), rpc=dev.get("rpc"),
                          compiler=compiler, threads=int(options.get("threads") or 1),
                          session_timeout=float(dev.get("rpc_timeout", 600)),
                          retries=int(dev.get("rpc_retries", 3)),
                          retry_wait=float(dev.get("rpc_retry_wait", 5.0)),
                          connect_timeout=float(dev.get("rpc_connect_timeout", 120.0)))
    options.setdefault("target", dict(ARM_TARGET))
    return TvmBackend("tvm-arm", device=device, **options)


__all__ = ["ARM_TARGET", "LocalDevice", "RemoteDevice", "TvmBackend", "arm", "cpu"]
