"""The element-wise parts of an int8 GDN/IGDN as uint8 → uint8 kernels, fused by torch.compile.

Between two int8 convolutions a GDN is: x² requantized to uint8 (`square_u8`), Γx² + β as an int8
1×1 convolution (the engine's kernel), then x·√norm (IGDN) or x/√norm (GDN) requantized for the
next layer's input (`gdn_out_u8`; `igdn_shuffle_u8` also writes the pixel shuffle of a sub-pixel
layer's phase-major output). Eagerly each line is a pass over the activations; compiled, each
function is one pass (the prototype measured g_s 1.6× → 3.2× the fastest FP32 from this alone).

Compiled with `dynamic=True`, so a new image size reuses the kernels; scales and zero-points are
0-dim tensors (Python floats would be specialised: one compilation per layer). Where compilation is
unavailable (no C++ compiler, not x86-64, torch without `torch.compile`, or it fails) the same
functions run eagerly as lookup tables (`EAGER`: bit-identical to the functions run eagerly), with
one warning saying why and that it is slower.
`DQSEARCH_X86_COMPILE=0` asks for the eager path.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


class EagerFallbackWarning(RuntimeWarning):
    """The fused kernels could not be compiled; the eager path (same arithmetic, slower) runs."""


def square_u8(u8: Tensor, s: Tensor, z: Tensor, s2: Tensor) -> Tensor:
    """uint8 x (scale s, zero-point z) → uint8 x² at scale s2, zero-point 0."""
    x = (u8.to(torch.float32) - z) * s
    return torch.clamp(torch.round(x * x / s2), 0, 255).to(torch.uint8)


def gdn_out_u8(u8: Tensor, n8: Tensor, s: Tensor, z: Tensor, sn: Tensor, zn: Tensor, so: Tensor, zo: Tensor,
               hi: Tensor, inverse: bool) -> Tensor:
    """uint8 x, uint8 norm → uint8 x·√norm (inverse) or x/√norm at the next input quantizer
    (so, zo), clipped to [0, hi] (hi = 2^b − 1 of the next layer)."""
    n = (n8.to(torch.float32) - zn) * sn
    y = (u8.to(torch.float32) - z) * s * (torch.sqrt(n) if inverse else torch.rsqrt(n))
    # minimum with a 0-dim tensor fuses; clamp with a tensor bound falls back to an unfused kernel
    return torch.minimum(torch.clamp_min(torch.round(y / so) + zo, 0), hi).to(torch.uint8)


def igdn_shuffle_u8(u8: Tensor, n8: Tensor, s: Tensor, z: Tensor, sn: Tensor, zn: Tensor, so: Tensor,
                    zo: Tensor, hi: Tensor, inverse: bool) -> Tensor:
    """`gdn_out_u8` on a sub-pixel conv's phase-major output viewed as [N, C, H, 4W] (memory
    [H, W, phase, C]), written pixel-shuffled as [N, 2H, 2W, C] (NHWC memory)."""
    n, c, h, w4 = u8.shape
    q = gdn_out_u8(u8, n8, s, z, sn, zn, so, zo, hi, inverse)
    q = q.permute(0, 2, 3, 1).reshape(n, h, w4 // 4, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return q.reshape(n, 2 * h, w4 // 2, c)


KERNELS: dict[str, Callable[..., Tensor]] = {
    "square": square_u8, "gdn": gdn_out_u8, "gdn_shuffle": igdn_shuffle_u8}


# --- the eager path: the same functions as lookup tables ------------------------------------------
# An output byte depends only on the input byte(s) and the layer's constants, so each function is a
# table over 256 (x²) or 256 × 256 (x, norm) values, computed by the functions above (the same
# float32 operations, so the same bytes) and applied with numpy's gather: 5 and 9 ms per pass at
# 384×256×64 against 25 and 42 ms for the unfused torch operations.
_LUTS: dict[tuple, np.ndarray] = {}


def _lut(name: str, consts: tuple[Tensor, ...], inverse: bool | None = None) -> np.ndarray:
    key = (name, inverse, *(float(c) for c in consts))
    if key not in _LUTS:
        if len(_LUTS) > 256:
            _LUTS.clear()
        a = torch.arange(256, dtype=torch.uint8)
        if name == "square":
            _LUTS[key] = square_u8(a, *consts).numpy()
        else:
            _LUTS[key] = gdn_out_u8(a.view(256, 1), a.view(1, 256), *consts, inverse).reshape(-1).numpy()
    return _LUTS[key]


def _memory_order(t: Tensor) -> tuple[Tensor, tuple[int, ...] | None]:
    """`t` permuted to its memory order (a contiguous view) and the permutation back, so results
    keep the input's layout (channels-last stays channels-last)."""
    if t.is_contiguous():
        return t, None
    nhwc = t.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():
        return nhwc, (0, 3, 1, 2)
    return t.contiguous(), None


def _back(a: np.ndarray, perm: tuple[int, ...] | None) -> Tensor:
    out = torch.from_numpy(a)
    return out if perm is None else out.permute(*perm)


def square_lut(u8: Tensor, s: Tensor, z: Tensor, s2: Tensor) -> Tensor:
    """`square_u8` by table lookup (eager)."""
    m, perm = _memory_order(u8)
    return _back(np.take(_lut("square", (s, z, s2)), m.numpy()), perm)


def gdn_lut(u8: Tensor, n8: Tensor, s: Tensor, z: Tensor, sn: Tensor, zn: Tensor, so: Tensor, zo: Tensor,
            hi: Tensor, inverse: bool) -> Tensor:
    """`gdn_out_u8` by table lookup (eager)."""
    m, perm = _memory_order(u8)
    n = n8.permute(0, 2, 3, 1) if perm is not None else n8
    idx = m.numpy().astype(np.uint16)
    idx <<= 8
    idx |= np.ascontiguousarray(n.numpy())
    return _back(np.take(_lut("gdn", (s, z, sn, zn, so, zo, hi), inverse), idx), perm)


def igdn_shuffle_lut(u8: Tensor, n8: Tensor, s: Tensor, z: Tensor, sn: Tensor, zn: Tensor, so: Tensor,
                     zo: Tensor, hi: Tensor, inverse: bool) -> Tensor:
    """`igdn_shuffle_u8` by table lookup (eager)."""
    n, c, h, w4 = u8.shape
    q = gdn_lut(u8, n8, s, z, sn, zn, so, zo, hi, inverse)
    q = q.permute(0, 2, 3, 1).reshape(n, h, w4 // 4, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return q.reshape(n, 2 * h, w4 // 2, c)


EAGER: dict[str, Callable[..., Tensor]] = {
    "square": square_lut, "gdn": gdn_lut, "gdn_shuffle": igdn_shuffle_lut}


def compile_unavailable() -> str | None:
    """Why torch.compile cannot build the fused kernels here, or None."""
    if os.environ.get("DQSEARCH_X86_COMPILE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "DQSEARCH_X86_COMPILE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"this is not an x86-64 machine ({platform.machine()})"
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 4) or not hasattr(torch, "compile"):
        return f"torch {torch.__version__} is older than 2.4"
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "clang++", "c++"))):
        return "no C++ compiler was found (install g++ or set CXX)"
    return None


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def compiled_kernels() -> dict[str, Callable[..., Tensor]]:
    """The kernels under torch.compile, made once per process (every transform shares them)."""
    if not _COMPILED:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime"
        _COMPILED.update({k: torch.compile(f, dynamic=True) for k, f in KERNELS.items()})
    return _COMPILED


class Kernels:
    """The three kernels, compiled when possible (first call per kernel compiles; any later shape
    reuses it), else eager. `compiled` says which; `reason` why not."""

    _warned = False

    def __init__(self, compile: bool = True) -> None:
        self.reason = compile_unavailable() if compile else "compilation not asked for"
        self.compiled = self.reason is None
        self._fns: dict[str, Callable[..., Tensor]] = dict(EAGER)
        if self.compiled:
            self._fns = compiled_kernels()
        elif compile:
            self._warn()

    def _warn(self) -> None:
        if not Kernels._warned:  # once per process: every transform would say the same
            Kernels._warned = True
            warnings.warn(f"x86-int8: fused GDN kernels not compiled ({self.reason}); running the same "
                          "arithmetic eagerly, which is slower", EagerFallbackWarning, stacklevel=3)

    def __call__(self, name: str, *args: object) -> Tensor:
        try:
            return self._fns[name](*args)
        except Exception as e:  # noqa: BLE001  (inductor/compiler failures come in many types)
            if not self.compiled:
                raise
            self.compiled, self.reason = False, f"compilation failed: {type(e).__name__}: {str(e)[:160]}"
            self._fns = dict(EAGER)
            self._warn()
            return self._fns[name](*args)
