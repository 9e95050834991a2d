"""The x86-int8 deployment part: each transform of an exported profile as plain arrays
(`<transform>.npz`, see `program`), run as oneDNN int8 convolutions on plain uint8 tensors and
fused int8 GDN/IGDN (the kernels of PyTorch's x86 quantized engine, `transform.X86Transform`).

dqsearch core calls `X86Deployment.build` for each profile it exports and `X86Deployment.load`
for each transform it runs (`dqsearch.deploy.artifact` / `runtime`; docs/plugins.md). The entropy
parameters of the default (integer) streams come from the core's integer h_s; the float h_s here
serves `--hyper float` exports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dqsearch.backends import Deployment
from dqsearch.integer.params import LayerQuant
from dqsearch.quant.wrap import quantized_layers

from . import memory
from .engine import unavailable
from .kernels import compile_unavailable
from .program import build_program, calibrate_gdn, load_program, save_program
from .transform import X86Transform

TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")
#: the transforms built on int8 kernels where their layers are ≤ 8 bits (under the int8
#: arithmetic); h_s stays exact: the default streams take their entropy parameters from the
#: core's integer h_s, and a float h_s must match the encoder's bit for bit
INT8 = ("g_a", "h_a", "g_s")


def arithmetic_of(transform: str, arithmetic: str) -> str:
    """The arithmetic this plugin runs `transform` in under the export's `arithmetic`."""
    return arithmetic if transform in INT8 else "exact"


#: a small input per transform for the warm-up run of `load` (compiles the fused kernels, which
#: then serve every size: dynamic shapes); sides differ so no two dimensions are specialised equal
WARMUP_HW = {"g_a": (64, 128), "h_a": (4, 8), "h_s": (2, 3), "g_s": (4, 6)}


def build_transforms(store: Any, model: nn.Module, layers: Mapping[str, LayerQuant], ranges: Mapping | None,
                     folder: Path) -> tuple[dict[str, dict], dict[str, int]]:
    """Write g_a, h_a, h_s, g_s of one profile into `folder` (see `X86Deployment.build`)."""
    opts, codec = store.options, store.manifest["codec"]
    arith = {t: arithmetic_of(t, opts.arithmetic) for t in TRANSFORMS}
    gdn_ranges: dict[str, tuple[float, float]] = {}
    if any(a == "int8" for a in arith.values()):
        profile = {n: layers[n].bits for n in quantized_layers(model)}
        gdn_ranges = calibrate_gdn(model, profile, store.calibration())
    decisions, sizes = {}, {}
    for t in TRANSFORMS:
        meta, arrays = build_program(model, t, layers, arith[t], ranges, gdn_ranges,
                                     abs_input=t == "h_a" and codec["abs_h_a"])
        sizes[f"{t}.npz"] = save_program(folder / f"{t}.npz", meta, arrays)
        kinds = {e["name"]: e["kind"] for e in meta["layers"]}
        int8_gdn = [e["name"] for e, n in zip(meta["layers"], meta["layers"][1:], strict=False)
                    if e["kind"] == n["kind"] == "int8" and e["act"] in ("gdn", "igdn")]
        decisions[t] = {"subpixel": any(e["kind"] == "int8" and e["subpixel"] for e in meta["layers"]),
                        "reason": "x86-int8 runs every int8 deconvolution as a sub-pixel conv "
                                  "(phase-major outputs)", "layers": kinds, "int8_gdn_after": int8_gdn}
    return decisions, sizes


class X86Deployment(Deployment):
    """Deployment to PyTorch's x86 int8 engine (`dqsearch export --backend x86-int8`)."""

    name = "x86-int8"
    # Measured (decoded image vs the PyTorch codec's decode of the same stream, worst image): Kodak
    # 43.97 dB on the per-tensor DPA-8 model with learned g_s outputs, 35.92 dB on per-channel
    # PTQ-8 (ort-cpu 35.94 dB: the per-tensor input scales, not this engine), small crops of PTQ-8
    # 34.1 dB (tests); docs/deploy.md. Stated like ort-cpu's, with that margin.
    min_psnr_db = 30.0
    gdn = ("int8 between two int8 layers of g_a/g_s (x² and β + Γx² as uint8 per tensor over ranges "
           "calibrated at export, Γx² an int8 1×1 convolution), float elsewhere")

    def __init__(self, compile: bool = True) -> None:
        why = unavailable()
        if why:
            raise ValueError(why)
        self.compile = compile

    def versions(self) -> dict[str, Any]:
        return {"torch": torch.__version__, "x86_engine": "x86",
                "fused_kernels": "torch.compile" if compile_unavailable() is None else "eager"}

    def build(self, store: Any, model: nn.Module, layers: Mapping[str, LayerQuant], ranges: Mapping | None,
              folder: Path) -> tuple[dict[str, dict], dict[str, int]]:
        return build_transforms(store, model, layers, ranges, folder)

    def module(self, folder: Path, transform: str, threads: int = 1) -> X86Transform:
        """The transform as a module (what `load` wraps), not warmed up."""
        meta, arrays = load_program(Path(folder) / f"{transform}.npz")
        if meta["transform"] != transform:
            raise ValueError(f"{folder}/{transform}.npz holds {meta['transform']}: re-export this profile")
        return X86Transform(meta, arrays, threads, self.compile)

    def load(self, folder: Path, transform: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        """The transform as a numpy function, run once on a small input so that compiling the
        fused kernels (and first-call allocations) happens here, outside timed stages. Sets glibc
        to keep freed memory (`memory.apply`: process-wide, once; `DQSEARCH_X86_MALLOC=default`
        opts out), which measured 22 instead of 29 ms per decoder next to other sessions."""
        memory.apply()
        mod = self.module(folder, transform, threads)
        if mod.compiled:
            t0 = time.perf_counter()
            mod(torch.rand(1, mod.in_channels, *WARMUP_HW.get(transform, (4, 6))))
            mod.warmup_seconds = time.perf_counter() - t0

        def run(x: np.ndarray) -> np.ndarray:
            return mod(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

        return run
