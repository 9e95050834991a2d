"""The integer hyper-synthesis chain on int8 limb products: conv → ReLU → requantize → … → indexes.

Each step is the reference's own arithmetic on the same integers (`int_hyper.accumulator_reference`):
the accumulators are exact (`limb_conv`), ReLU is exact, the requantization is the same single
correctly rounded float64 multiply, round-half-to-even and clip, and the table lookup counts the
same thresholds (`threshold_lookup`). Only the order of memory traffic differs, so the indexes are
identical; tests compare both paths on random, extreme and trained models.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .limb_conv import LimbConv
from .threshold_lookup import ThresholdLookup
from .workspace import Workspace


@dataclass(frozen=True)
class Requant:
    """ReLU and the next layer's input quantizer, giving the next layer's offset values v - c0'.

    With a positive multiplier, ReLU commutes with the multiply and the rounding, so
    clip(round(max(y, 0)·m) + z, 0, qmax) - c0 = clamp(round(y·m) + z - c0, max(z, 0) - c0, qmax - c0):
    four passes instead of six, the same integers."""

    mult: torch.Tensor  # float64 [O]: 1 / (s_x' 2^F), all > 0
    add: torch.Tensor  # float64 [O]: z_x' - c0'
    lower: torch.Tensor  # float64 [O]: min(max(z_x', 0), qmax') - c0'
    upper: torch.Tensor  # float64 [O]: qmax' - c0'

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        return acc.mul_(self.mult).round_().add_(self.add).clamp_(self.lower, self.upper)


@dataclass(frozen=True)
class LimbHyper:
    """h_s as `LimbConv` layers; `build` gives None where any layer or the table does not fit."""

    convs: list[LimbConv]
    requants: list[Requant]
    lookup: ThresholdLookup | None  # None: np.searchsorted
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    def __getstate__(self) -> dict:  # pickling (a worker process) takes no thread-local tensors
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_local", threading.local())

    @property
    def workspace(self) -> Workspace:
        """This thread's workspace (calls from several threads never share tensors)."""
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = Workspace()
        return ws

    @classmethod
    def build(cls, layers: Sequence, multipliers: Sequence[np.ndarray], next_zero: Sequence[np.ndarray],
              thresholds: np.ndarray) -> LimbHyper | None:
        """From `IntegerHyperSynthesis` parts (`layers`: its `IntLayer`s)."""
        convs = [LimbConv.build(lay.weight, lay.bias, lay.pads, lay.shuffle, lay.x_zero, lay.qmax,
                                channels_first=i == len(layers) - 1)  # the last: indexes are [M, H, W]
                 for i, lay in enumerate(layers)]
        if any(c is None for c in convs):
            return None
        requants = []
        for m, z, nxt, lay in zip(multipliers, next_zero, convs[1:], layers[1:], strict=True):
            m, z = np.asarray(m, np.float64), np.asarray(z, np.int64)
            if not (np.isfinite(m).all() and (m > 0).all()):
                return None
            lower = np.minimum(np.maximum(z, 0), lay.qmax) - nxt.offset
            requants.append(Requant(torch.from_numpy(m),
                                    torch.from_numpy((z - nxt.offset).astype(np.float64)),
                                    torch.from_numpy(lower.astype(np.float64)),
                                    torch.full(m.shape, float(lay.qmax - nxt.offset), dtype=torch.float64)))
        return cls(convs, requants, ThresholdLookup.build(thresholds))

    def accumulator(self, q: np.ndarray) -> torch.Tensor:
        """ReLU'd last-layer accumulators float64 [s, s, O, H, W] (exact integers, phase-major) from
        the first layer's quantized input q [C, H, W]."""
        *_, acc = self.layer_steps(q)
        return acc

    def layer_steps(self, q: np.ndarray) -> Iterator[torch.Tensor]:
        """`accumulator` one layer at a time: yields after each layer (its requantized output, the
        last layer's accumulators at the end), so a latency table can time each layer's share."""
        ws = self.workspace
        first = self.convs[0]
        buf = first.buffer(q.shape[1], q.shape[2], ws)
        _write(first.interior(buf), torch.from_numpy(q - first.offset).permute(1, 2, 0)[None, None])
        for conv, nxt, requant in zip(self.convs, self.convs[1:], self.requants, strict=False):
            x = requant(conv(buf, ws))  # [s, s, h, w, O] offset values of the next layer's input
            buf = nxt.buffer(x.shape[2] * conv.shuffle, x.shape[3] * conv.shuffle, ws)
            _write(nxt.interior(buf), x)
            yield x
        yield self.convs[-1](buf, ws).clamp_min_(0)

    def indexes(self, acc: torch.Tensor, thresholds: np.ndarray) -> np.ndarray:
        """Scale-table indexes int32 [M, H·s, W·s] of `accumulator`'s output."""
        s, _, o, h, w = acc.shape
        if self.lookup is None:
            idx = torch.from_numpy(np.searchsorted(thresholds, acc.to(torch.int64).numpy(), side="left"))
            return unshuffle(idx.to(torch.int32)).contiguous().numpy()
        if s == 1:  # the lookup writes the caller's (fresh) array directly
            out = torch.empty((o, h, w), dtype=torch.int32)
            self.lookup(acc, self.workspace, out=out.view(acc.shape))
            return out.numpy()
        return unshuffle(self.lookup(acc, self.workspace)).contiguous().numpy()  # a copy: fresh


def unshuffle(t: torch.Tensor) -> torch.Tensor:
    """[s, s, O, H, W] (phase-major) → [O, H·s, W·s] (PixelShuffle's output); a view when s = 1."""
    s, _, o, h, w = t.shape
    return t.permute(2, 3, 0, 4, 1).reshape(o, h * s, w * s)


def _write(interior: torch.Tensor, x: torch.Tensor) -> None:
    """Pixel-shuffle x [s, s, h, w, C] (offset values) into interior [J, h·s, w·s, C] as J digits."""
    s, _, h, w, c = x.shape
    if interior.shape[0] == 1:  # copy_ casts to int8 (x holds integers in [-128, 127])
        interior[0].view(h, s, w, s, c).copy_(x.permute(2, 0, 3, 1, 4))
        return
    rest = x.to(torch.int64)
    for j in range(interior.shape[0]):
        d = ((rest + 128) & 255) - 128
        interior[j].view(h, s, w, s, c).copy_(d.permute(2, 0, 3, 1, 4))
        rest = (rest - d) >> 8
