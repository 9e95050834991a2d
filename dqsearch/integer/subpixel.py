"""Stride-s ConvTranspose2d as an exactly equivalent Conv2d + PixelShuffle (sub-pixel/polyphase form).

ONNX Runtime's CPU provider has no integer ConvTranspose kernel, so a quantized synthesis transform
runs its deconvolutions in float with quantize/dequantize around them. Each output phase (r, t) of a
transposed convolution is an ordinary stride-1 convolution of the input with a subset of the kernel
taps; stacking the s^2 phases as output channels and interleaving them with PixelShuffle gives the
same result, and the Conv2d gets QLinearConv. The taps are only rearranged (missing taps are the
weight's zero, i.e. the zero-point for integer weights), so learned integers and scales carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .params import LayerQuant


@dataclass(frozen=True)
class Plan1D:
    """Per spatial dimension: equivalent kernel size and zero padding before/after the input."""

    kernel: int
    pad_before: int
    pad_after: int


def plan_1d(k: int, s: int, p: int, op: int) -> Plan1D | None:
    """The stride-1 conv equivalent to each phase of a 1-D transposed conv, or None if there is none
    (the transposed output must be exactly s times the input and the padding non-negative)."""
    if s < 2 or k + op - 2 * p - s != 0:
        return None
    ds = [(kh - r - p) // s for r in range(s) for kh in range(k) if (kh - r - p) % s == 0]
    lo, hi = min(ds), max(ds)
    if lo > 0 or hi < 0:
        return None
    return Plan1D(hi - lo + 1, hi, -lo)


def plan(lq: LayerQuant) -> tuple[Plan1D, Plan1D] | None:
    """Both dimensions' plans for a transposed layer with equal strides, else None."""
    if not lq.transposed or lq.stride[0] != lq.stride[1]:
        return None
    kh, kw = lq.weight.shape[2:]
    ph = plan_1d(kh, lq.stride[0], lq.padding[0], lq.output_padding[0])
    pw = plan_1d(kw, lq.stride[1], lq.padding[1], lq.output_padding[1])
    return None if ph is None or pw is None else (ph, pw)


def _taps(k: int, s: int, p: int, pl: Plan1D) -> list[list[tuple[int, int]]]:
    """For each phase r: (conv tap a, transposed tap kh) pairs."""
    out = []
    for r in range(s):
        pairs = []
        for a in range(pl.kernel):
            kh = s * (pl.pad_before - a) + r + p
            if 0 <= kh < k:
                pairs.append((a, kh))
        out.append(pairs)
    return out


def rearrange(w: np.ndarray, stride: int, padding: tuple[int, int], plans: tuple[Plan1D, Plan1D],
              fill: np.ndarray) -> np.ndarray:
    """ConvTranspose weight [C_in, O, kh, kw] → Conv2d weight [O·s², C_in, Kh, Kw]; output channel
    o·s² + r·s + t is phase (r, t) of channel o (PixelShuffle's order). `fill[o]` is the value of
    a missing tap (0 for float weights, the zero-point for integer ones)."""
    c_in, o_ch, kh, kw = w.shape
    s = stride
    ph, pw = plans
    out = np.empty((o_ch, s, s, c_in, ph.kernel, pw.kernel), dtype=w.dtype)
    out[...] = fill.reshape(o_ch, 1, 1, 1, 1, 1).astype(w.dtype)
    taps_h = _taps(kh, s, padding[0], ph)
    taps_w = _taps(kw, s, padding[1], pw)
    wt = w.transpose(1, 0, 2, 3)  # [O, C_in, kh, kw]
    for r in range(s):
        for t in range(s):
            for a, i in taps_h[r]:
                for b, j in taps_w[t]:
                    out[:, r, t, :, a, b] = wt[:, :, i, j]
    return out.reshape(o_ch * s * s, c_in, ph.kernel, pw.kernel)


def rewrite(lq: LayerQuant) -> tuple[LayerQuant, tuple[int, int, int, int]]:
    """The layer as a stride-1 Conv2d whose output, PixelShuffled by the stride, equals the
    transposed conv; returns it and the (top, left, bottom, right) zero padding of its input."""
    plans = plan(lq)
    if plans is None:
        raise ValueError(f"layer {lq.name} has no sub-pixel form (needs a transposed conv with equal "
                         "strides >= 2 and output size = stride x input size)")
    s = lq.stride[0]
    phases = s * s
    o_ch = lq.weight.shape[1]
    w = rearrange(lq.weight, s, lq.padding, plans, np.zeros(o_ch, np.float32))
    out = replace(lq, transposed=False, weight=w, stride=(1, 1), output_padding=(0, 0),
                  padding=(plans[0].pad_before, plans[1].pad_before),
                  bias=None if lq.bias is None else np.repeat(lq.bias, phases))
    if lq.quantized:
        out.w_int = rearrange(lq.w_int, s, lq.padding, plans, lq.w_zero)
        out.w_scale = np.repeat(lq.w_scale, phases)
        out.w_zero = np.repeat(lq.w_zero, phases)
    pads = (plans[0].pad_before, plans[1].pad_before, plans[0].pad_after, plans[1].pad_after)
    return out, pads
