"""The integer hyper-synthesis's convolutions as int8 limb products (`limbs`): the same integers, faster.

Layout: activations stay channels-last ([H, W, C], int8 digits) so im2col is one copy with
contiguous runs of C. A pixel-shuffled layer (a sub-pixel ConvTranspose) is computed phase by
phase: each phase (r, t) is a product of its own taps only (a k5 s2 deconvolution's phases use
3×3, 3×2, 2×3 and 2×2 of the 3×3 window: 31% fewer multiplies than the zero-padded kernel) with
its weight digits stacked along the outputs ([K, L·O], columns (digit, channel)), so each phase
is one `torch._int_mm` call, and the shuffle folds into the copy that pads the next layer's input.

Offsets: an input value v (a quantized activation q, or the zero-point z_x that pads the border so
padded taps contribute (z_x - z_x)·w = 0, as in the reference) enters as v - c0 for one constant c0
per layer, the middle of the range of v (one int8 digit up to 8 bits):
Σ (v - z_x)·W = Σ (v - c0)·W + Σ (c0 - z_x)·W, and the last sum is a per-output constant folded
into the bias. Recombining digits (Horner over 256^(j+l)) runs in float64 on integers below 2^52
(`LimbConv.build` checks the bound), so every step is exact and the requantization that follows
sees the very accumulator the reference has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .limbs import MAX_K, digit_count, digits, int8_matmul
from .workspace import Workspace

_EXACT = 2**52  # accumulator bound (with margin) below which float64 holds every partial sum



def _ceil8(n: int) -> int:
    return -(-n // 8) * 8


@dataclass(frozen=True)
class Phase:
    """One output phase (r, t): its taps' window and its weight digits."""

    taps: tuple[int, int, int, int]  # rows kh0:kh1, columns kw0:kw1 of the kernel window
    weight: torch.Tensor  # int8 [K_pad, L·O padded to 8]: rows (kh, kw, C), columns (digit, channel)
    weight_t: torch.Tensor  # int8 [L·O padded, K_pad]: the same, transposed (channels-first output)
    limbs: int  # L
    bias: torch.Tensor  # float64 [O]: bias + Σ (c0 - z_x)·W over the phase's taps


@dataclass(frozen=True)
class LimbConv:
    """One layer (stride-1 conv, optional pixel shuffle) as int8 × int8 → int32 products."""

    phases: list[Phase]  # r-major: phase r·s + t
    in_limbs: int  # activation digits J
    offset: int  # c0
    pad_digits: torch.Tensor  # int8 [J, C]: digits of z_x - c0
    kernel: tuple[int, int]
    pads: tuple[int, int, int, int]
    shuffle: int
    channels: int  # C
    outputs: int  # O (after the shuffle)

    @classmethod
    def build(cls, weight: np.ndarray, bias: np.ndarray, pads: Sequence[int], shuffle: int,
              x_zero: np.ndarray, qmax: int) -> LimbConv | None:
        """Digits and constants of one integer layer (weight int64 [O·s², C, kh, kw] in PixelShuffle
        channel order), or None where a bound would not hold (callers keep float64)."""
        o_s2, c, kh, kw = weight.shape
        s = shuffle
        lo, hi = min(0, int(x_zero.min())), max(qmax, int(x_zero.max()))
        if c * kh * kw > MAX_K or o_s2 % (s * s):
            return None
        offset = (lo + hi + 1) // 2  # v - c0 in [-128, 127] when the range spans ≤ 256 values
        in_limbs = digit_count(lo - offset, hi - offset)
        x_abs = max(offset - lo, hi - offset)
        o = o_s2 // (s * s)
        w6 = weight.reshape(o, s, s, c, kh, kw)
        b3 = bias.reshape(o, s, s)
        phases = []
        for r in range(s):
            for t in range(s):
                phase = _phase(w6[:, r, t], b3[:, r, t], x_zero.astype(np.int64), offset)
                bound = x_abs * phase[1] + phase[2] + c * kh * kw * 256 * in_limbs * 8
                if bound >= _EXACT:
                    return None
                phases.append(phase[0])
        pad_digits = np.zeros((in_limbs, c), np.int8)
        zd = digits(x_zero.astype(np.int64) - offset)
        pad_digits[:len(zd)] = zd
        return cls(phases, in_limbs, offset, torch.from_numpy(pad_digits), (kh, kw),
                   tuple(int(p) for p in pads), s, c, o)

    def buffer(self, h: int, w: int, ws: Workspace) -> torch.Tensor:
        """The padded input [J, H + pads, W + pads, C] with the zero-point's digits on the border
        (callers overwrite the interior; the border stays from the first call)."""
        top, left, bottom, right = self.pads
        shape = (self.in_limbs, h + top + bottom, w + left + right, self.channels)
        buf, new = ws.get((id(self), "buffer"), shape, torch.int8)
        if new:
            buf.copy_(self.pad_digits[:, None, None, :].expand_as(buf))
        return buf

    def interior(self, buf: torch.Tensor) -> torch.Tensor:
        """The view of `buf` [J, Hp, Wp, C] that holds the input pixels."""
        top, left, bottom, right = self.pads
        return buf[:, top:buf.shape[1] - bottom, left:buf.shape[2] - right]

    def __call__(self, buf: torch.Tensor, ws: Workspace, channels_first: bool = False) -> torch.Tensor:
        """Exact accumulators (bias included, no ReLU) of a filled buffer, float64 in phase-major
        order: [s, s, H', W', O], or [s, s, O, H', W'] with `channels_first` (a workspace tensor:
        valid until the next call)."""
        j, hp, wp, c = buf.shape
        kh, kw = self.kernel
        h, w = hp - kh + 1, wp - kw + 1
        m, s, o = h * w, self.shuffle, self.outputs
        shape = (s, s, o, h, w) if channels_first else (s, s, h, w, o)
        acc, _ = ws.get((id(self), "acc"), shape, torch.float64)
        sj, sh, sw, _ = buf.stride()
        for i, ph in enumerate(self.phases):
            h0, h1, w0, w1 = ph.taps
            k = (h1 - h0) * (w1 - w0) * c
            cols, new = ws.get((id(self), "cols", i), (j * m, ph.weight.shape[0]), torch.int8)
            if new:
                cols[:, k:] = 0  # K padded to a multiple of 8
            cols[:, :k].view(j, h, w, h1 - h0, w1 - w0, c).copy_(
                buf.as_strided((j, h, w, h1 - h0, w1 - w0, c), (sj, sh, sw, sh, sw, 1),
                               buf.storage_offset() + h0 * sh + w0 * sw))
            out = acc[i // s, i % s]
            if channels_first:  # [L·O, J·m]: term (j, l) is rows l·O.., columns j·m..
                prod = int8_matmul(ph.weight_t, cols.t(), ws, (id(self), "prod", i))
                out = out.view(o, m)
                _horner(lambda jj, ll, p=prod: p[ll * o:(ll + 1) * o, jj * m:(jj + 1) * m], j, ph.limbs, out)
                out.add_(ph.bias[:, None])
            else:  # [J·m, L·O]
                prod = int8_matmul(cols, ph.weight, ws, (id(self), "prod", i))
                out = out.view(m, o)
                _horner(lambda jj, ll, p=prod: p[jj * m:(jj + 1) * m, ll * o:(ll + 1) * o], j, ph.limbs, out)
                out.add_(ph.bias)
        return acc


def _phase(w: np.ndarray, b: np.ndarray, x_zero: np.ndarray, offset: int) -> tuple[Phase, int, int]:
    """One phase's digits (w int64 [O, C, kh, kw]) with the bound terms max Σ|W| and max |bias|."""
    o, c, kh, kw = w.shape
    used = np.nonzero(w.any(axis=(0, 1)))
    if len(used[0]) == 0:  # an all-zero phase: one zero tap keeps the shapes valid
        used = (np.array([0]), np.array([0]))
    h0, h1, w0, w1 = used[0].min(), used[0].max() + 1, used[1].min(), used[1].max() + 1
    k = (h1 - h0) * (w1 - w0) * c
    mat = w[:, :, h0:h1, w0:w1].transpose(2, 3, 1, 0).reshape(k, o)  # rows (kh, kw, C)
    bias = b + w.sum(axis=(2, 3)) @ (offset - x_zero)  # Σ (c0 - z)·W: the padding's offset
    d = digits(mat)  # [L, K, O]
    limbs = len(d)
    full = np.zeros((_ceil8(k), _ceil8(limbs * o)), np.int8)
    full[:k, :limbs * o] = d.transpose(1, 0, 2).reshape(k, limbs * o)
    phase = Phase((int(h0), int(h1), int(w0), int(w1)), torch.from_numpy(full),
                  torch.from_numpy(np.ascontiguousarray(full.T)), limbs,
                  torch.from_numpy(bias.astype(np.float64)))
    return phase, int(np.abs(mat).sum(axis=0).max()), int(np.abs(bias).max())


def _horner(term: Callable[[int, int], torch.Tensor], j: int, limbs: int, out: torch.Tensor) -> None:
    """out = Σ_{j,l} term(j, l) · 256^(j+l), exactly (float64 integers below 2^52)."""
    top = j + limbs - 2
    out.copy_(_diagonal(term, j, limbs, top))
    for e in range(top - 1, -1, -1):
        torch.add(_diagonal(term, j, limbs, e), out, alpha=256, out=out)


def _diagonal(term: Callable[[int, int], torch.Tensor], j: int, limbs: int, e: int) -> torch.Tensor:
    """Σ_{a + b = e} term(a, b): one int32 term, or their float64 sum (exact) when several."""
    terms = [term(a, e - a) for a in range(max(0, e - limbs + 1), min(j, e + 1))]
    if len(terms) == 1:
        return terms[0]
    out = terms[0].to(torch.float64)
    for t in terms[1:]:
        out.add_(t)
    return out
