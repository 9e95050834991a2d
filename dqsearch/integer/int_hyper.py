"""Integer-only hyper-synthesis: the scale-table indexes from z_hat with exact integer arithmetic.

The entropy decoder must see exactly the indexes the encoder used. A float h_s gives the same
indexes on one machine, but a few predicted scales sit within 1e-6 of a scale-table boundary, so
another CPU (other SIMD width, FMA, thread count, library) can pick the neighbouring table and the
rest of the stream decodes to garbage. Here every reduction is exact integer arithmetic, so the
indexes are the same on every machine:

* the input z_hat is quantized by h_s's first input quantizer (float64, one correctly rounded
  division and addition per element: identical under IEEE 754 everywhere);
* each layer multiplies integer activations (q - z_x) by fixed-point weights
  round(s_x[c] * s_w[o] * (q_w - z_w) * 2^F) — the per-input-channel activation scale goes into
  the weights, which float kernels cannot do exactly — and accumulates exactly (float64 BLAS on
  integers below 2^53 is exact and order-independent);
* ReLU, then the next layer's input quantizer: the integer accumulator times one stored float64
  constant 1 / (s_x' 2^F), rounded half-to-even — a single correctly rounded IEEE 754 operation per
  element, so its result is unique (no reduction, nothing for a compiler or SIMD width to reorder);
* the last layer's output is compared with integer thresholds floor(t * 2^F) of the scale table.

Speed: the float64 path (`accumulator_reference`) is the reference; where `torch._int_mm` works
and the bounds hold, `indexes`/`accumulator` compute the same integers as int8 limb products
(`limb_hyper`), 3.7–4.4× faster at 768×512; tests hold both paths equal. That path is built on
first use by an input of at least `FAST_MIN_PIXELS` (or by `fast_path()`): building it (~5 ms)
costs more than one small image saves.

Weights and thresholds are computed once at export and stored, so decoders never recompute them.
The result follows the float h_s to about 2^-20 relative precision: indexes differ from the float
path only where a scale is that close to a table boundary (`divergence` shows where).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from . import subpixel
from .limb_hyper import LimbHyper, unshuffle
from .limbs import int8_matmul_works
from .params import LayerQuant

ACC_BITS = 50  # worst-case |accumulator| stays below 2^50 < 2^53 (exact in float64)
FAST_MIN_PIXELS = 64  # z_hat pixels (a 512×512 image) from which a first call builds the int8 path


@dataclass
class IntLayer:
    weight: np.ndarray  # int64 [O, C, k, k], value * 2^frac
    bias: np.ndarray  # int64 [O], value * 2^frac
    frac: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    shuffle: int  # PixelShuffle factor (1 = none)
    x_zero: np.ndarray  # int64 [C]
    qmax: int


def _fixed_layer(lq: LayerQuant) -> IntLayer:
    if lq.transposed:
        if subpixel.plan(lq) is None:
            raise ValueError(f"layer {lq.name} has no sub-pixel form; the integer h_s needs one")
        conv, pads = subpixel.rewrite(lq)
        shuffle = lq.stride[0]
    else:
        conv = lq
        pads = (lq.padding[0], lq.padding[1], lq.padding[0], lq.padding[1])
        shuffle = 1
        if lq.stride != (1, 1):
            raise ValueError(f"layer {lq.name}: the integer h_s supports stride-1 convs and deconvs")
    if not lq.quantized:
        raise ValueError(f"layer {lq.name} is FP32: the integer hyper-synthesis needs every h_s layer "
                         "quantized (export a profile with h_s at <= 16 bits, or use --hyper float)")
    real = (conv.x_scale.astype(np.float64)[None, :, None, None]
            * conv.w_scale.astype(np.float64)[:, None, None, None]
            * (conv.w_int - conv.w_zero[:, None, None, None]).astype(np.float64))
    xmax = float(max(lq.qmax, 1))
    l1 = float(np.abs(real).sum(axis=(1, 2, 3)).max()) or 1.0
    # |acc| <= l1 * 2^frac * xmax (+ bias): keep it below 2^ACC_BITS
    frac = int(np.floor(ACC_BITS - 1 - np.log2(l1 * xmax + 1.0)))
    weight = np.round(np.ldexp(real, frac)).astype(np.int64)
    bias = (np.round(np.ldexp(conv.bias.astype(np.float64), frac)).astype(np.int64)
            if conv.bias is not None else np.zeros(weight.shape[0], np.int64))
    return IntLayer(weight, bias, frac, pads, shuffle, conv.x_zero.astype(np.int64), lq.qmax)


def _conv(q: np.ndarray, layer: IntLayer) -> np.ndarray:
    """Exact Σ (q - z_x) · W for one image [C, H, W] → [O·s², H', W'] int64 (via float64 BLAS)."""
    x = (q - layer.x_zero[:, None, None]).astype(np.float64)
    top, left, bottom, right = layer.pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    o, c, kh, kw = layer.weight.shape
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))  # [C, H', W', kh, kw]
    h, w = win.shape[1:3]
    cols = win.transpose(1, 2, 0, 3, 4).reshape(h * w, c * kh * kw)
    # exact: every product and partial sum is an integer below 2^53, in any summation order
    acc = cols @ layer.weight.reshape(o, -1).astype(np.float64).T
    return acc.T.reshape(o, h, w).astype(np.int64) + layer.bias[:, None, None]


def _shuffle(y: np.ndarray, s: int) -> np.ndarray:
    if s == 1:
        return y
    c, h, w = y.shape
    return y.reshape(c // (s * s), s, s, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (s * s), h * s, w * s)


@dataclass
class IntegerHyperSynthesis:
    """h_s (Conv/ConvTranspose + ReLU chain) → scale-table indexes, integers only."""

    layers: list[IntLayer]
    x_scale: np.ndarray  # first layer's input quantizer, float64
    multipliers: list[np.ndarray]  # per layer boundary: float64 [C], 1 / (s_x' 2^F)
    next_zero: list[np.ndarray]
    thresholds: np.ndarray  # int64 [n_table - 1]: floor(t · 2^frac_last)
    # derived from the fields above on first use (never stored): the int8 limb path; False = not
    # built yet, None = float64 only
    _fast: LimbHyper | None | bool = field(default=False, init=False, repr=False, compare=False)

    def fast_path(self) -> LimbHyper | None:
        """The int8 limb path (built now if not yet), or None where it cannot run here."""
        if self._fast is False:
            self._fast = (LimbHyper.build(self.layers, self.multipliers, self.next_zero, self.thresholds)
                          if int8_matmul_works() else None)
        return self._fast

    def fast_path_for(self, z_hat: np.ndarray) -> LimbHyper | None:
        """The path `indexes(z_hat)` takes now: the int8 limb path, or None for the float64 one
        (a latency table times the same choice)."""
        if self._fast is False and z_hat.shape[-2] * z_hat.shape[-1] < FAST_MIN_PIXELS:
            return None  # one small call: the float64 path is cheaper than building the int8 one
        return self.fast_path()

    @classmethod
    def build(cls, layers: Sequence[LayerQuant], scale_table: Sequence[float]) -> IntegerHyperSynthesis:
        ints = [_fixed_layer(lq) for lq in layers]
        mults, zeros = [], []
        for prev, lq in zip(ints[:-1], layers[1:], strict=True):
            # q' = round(y / s' + z') with y = acc / 2^frac
            mults.append(np.ldexp(1.0 / lq.x_scale.astype(np.float64), -prev.frac))
            zeros.append(lq.x_zero.astype(np.int64))
        table = np.asarray(scale_table, np.float64)[:-1]
        thresholds = np.floor(np.ldexp(table, ints[-1].frac)).astype(np.int64)
        return cls(ints, layers[0].x_scale.astype(np.float64), mults, zeros, thresholds)

    def quantize_input(self, z_hat: np.ndarray) -> np.ndarray:
        """h_s's first input quantizer on z_hat [C, H, W] (float64: correctly rounded everywhere)."""
        first = self.layers[0]
        v = z_hat.astype(np.float64) / self.x_scale[:, None, None] + first.x_zero[:, None, None]
        return np.clip(np.round(v), 0, first.qmax).astype(np.int64)

    def indexes(self, z_hat: np.ndarray) -> np.ndarray:
        """Scale-table indexes [1, M, H, W] (int32) for z_hat [1, N, h, w]."""
        if z_hat.ndim != 4 or z_hat.shape[0] != 1:
            raise ValueError(f"expected z_hat of shape [1, C, H, W], got {z_hat.shape}")
        fast = self.fast_path_for(z_hat)
        if fast is not None:
            try:
                return fast.indexes(fast.accumulator(self.quantize_input(z_hat[0])), self.thresholds)[None]
            except (RuntimeError, IndexError):  # an int8 kernel refused: the reference gives the same
                self._fast = None
        return self.indexes_reference(z_hat)

    def indexes_reference(self, z_hat: np.ndarray) -> np.ndarray:
        """`indexes` by the float64 reference path."""
        if z_hat.ndim != 4 or z_hat.shape[0] != 1:
            raise ValueError(f"expected z_hat of shape [1, C, H, W], got {z_hat.shape}")
        y = self.accumulator_reference(z_hat)
        # index = #{t : y > t} over the ascending thresholds (CompressAI's build_indexes)
        idx = np.searchsorted(self.thresholds, y, side="left")
        return idx[None].astype(np.int32)

    def accumulator(self, z_hat: np.ndarray) -> np.ndarray:
        """The last layer's ReLU'd integer output [M, H, W] (value · 2^F)."""
        fast = self.fast_path_for(z_hat)
        if fast is not None:
            try:
                return unshuffle(fast.accumulator(self.quantize_input(z_hat[0])).to(torch.int64)).numpy()
            except (RuntimeError, IndexError):  # as in `indexes`
                self._fast = None
        return self.accumulator_reference(z_hat)

    def accumulator_reference(self, z_hat: np.ndarray) -> np.ndarray:
        """`accumulator` by float64 BLAS on im2col: the reference the limb path must equal."""
        q = self.quantize_input(z_hat[0])
        for i, layer in enumerate(self.layers):
            y = np.maximum(_shuffle(_conv(q, layer), layer.shuffle), 0)  # ReLU
            if i + 1 < len(self.layers):
                m, z = self.multipliers[i], self.next_zero[i]
                q = np.round(y.astype(np.float64) * m[:, None, None]).astype(np.int64) + z[:, None, None]
                q = np.clip(q, 0, self.layers[i + 1].qmax)
        return y

    def scales(self, z_hat: np.ndarray) -> np.ndarray:
        """The predicted scales before the table lookup (float, for inspection only)."""
        return np.ldexp(self.accumulator(z_hat).astype(np.float64), -self.layers[-1].frac)[None]

    # --- storage --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"x_scale": self.x_scale, "thresholds": self.thresholds,
                                         "count": np.array(len(self.layers))}
        for i, lay in enumerate(self.layers):
            arrays |= {f"{i}.weight": lay.weight, f"{i}.bias": lay.bias, f"{i}.frac": np.array(lay.frac),
                       f"{i}.pads": np.array(lay.pads), f"{i}.shuffle": np.array(lay.shuffle),
                       f"{i}.x_zero": lay.x_zero, f"{i}.qmax": np.array(lay.qmax)}
        for i, (m, z) in enumerate(zip(self.multipliers, self.next_zero, strict=True)):
            arrays |= {f"{i}.mult": m, f"{i}.next_zero": z}
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> IntegerHyperSynthesis:
        with np.load(path, allow_pickle=False) as d:
            n = int(d["count"])
            layers = [IntLayer(d[f"{i}.weight"], d[f"{i}.bias"], int(d[f"{i}.frac"]),
                               tuple(int(v) for v in d[f"{i}.pads"]), int(d[f"{i}.shuffle"]),
                               d[f"{i}.x_zero"], int(d[f"{i}.qmax"])) for i in range(n)]
            return cls(layers, d["x_scale"], [d[f"{i}.mult"] for i in range(n - 1)],
                       [d[f"{i}.next_zero"] for i in range(n - 1)], d["thresholds"])
