"""The element-wise parts of the int8 transforms as uint8 kernels, fused by torch.compile.

Activations between int8 layers are plain uint8 tensors in channels-last memory; every kernel
here reads and writes that memory as flat 1-D views (one contiguous loop whatever the image size)
with the layer scales folded into one multiplier (0-dim float32 tensors: Python floats would be
specialised, one compilation per layer):

* `quantize_u8`: a float NCHW tensor (|x| for h_a) → uint8 channels-last at a layer's input
  quantizer, in one pass (the image into g_a, y into h_a, a float layer's output into an int8 one);
* `square_u8`: a GDN's x² → uint8 (then Γx² + β is an int8 1×1 convolution, `onednn.gamma_conv`);
* `gdn_out_u8`: x/√norm (GDN) or x·√norm (IGDN) → uint8 at the next layer's input quantizer;
  `igdn_shuffle_u8` also writes the pixel shuffle of a sub-pixel layer's phase-major output;
* `dequantize`: uint8 → float32 in the given view's logical (e.g. NCHW, unshuffled) order (eager
  always: inductor's loop over the 6-D phase-major view was 3× slower than eager).

Rounding is half up (v + 0.5 truncated: cheaper than round + a NaN-propagating clamp, the same on
every non-tie). Compiled with `dynamic=True`, so a new image size reuses the kernels. Where
compilation is unavailable (no C++ compiler, not x86-64, torch without `torch.compile`, or it
fails) the same functions run eagerly, x² and the GDN output as lookup tables (`EAGER`:
bit-identical to the functions run eagerly), with one warning saying why and that it is slower.
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


def flat(t: Tensor) -> Tensor:
    """A channels-last [N, C, H, W] tensor's memory as 1-D (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1)


def unflat(f: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    """1-D channels-last memory as an [N, C, H, W] tensor (a view; `flat`'s inverse)."""
    return f.view(n, h, w, c).permute(0, 3, 1, 2)


def _to_u8(v: Tensor) -> Tensor:
    """Non-negative float → uint8, rounding half up, saturating at 255."""
    return torch.where(v > 255.0, 255.0, v + 0.5).to(torch.uint8)


def quantize_u8(x: Tensor, inv_s: Tensor, z: Tensor, hi: Tensor, absolute: bool) -> Tensor:
    """float [N, C, H, W] (any layout) → uint8 channels-last: round(x / s) + z clipped to [0, hi]
    (hi = 2^b − 1 of the layer), of |x| when `absolute`."""
    v = (torch.abs(x) if absolute else x) * inv_s + z
    q = torch.minimum(torch.clamp_min(v, 0.0), hi) + 0.5
    return q.to(torch.uint8).contiguous(memory_format=torch.channels_last)


def square_u8(u8: Tensor, z: Tensor, k: Tensor) -> Tensor:
    """uint8 x (zero-point z) → uint8 x² at k = s² / s2 (s2 the x² scale, zero-point 0)."""
    x = u8.to(torch.float32) - z
    return _to_u8(x * x * k)


def gdn_out_u8(u8: Tensor, n8: Tensor, z: Tensor, k: Tensor, sn: Tensor, zo: Tensor, hi: Tensor,
               inverse: bool) -> Tensor:
    """uint8 x (zero-point z), uint8 norm (scale sn, zero-point 0) → uint8 x·√norm (inverse) or
    x/√norm at the next input quantizer (k = s / s_o, zero-point zo), clipped to [0, hi]. A zero
    norm byte counts as one step (β ≥ one step keeps it there; avoids 1/0)."""
    n = torch.clamp_min(n8.to(torch.float32), 1.0) * sn
    y = (u8.to(torch.float32) - z) * k * (torch.sqrt(n) if inverse else torch.rsqrt(n)) + zo
    # minimum with a 0-dim tensor fuses; clamp with a tensor bound falls back to an unfused kernel
    return _to_u8(torch.minimum(torch.clamp_min(y, 0.0), hi))


def _shuffled(q: Tensor, n: int, h: int, w: int, c: int) -> Tensor:
    """Phase-major memory [N, H, W, 2, 2, C] (flat) → pixel-shuffled [N, 2H, 2W, C], contiguous."""
    return q.view(n, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(n, 2 * h, 2 * w, c)


def igdn_shuffle_u8(u8: Tensor, n8: Tensor, z: Tensor, k: Tensor, sn: Tensor, zo: Tensor, hi: Tensor,
                    inverse: bool, n: int, h: int, w: int, c: int) -> Tensor:
    """`gdn_out_u8` on a sub-pixel conv's phase-major output (flat memory [N, H, W, 2, 2, C]),
    written pixel-shuffled as [N, 2H, 2W, C] (NHWC memory)."""
    return _shuffled(gdn_out_u8(u8, n8, z, k, sn, zo, hi, inverse), n, h, w, c)


def dequantize(u8: Tensor, s: Tensor, z: Tensor) -> Tensor:
    """uint8 (any view) → float32 (u8 − z)·s, contiguous in the view's logical order."""
    return ((u8.to(torch.float32) - z) * s).contiguous()


#: the kernels compiled; `dequantize` always runs eagerly: on the phase-major view of g_s's last
#: layer (a 6-D permutation) inductor's loop took 2.9 ms against 0.87 ms eager at 768×512
KERNELS: dict[str, Callable[..., Tensor]] = {
    "quantize": quantize_u8, "square": square_u8, "gdn": gdn_out_u8, "gdn_shuffle": igdn_shuffle_u8}


# --- the eager path: x² and the GDN output as lookup tables ---------------------------------------
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


def square_lut(u8: Tensor, z: Tensor, k: Tensor) -> Tensor:
    """`square_u8` by table lookup (eager; `u8` flat)."""
    return torch.from_numpy(np.take(_lut("square", (z, k)), u8.numpy()))


def gdn_lut(u8: Tensor, n8: Tensor, z: Tensor, k: Tensor, sn: Tensor, zo: Tensor, hi: Tensor,
            inverse: bool) -> Tensor:
    """`gdn_out_u8` by table lookup (eager; `u8`, `n8` flat)."""
    idx = u8.numpy().astype(np.uint16)
    idx <<= 8
    idx |= n8.contiguous().numpy()
    return torch.from_numpy(np.take(_lut("gdn", (z, k, sn, zo, hi), inverse), idx))


def igdn_shuffle_lut(u8: Tensor, n8: Tensor, z: Tensor, k: Tensor, sn: Tensor, zo: Tensor, hi: Tensor,
                     inverse: bool, n: int, h: int, w: int, c: int) -> Tensor:
    """`igdn_shuffle_u8` by table lookup (eager)."""
    return _shuffled(gdn_lut(u8, n8, z, k, sn, zo, hi, inverse), n, h, w, c)


EAGER: dict[str, Callable[..., Tensor]] = {
    "quantize": quantize_u8, "square": square_lut, "gdn": gdn_lut, "gdn_shuffle": igdn_shuffle_lut,
    "dequantize": dequantize}


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
    """The kernels, compiled when possible (first call per kernel compiles; any later shape
    reuses it), else eager. `compiled` says which; `reason` why not."""

    _warned = False

    def __init__(self, compile: bool = True) -> None:
        self.reason = compile_unavailable() if compile else "compilation not asked for"
        self.compiled = self.reason is None
        self._fns: dict[str, Callable[..., Tensor]] = dict(EAGER)
        if self.compiled:
            self._fns.update(compiled_kernels())
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
            if not self.compiled or name not in KERNELS:
                raise
            self.compiled, self.reason = False, f"compilation failed: {type(e).__name__}: {str(e)[:160]}"
            self._fns = dict(EAGER)
            self._warn()
            return self._fns[name](*args)
