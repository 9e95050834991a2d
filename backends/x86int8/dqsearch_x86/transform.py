"""A transform program (`program.load_program`) as a runnable module on the x86 int8 engine.

Values flow between layers as float NCHW, or as quint8 channels-last where an int8 layer feeds
another (through a fused int8 GDN/IGDN when one sits between them). A sub-pixel int8 layer writes
its 4 phases as phase-major channels; the fused IGDN after it writes the pixel shuffle directly,
anything else unshuffles it to float NCHW first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn.quantized import Conv2d as QConv2d

from .engine import x86
from .kernels import Kernels


def _t(v: float) -> Tensor:
    return torch.tensor(float(v), dtype=torch.float32)


def _unshuffle(x: Tensor) -> Tensor:
    """Phase-major [N, 4C, H, W] (float) → the pixel-shuffled [N, C, 2H, 2W]."""
    n, c4, h, w = x.shape
    c = c4 // 4
    x = x.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, 2 * h, 2 * w).contiguous()


def _quantized_conv(w: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None, stride: list[int],
                    padding: list[int], out_q: tuple[float, int]) -> QConv2d:
    """An x86 int8 Conv2d (call under `engine.x86`: weights are prepacked for the engine)."""
    o, c, kh, kw = w.shape
    qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(np.ascontiguousarray(w)),
                                                  torch.from_numpy(w_scale.astype(np.float64)),
                                                  torch.zeros(o, dtype=torch.long), 0)
    conv = QConv2d(c, o, (kh, kw), stride=tuple(stride), padding=tuple(padding))
    conv.set_weight_bias(qw, None if bias is None else torch.from_numpy(bias.astype(np.float32)))
    conv.scale, conv.zero_point = float(out_q[0]), int(out_q[1])
    return conv


def _gamma_conv(gamma: np.ndarray, beta: np.ndarray, norm_max: float) -> QConv2d:
    """Γx² + β as an int8 1×1 convolution (Γ per output channel symmetric int8, output uint8 over
    [0, norm_max])."""
    c = len(beta)
    w = torch.from_numpy(gamma).reshape(c, c, 1, 1)
    w_scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12).double()
    qw = torch.quantize_per_channel(w, w_scale, torch.zeros(c, dtype=torch.long), 0, torch.qint8)
    conv = QConv2d(c, c, 1)
    conv.set_weight_bias(qw, torch.from_numpy(beta))
    conv.scale, conv.zero_point = max(norm_max, 1e-8) / 255, 0
    return conv


def _fake_quantized_weight(arrays: Mapping[str, np.ndarray], key: str, transposed: bool) -> Tensor:
    """W~ = s_w (q − z_w), the float32 operations of `dqsearch.integer.params.layer_quant`."""
    q = torch.from_numpy(arrays[f"{key}.w_int"].astype(np.float32))
    shape = [1, -1, 1, 1] if transposed else [-1, 1, 1, 1]
    s, z = (torch.from_numpy(arrays[f"{key}.{n}"]).view(shape) for n in ("w_scale", "w_zero"))
    return s * (q - z)


class Layer:
    """One layer of the chain and the activation after it (plain object: no autograd, no hooks)."""

    def __init__(self, e: Mapping[str, Any], arrays: Mapping[str, np.ndarray], key: str):
        self.name, self.kind, self.act = e["name"], e["kind"], e["act"]
        self.bias = arrays.get(f"{key}.bias")
        if self.kind == "int8":
            self.subpixel = bool(e["subpixel"])
            sx, zx = e["in_q"]
            self.in_q = (float(sx), int(zx))
            self.in_hi = (int(e["in_max"]) - int(zx)) * float(sx) if int(e["in_max"]) < 255 else None
            self.in_max = int(e["in_max"])
            self.out_q = (float(e["out_q"][0]), int(e["out_q"][1]))
            self.conv = _quantized_conv(arrays[f"{key}.w"], arrays[f"{key}.w_scale"], self.bias,
                                        e["stride"], e["padding"], self.out_q)
        else:
            self.subpixel = False
            self.transposed = bool(e["transposed"])
            self.stride, self.padding = tuple(e["stride"]), tuple(e["padding"])
            self.output_padding = tuple(e["output_padding"])
            self.weight = (torch.from_numpy(arrays[f"{key}.weight"]) if self.kind == "fp32"
                           else _fake_quantized_weight(arrays, key, self.transposed))
            self.bias_t = None if self.bias is None else torch.from_numpy(self.bias)
            self.x_q = None
            if self.kind == "exact":
                self.x_q = (torch.from_numpy(arrays[f"{key}.x_scale"]).view(1, -1, 1, 1),
                            torch.from_numpy(arrays[f"{key}.x_zero"]).view(1, -1, 1, 1), float(e["qmax"]))
            self.y_q = e.get("y_q")
        if self.act in ("gdn", "igdn"):
            c = len(arrays[f"{key}.beta"])
            self.gamma = torch.from_numpy(arrays[f"{key}.gamma"]).reshape(c, c, 1, 1).contiguous()
            self.beta = torch.from_numpy(arrays[f"{key}.beta"])
            self.gdn_ranges = tuple(float(v) for v in e["gdn_ranges"])

    def int8_gdn(self) -> None:
        """Prepare the int8 GDN after this int8 layer (its next layer is int8 too)."""
        x2_max, norm_max = self.gdn_ranges
        if x2_max <= 0 or norm_max <= 0:
            raise ValueError(f"{self.name}: the export has no calibrated GDN range: re-export")
        self.x2_scale = _t(x2_max / 255)
        self.gconv = _gamma_conv(self.gamma.reshape(len(self.beta), -1).numpy(), self.beta.numpy(), norm_max)
        self.s_t, self.z_t = _t(self.out_q[0]), _t(self.out_q[1])
        self.sn_t, self.zn_t = _t(self.gconv.scale), _t(self.gconv.zero_point)

    # --- float parts ----------------------------------------------------------------------------
    def float_conv(self, x: Tensor) -> Tensor:
        """exact: the fake-quantized layer, same float32 operations as `fake_quantize`; fp32: the conv."""
        if self.x_q is not None:
            s, z, qmax = self.x_q
            x = s * (torch.round(torch.clamp(x / s + z, 0.0, qmax)) - z)
        if self.transposed:
            y = F.conv_transpose2d(x, self.weight, self.bias_t, self.stride, self.padding,
                                   self.output_padding)
        else:
            y = F.conv2d(x, self.weight, self.bias_t, self.stride, self.padding)
        if self.y_q is not None:  # the model quantizes this output (a learned output quantizer)
            s, z = self.y_q
            y = s * (torch.round(torch.clamp(y / s + z, 0.0, 255.0)) - z)
        return y

    def float_act(self, x: Tensor) -> Tensor:
        if self.act == "relu":
            return F.relu(x)
        if self.act in ("gdn", "igdn"):  # compressai.layers.GDN's arithmetic, parameters folded
            norm = F.conv2d(x * x, self.gamma, self.beta)
            return x * (torch.sqrt(norm) if self.act == "igdn" else torch.rsqrt(norm))
        return x


class X86Transform(nn.Module):
    """The transform: float32 NCHW in, float32 NCHW out (`threads` torch threads, x86 engine,
    both restored after each call). `compile=False` runs the fused kernels eagerly."""

    def __init__(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], threads: int = 1,
                 compile: bool = True):
        super().__init__()
        self.transform, self.abs_input = meta["transform"], bool(meta["abs_input"])
        self.threads = int(threads)
        self.in_channels = int(meta["layers"][0]["in_channels"])
        with x86():
            self.layers = [Layer(e, arrays, f"L{i}") for i, e in enumerate(meta["layers"])]
            self.fused = [a.kind == "int8" and b.kind == "int8" and a.act in ("gdn", "igdn")
                          for a, b in zip(self.layers, self.layers[1:], strict=False)] + [False]
            for layer, fused in zip(self.layers, self.fused, strict=True):
                if fused:
                    layer.int8_gdn()
            for layer, nxt in zip(self.layers, self.layers[1:], strict=False):  # the next input quantizer
                if nxt.kind == "int8":
                    layer.next_q = (_t(nxt.in_q[0]), _t(nxt.in_q[1]), _t(nxt.in_max), nxt.in_q)
        self.kernels = Kernels(compile) if any(self.fused) else None

    @property
    def compiled(self) -> bool:
        """Whether the fused GDN kernels run compiled (False: eager, or no int8 GDN here)."""
        return self.kernels is not None and self.kernels.compiled

    def forward(self, x: Tensor) -> Tensor:
        with x86(self.threads):
            return self._run(x)

    def segments(self, x: Tensor, now: Callable[[], float]) -> list[float]:
        """Run once and return [head, layer 0, …, layer n−1] times (s, by `now`): a layer's
        segment runs from its convolution up to the next layer's (its activation and whatever
        the next layer's input needs from it: a requantization, a fused int8 GDN), the head
        everything before the first convolution. Timed like this, a segment depends on its own
        layer's container and the next one's only (`backend.X86Backend.profile_context`)."""
        marks: list[float] = []
        with x86(self.threads):
            self._run(x, marks, now)
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]

    def _run(self, x: Tensor, marks: list[float] | None = None, now: Callable[[], float] | None = None
             ) -> Tensor:
        if marks is not None:
            marks.append(now())
        if self.abs_input:
            x = torch.abs(x)
        q: Tensor | None = None  # the quint8 input of the next layer, when the previous one wrote it
        for i, layer in enumerate(self.layers):
            if layer.kind != "int8":
                if marks is not None:
                    marks.append(now())
                x = layer.float_act(layer.float_conv(x))
                continue
            if q is None:
                if layer.in_hi is not None:  # clip to 2^b − 1 inside the uint8 container
                    x = torch.clamp_max(x, layer.in_hi)
                q = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last),
                                              *layer.in_q, torch.quint8)
            if marks is not None:
                marks.append(now())
            y = layer.conv(q)  # quint8 channels-last; phase-major channels for a sub-pixel layer
            if self.fused[i]:
                q = self._int8_gdn(layer, y)
                continue
            q = None
            x = y.dequantize()
            x = layer.float_act(_unshuffle(x) if layer.subpixel else x.contiguous())
        x = x.contiguous()
        if marks is not None:
            marks.append(now())
        return x

    def _int8_gdn(self, layer: Layer, y: Tensor) -> Tensor:
        """uint8 conv output → int8 GDN/IGDN → the next layer's quint8 input (shuffled if sub-pixel)."""
        so, zo, hi, (so_f, zo_i) = layer.next_q
        u8 = y.int_repr()
        if layer.subpixel:  # the same memory as a [N, C, H, 4W] channels-last image
            n, c4, h, w = u8.shape
            u8 = u8.permute(0, 2, 3, 1).reshape(n, h, 4 * w, c4 // 4).permute(0, 3, 1, 2)
        x2 = self.kernels("square", u8, layer.s_t, layer.z_t, layer.x2_scale)
        norm = layer.gconv(torch._make_per_tensor_quantized_tensor(x2, float(layer.x2_scale), 0))
        n8, sn, zn = norm.int_repr(), layer.sn_t, layer.zn_t
        inverse = layer.act == "igdn"
        if layer.subpixel:
            out = self.kernels("gdn_shuffle", u8, n8, layer.s_t, layer.z_t, sn, zn, so, zo, hi, inverse)
            return torch._make_per_tensor_quantized_tensor(out.permute(0, 3, 1, 2), so_f, zo_i)
        out = self.kernels("gdn", u8, n8, layer.s_t, layer.z_t, sn, zn, so, zo, hi, inverse)
        return torch._make_per_tensor_quantized_tensor(out, so_f, zo_i)
