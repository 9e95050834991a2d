"""One int8 convolution on oneDNN (the kernels behind PyTorch's x86 quantized engine) over plain
uint8 channels-last tensors.

`torch.ao.nn.quantized.Conv2d` runs the same kernel on quint8 tensors, but reading its output as
bytes (`int_repr`, ~13× slower than a memcpy on channels-last) and wrapping bytes back into a
quint8 tensor (`_make_per_tensor_quantized_tensor`) copy between every layer: ~6 ms of a 24 ms
g_s. `torch.ops.onednn.qconv_pointwise` takes and returns plain tensors, the (scale, zero-point)
pairs travel beside them, and the result is bit-identical to QConv2d (tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: the post-ops qconv_pointwise fuses (others, e.g. a GDN, run as separate kernels)
POST_OPS = ("none", "relu", "hardtanh")


class Int8Conv:
    """uint8 channels-last [N, C, H, W] at `in_q` → uint8 at `out_q` (or float32 accumulators,
    bias included, when `out_q` is None: oneDNN's float output needs output scale 1.0), channels-last.
    Weights are int8 without zero-points (`quantize.symmetric_int8`) with per-output-channel scales,
    prepacked once. `post_op` "relu" or "hardtanh" (with `bounds` (lo, hi) in float units) is
    applied before the output quantizer."""

    def __init__(self, w_int8: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None,
                 stride: Sequence[int], padding: Sequence[int], in_q: tuple[float, int],
                 out_q: tuple[float, int] | None, post_op: str = "none",
                 bounds: tuple[float, float] | None = None) -> None:
        if post_op not in POST_OPS:
            raise ValueError(f"qconv_pointwise fuses only {POST_OPS}, not {post_op!r}")
        self.in_q = (float(in_q[0]), int(in_q[1]))
        self.out_q = None if out_q is None else (float(out_q[0]), int(out_q[1]))
        self.stride, self.padding = [int(v) for v in stride], [int(v) for v in padding]
        self.out_channels = len(w_int8)
        self.w_scale = torch.from_numpy(np.asarray(w_scale, dtype=np.float32).copy())
        self.w_zero = torch.zeros(len(w_int8), dtype=torch.int32)
        self.bias = None if bias is None else torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
        w = torch.from_numpy(np.ascontiguousarray(w_int8, dtype=np.int8))
        self.weight = torch.ops.onednn.qconv_prepack(w, self.w_scale, *self.in_q, self.stride, self.padding,
                                                     [1, 1], 1, None)
        self.post_op = post_op
        self.scalars: list[float] = [] if post_op != "hardtanh" else [float(bounds[0]), float(bounds[1])]
        self.out = (1.0, 0, torch.float32) if self.out_q is None else (*self.out_q, torch.uint8)

    def __call__(self, u8: Tensor) -> Tensor:
        s, z, dtype = self.out
        return torch.ops.onednn.qconv_pointwise(u8, *self.in_q, self.weight, self.w_scale, self.w_zero,
                                                self.bias, self.stride, self.padding, [1, 1], 1, s, z,
                                                dtype, self.post_op, self.scalars, "")


def gamma_conv(gamma: np.ndarray, beta: np.ndarray, x2_scale: float, norm_max: float) -> Int8Conv:
    """A GDN's Γx² + β as an int8 1×1 convolution: Γ (C × C) symmetric int8 per output channel, a
    uint8 x² at `x2_scale` in, a uint8 norm over [0, norm_max] out."""
    c = len(beta)
    w = np.asarray(gamma, dtype=np.float32).reshape(c, c, 1, 1).astype(np.float64)
    w_scale = np.maximum(np.abs(w).reshape(c, -1).max(axis=1) / 127, 1e-12)
    wq = np.clip(np.round(w / w_scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
    return Int8Conv(wq, w_scale, np.asarray(beta, np.float32), (1, 1), (0, 0), (x2_scale, 0),
                    (max(norm_max, 1e-8) / 255, 0))
