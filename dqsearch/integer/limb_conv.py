"""The integer hyper-synthesis's convolutions as int8 limb products (`limbs`): the same integers, faster.

Layout: activations stay channels-last ([H, W, C], int8 digits) so im2col is one copy with
contiguous runs of C. A pixel-shuffled layer (a sub-pixel ConvTranspose) is computed phase by
phase: each phase (r, t) is a product of its own taps only (a k5 s2 deconvolution's phases use
3×3, 3×2, 2×3 and 2×2 of the 3×3 window: 31% fewer multiplies than the zero-padded kernel) with
its weight digits stacked along the outputs ([K, L·O], columns (digit, channel)), so each phase
is one `torch._int_mm` call (all phases write one int32 tensor, so the digit recombination that
follows is a few whole-tensor operations), and the shuffle folds into the copy that pads the next
layer's input.

Offsets: an input value v (a quantized activation q, or the zero-point z_x that pads the border so
padded taps contribute (z_x - z_x)·w = 0, as in the reference) enters as v - c0 for one constant c0
per layer, the middle of the range of v (one int8 digit up to 8 bits):
Σ (v - z_x)·W = Σ (v - c0)·W + Σ (c0 - z_x)·W, and the last sum is a per-output constant folded
into the bias. Recombining digits (Horner over 256^(j+l)) runs in float64 on integers below 2^52
(`LimbConv.build` checks the bound), so every step is exact and the requantization that follows
sees the very accumulator the reference has; where this layer's digits allow (checked per column:
Σ|a|·(|d_l| + 256 |d_(l+1)|) < 2^31), neighbouring digits are first paired in int32, which halves
the float64 passes.
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
    # int8 [K_pad, N]: rows (kh, kw, C), columns (digit, channel), N = L·O padded; transposed
    # ([N, K_pad], contiguous) for a channels-first layer
    weight: torch.Tensor


@dataclass(frozen=True)
class LimbConv:
    """One layer (stride-1 conv, optional pixel shuffle) as int8 × int8 → int32 products."""

    phases: list[Phase]  # r-major: phase r·s + t
    limbs: int  # weight digits L (the most any phase needs)
    paired: bool  # digits (2i, 2i+1) may be combined in int32 (J = 1 only)
    in_limbs: int  # activation digits J
    offset: int  # c0
    pad_digits: torch.Tensor  # int8 [J, C]: digits of z_x - c0
    bias: torch.Tensor  # float64 [s², O]: bias + Σ (c0 - z_x)·W, per phase
    kernel: tuple[int, int]
    pads: tuple[int, int, int, int]
    shuffle: int
    channels: int  # C
    outputs: int  # O (after the shuffle)
    channels_first: bool  # output [s, s, O, H, W] (else [s, s, H, W, O])

    @classmethod
    def build(cls, weight: np.ndarray, bias: np.ndarray, pads: Sequence[int], shuffle: int,
              x_zero: np.ndarray, qmax: int, channels_first: bool = False) -> LimbConv | None:
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
        w = weight.astype(np.int64).reshape(o, s * s, c, kh, kw)
        # Σ (c0 - z)·W: the constant the input offset adds, with the bias, per phase [s², O]
        shift = w.reshape(o, s * s, c, kh * kw).sum(axis=3) @ (offset - x_zero.astype(np.int64))
        bias_all = (bias.astype(np.int64).reshape(o, s * s) + shift).T
        used = (w != 0).reshape(o, s * s, c, kh * kw).any(axis=2).any(axis=0).reshape(s * s, kh, kw)
        mats, windows = [], []
        for p in range(s * s):  # each phase over its taps' window, as [K, O] with rows (kh, kw, C)
            rows, cols_ = np.nonzero(used[p]) if used[p].any() else (np.array([0]), np.array([0]))
            h0, h1, w0, w1 = int(rows.min()), int(rows.max()) + 1, int(cols_.min()), int(cols_.max()) + 1
            windows.append((h0, h1, w0, w1))
            mats.append(w[:, p, :, h0:h1, w0:w1].transpose(2, 3, 1, 0).reshape(-1, o))
        slop = c * kh * kw * 2**14 * in_limbs  # Horner's partial sums exceed |acc| / 256^e by at most this
        if (x_abs * max(int(np.abs(m).sum(axis=0).max()) for m in mats) + int(np.abs(bias_all).max()) + slop
                >= _EXACT):
            return None
        phase_digits = [digits(m) for m in mats]
        limbs = max(len(d) for d in phase_digits)
        n = max(_ceil8(limbs * o), 24)  # ≥ 17 rows when transposed
        phases, paired = [], in_limbs == 1
        for taps, dm in zip(windows, phase_digits, strict=True):
            k = dm.shape[1]
            full = np.zeros((_ceil8(k), n), np.int8)
            full[:k, :len(dm) * o] = dm.transpose(1, 0, 2).reshape(k, len(dm) * o)
            if paired:  # bound of each digit's product, per column: x_abs · Σ_k |d|
                col = x_abs * np.abs(full.astype(np.int16)).sum(axis=0, dtype=np.int64)[:limbs * o]
                col = col.reshape(limbs, o)
                paired = all(int((col[i] + 256 * col[i + 1]).max()) < 2**31 for i in range(0, limbs - 1, 2))
            full = np.ascontiguousarray(full.T) if channels_first else full
            phases.append(Phase(taps, torch.from_numpy(full)))
        pad_digits = np.zeros((in_limbs, c), np.int8)
        zd = digits(x_zero.astype(np.int64) - offset)
        pad_digits[:len(zd)] = zd
        return cls(phases, limbs, paired, in_limbs, offset, torch.from_numpy(pad_digits),
                   torch.from_numpy(bias_all.astype(np.float64)), (kh, kw), tuple(int(p) for p in pads),
                   s, c, o, channels_first)

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

    def __call__(self, buf: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """Exact accumulators (bias included, no ReLU) of a filled buffer, float64 in phase-major
        order: [s, s, H', W', O], or [s, s, O, H', W'] if `channels_first` (a workspace tensor:
        valid until the next call)."""
        j, hp, wp, c = buf.shape
        kh, kw = self.kernel
        h, w = hp - kh + 1, wp - kw + 1
        m, s, o = h * w, self.shuffle, self.outputs
        channels_first = self.channels_first
        n = self.phases[0].weight.shape[0 if channels_first else 1]
        shape = (s * s, n, j * m) if channels_first else (s * s, j * m, n)
        prod, _ = ws.get((id(self), "prod"), shape, torch.int32)
        sj, sh, sw, _ = buf.stride()
        for i, ph in enumerate(self.phases):
            h0, h1, w0, w1 = ph.taps
            k = (h1 - h0) * (w1 - w0) * c
            k_pad = ph.weight.shape[1 if channels_first else 0]
            cols, new = ws.get((id(self), "cols", i), (j * m, k_pad), torch.int8)
            if new:
                cols[:, k:] = 0  # K padded to a multiple of 8
            cols[:, :k].view(j, h, w, h1 - h0, w1 - w0, c).copy_(
                buf.as_strided((j, h, w, h1 - h0, w1 - w0, c), (sj, sh, sw, sh, sw, 1),
                               buf.storage_offset() + h0 * sh + w0 * sw))
            if channels_first:
                int8_matmul(ph.weight, cols.t(), out=prod[i])
            else:
                int8_matmul(cols, ph.weight, out=prod[i])
        acc, _ = ws.get((id(self), "acc", channels_first),
                        (s, s, o, h, w) if channels_first else (s, s, h, w, o), torch.float64)
        if channels_first:  # prod [s², L·O, J·m]: digit pair (a, l) is rows l·O.., columns a·m..
            out = acc.view(s * s, o, m)
            self._recombine(lambda a, b: prod[:, b * o:(b + 1) * o, a * m:(a + 1) * m], j, out, ws)
            return acc.view(s * s, o, m).add_(self.bias[:, :, None]).view(acc.shape)
        out = acc.view(s * s, m, o)  # prod [s², J·m, L·O]
        self._recombine(lambda a, b: prod[:, a * m:(a + 1) * m, b * o:(b + 1) * o], j, out, ws)
        return out.add_(self.bias[:, None, :]).view(acc.shape)

    def _recombine(self, term: Callable[[int, int], torch.Tensor], j: int, out: torch.Tensor,
                   ws: Workspace) -> None:
        """out = Σ_{a,l} term(a, l) · 256^(a+l), exactly (float64 integers below 2^52). Every
        int32 → float64 conversion goes through a workspace tensor: a mixed-dtype torch.add would
        allocate a hidden float64 temporary, whose fresh pages cost more than the add."""
        wide, _ = ws.get((id(self), "wide"), out.shape, torch.float64)

        def add(x: torch.Tensor, scale: int) -> None:  # out = x + scale · out
            torch.add(wide.copy_(x) if x.dtype != torch.float64 else x, out, alpha=scale, out=out)

        if not self.paired:
            top = j + self.limbs - 2
            out.copy_(_diagonal(term, j, self.limbs, top, wide))
            for e in range(top - 1, -1, -1):
                add(_diagonal(term, j, self.limbs, e, wide), 256)
            return
        pair, _ = ws.get((id(self), "pair"), out.shape, torch.int32)
        groups = [(i, i + 1) if i + 1 < self.limbs else (i,) for i in range(0, self.limbs, 2)]

        def group(g: tuple[int, ...]) -> torch.Tensor:  # P_2i + 256 P_2i+1, exact in int32 (checked)
            if len(g) == 1:
                return term(0, g[0])
            return torch.add(term(0, g[0]), term(0, g[1]), alpha=256, out=pair)

        out.copy_(group(groups[-1]))
        for g in reversed(groups[:-1]):
            add(group(g), 65536)


def _diagonal(term: Callable[[int, int], torch.Tensor], j: int, limbs: int, e: int, wide: torch.Tensor
              ) -> torch.Tensor:
    """Σ_{a + b = e} term(a, b): one int32 term, or their sum in `wide` (float64, exact) when several."""
    terms = [term(a, e - a) for a in range(max(0, e - limbs + 1), min(j, e + 1))]
    if len(terms) == 1:
        return terms[0]
    wide.copy_(terms[0])
    for t in terms[1:]:
        wide.add_(t)
    return wide
