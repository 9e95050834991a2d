"""A transform program (`program.load_program`) as a runnable module on the x86 int8 engine.

Values flow between layers as float NCHW, or as plain uint8 channels-last tensors (the
(scale, zero-point) pairs kept beside them) where an int8 layer feeds another: no quantized tensor
types, so no copies between layers (`onednn`). Each int8 layer's output is one of:

* ``gdn`` — an int8 GDN/IGDN follows and the next layer is int8: uint8 at the layer's output
  quantizer, then x² (kernel), Γx² + β (int8 1×1 conv), the GDN output at the next layer's input
  quantizer (kernel); a sub-pixel layer's phase-major output is read as one image 4× as wide and
  the second kernel writes the pixel shuffle;
* ``direct`` — the next layer is int8 with ReLU or nothing between: uint8 at the next layer's input
  quantizer straight from the convolution, ReLU (and the 2^b − 1 clip) fused into it;
* ``float`` — anything else: the float32 accumulators (or the learned output quantizer's values),
  unshuffled to NCHW for a sub-pixel layer, then the float activation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import x86
from .kernels import Kernels, flat, unflat
from .onednn import Int8Conv, gamma_conv


def _t(v: float) -> Tensor:
    return torch.tensor(float(v), dtype=torch.float32)


def _unshuffle(x: Tensor) -> Tensor:
    """Phase-major [N, 4C, H, W] (float, any layout) → the pixel-shuffled [N, C, 2H, 2W], NCHW."""
    n, c4, h, w = x.shape
    c = c4 // 4
    x = x.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, 2 * h, 2 * w).contiguous()


def _phase_view(u8: Tensor) -> Tensor:
    """A channels-last phase-major [N, 4C, H, W] as the view [N, C, H, 2, W, 2] (NCHW order of
    the shuffled image; no copy)."""
    n, c4, h, w = u8.shape
    return u8.permute(0, 2, 3, 1).view(n, h, w, 2, 2, c4 // 4).permute(0, 5, 1, 3, 2, 4)


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
            self.in_max = int(e["in_max"])
            self.out_q = None if e["out_q"] is None else (float(e["out_q"][0]), int(e["out_q"][1]))
            self.learned_out = bool(e["learned_out"])
            self.w, self.w_scale = arrays[f"{key}.w"], arrays[f"{key}.w_scale"]
            self.stride, self.padding = e["stride"], e["padding"]
            # the input quantizer as a kernel takes it: 1/s, z, 2^b − 1
            self.in_k = (_t(1 / self.in_q[0]), _t(self.in_q[1]), _t(self.in_max))
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

    def plan(self, nxt: Layer | None) -> None:
        """Build the int8 convolution and choose how its output reaches `nxt` (module docstring)."""
        if nxt is not None and nxt.kind == "int8" and self.act in ("gdn", "igdn"):
            self.mode = "gdn"
            if self.out_q is None:
                raise ValueError(f"{self.name}: the export has no output quantizer for its int8 GDN: "
                                 "re-export")
            self._int8_gdn(nxt)
            out_q, post, bounds = self.out_q, "none", None
        elif nxt is not None and nxt.kind == "int8" and self.act in ("relu", "none") and not self.learned_out:
            self.mode = "direct"
            (s, z), top = nxt.in_q, nxt.in_max
            lo = 0.0 if self.act == "relu" else -z * s
            out_q, post, bounds = nxt.in_q, self.act, None
            if top < 255:  # clip to 2^b − 1 inside the uint8 container
                post, bounds = "hardtanh", (lo, (top - z) * s)
        else:
            self.mode = "float"
            out_q, post, bounds = (self.out_q if self.learned_out else None), "none", None
            if out_q is not None:
                self.deq = (_t(out_q[0]), _t(out_q[1]))
        self.conv = Int8Conv(self.w, self.w_scale, self.bias, self.stride, self.padding, self.in_q, out_q,
                             post, bounds)

    def _int8_gdn(self, nxt: Layer) -> None:
        """The int8 GDN's constants, folded: x² at s2 = max x² / 255, the norm over [0, max norm]."""
        x2_max, norm_max = self.gdn_ranges
        if x2_max <= 0 or norm_max <= 0:
            raise ValueError(f"{self.name}: the export has no calibrated GDN range: re-export")
        s, z = self.out_q
        s2 = x2_max / 255
        c = len(self.beta)
        self.gconv = gamma_conv(self.gamma.reshape(c, c).numpy(), self.beta.numpy(), s2, norm_max)
        (so, zo), sn = nxt.in_q, self.gconv.out_q[0]
        self.sq_k = (_t(z), _t(s * s / s2))
        self.gdn_k = (_t(z), _t(s / so), _t(sn), _t(zo), _t(nxt.in_max), self.act == "igdn")

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
            for i, layer in enumerate(self.layers):
                if layer.kind == "int8":
                    layer.plan(self.layers[i + 1] if i + 1 < len(self.layers) else None)
        self.fused = [layer.kind == "int8" and layer.mode == "gdn" for layer in self.layers]
        self.kernels = Kernels(compile) if any(e.kind == "int8" for e in self.layers) else None

    @property
    def compiled(self) -> bool:
        """Whether the fused kernels run compiled (False: eager, or no int8 layer here)."""
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
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.transform} takes [N, {self.in_channels}, H, W], got {list(x.shape)}")
        if marks is not None:
            marks.append(now())
        q: Tensor | None = None  # the uint8 input of the next layer, when the previous one wrote it
        first = True
        for layer in self.layers:
            if layer.kind != "int8":
                if first and self.abs_input:
                    x = torch.abs(x)
                if marks is not None:
                    marks.append(now())
                x = layer.float_act(layer.float_conv(x))
                first = False
                continue
            if q is None:
                q = self.kernels("quantize", x, *layer.in_k, first and self.abs_input)
            first = False
            if marks is not None:
                marks.append(now())
            y = layer.conv(q)  # uint8 or float32, channels-last; phase-major for a sub-pixel layer
            if layer.mode == "gdn":
                q = self._int8_gdn(layer, y)
            elif layer.mode == "direct":
                q = y
            else:
                q, x = None, self._float_out(layer, y)
        x = x.contiguous()
        if marks is not None:
            marks.append(now())
        return x

    def _float_out(self, layer: Layer, y: Tensor) -> Tensor:
        """An int8 layer's output as float NCHW (unshuffled), its activation applied."""
        if y.dtype == torch.uint8:  # the learned output quantizer's values
            n, c, h, w = y.shape
            if layer.subpixel:
                x = self.kernels("dequantize", _phase_view(y), *layer.deq).view(n, c // 4, 2 * h, 2 * w)
            else:
                x = self.kernels("dequantize", y, *layer.deq)
        else:
            x = _unshuffle(y) if layer.subpixel else y
        return layer.float_act(x)

    def _int8_gdn(self, layer: Layer, y: Tensor) -> Tensor:
        """uint8 conv output → int8 GDN/IGDN → the next layer's uint8 input (shuffled if sub-pixel)."""
        n, c, h, w = y.shape
        f = flat(y)
        if layer.subpixel:  # the same memory as an [N, C, H, 4W] channels-last image
            c, w = c // 4, 4 * w
        x2 = self.kernels("square", f, *layer.sq_k)
        norm = flat(layer.gconv(unflat(x2, n, c, h, w)))
        if layer.subpixel:
            out = self.kernels("gdn_shuffle", f, norm, *layer.gdn_k, n, h, w // 4, c)
            return out.permute(0, 3, 1, 2)
        return unflat(self.kernels("gdn", f, norm, *layer.gdn_k), n, c, h, w)
