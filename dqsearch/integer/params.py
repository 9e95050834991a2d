"""The learned integer parameters of each quantized layer at one precision profile, as numpy arrays.

Everything a deployment backend needs is read here once, with the exact arithmetic of
`fake_quantize` (|s| clamped at 1e-8, z rounded half-to-even, clip to [0, 2^b - 1]), so that an
exported layer computes what the fake-quantized PyTorch layer computes: weights are the learned
integers q in [0, 2^b - 1] with per-output-channel (s_w, z_w); input activations have per-input-channel
(s_x, z_x). A per-tensor activation quantizer (`activation_granularity="tensor"`) is read as the
same arrays with every channel's (s_x, z_x) equal (`LayerQuant.x_per_tensor`), so every consumer
works unchanged and the int8 export can take that one pair as QLinearConv's input quantizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..quant.blocks import OUTPUT_BITS, QuantizedConv
from ..quant.wrap import FP32, conv_layers, quantized_layers
from ..units import container_of

_EPS = 1e-8


@dataclass
class LayerQuant:
    """One conv layer as deployed: its float weights (the fake-quantized values W~ for a quantized
    layer) and, when quantized, the integers and quantization parameters behind them."""

    name: str
    transposed: bool
    bits: int
    weight: np.ndarray  # float32, W~ = s_w (q - z_w) for quantized layers, the FP32 weight otherwise
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    w_int: np.ndarray | None = None  # learned integers in [0, 2^b - 1] (int32)
    w_scale: np.ndarray | None = None  # per output channel, float32
    w_zero: np.ndarray | None = None  # per output channel, int32
    x_scale: np.ndarray | None = None  # per input channel, float32
    x_zero: np.ndarray | None = None  # per input channel, int32
    y_scale: float | None = None  # a learned uint8 output quantizer (`quantize_outputs`), if any
    y_zero: int | None = None

    @property
    def container(self) -> str:
        return container_of(self.bits)

    @property
    def quantized(self) -> bool:
        return self.bits != FP32

    @property
    def weight_axis(self) -> int:
        """Output-channel axis of the weight tensor (1 for ConvTranspose's [in, out, kh, kw])."""
        return 1 if self.transposed else 0

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def x_per_tensor(self) -> bool:
        """Whether the input activation has one (s_x, z_x) for every channel (a per-tensor quantizer,
        which an int8 kernel takes as it is)."""
        return (self.x_scale is not None and bool(np.all(self.x_scale == self.x_scale[0]))
                and bool(np.all(self.x_zero == self.x_zero[0])))


def union_range(lq: LayerQuant) -> tuple[float, float]:
    """The smallest range holding every input channel's learned clipping range, and zero."""
    lo = lq.x_scale * (0 - lq.x_zero)
    hi = lq.x_scale * (lq.qmax - lq.x_zero)
    return min(float(lo.min()), 0.0), max(float(hi.max()), 0.0)


def u8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero-point) of an asymmetric uint8 quantizer over [lo, hi] (which holds zero)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def input_params(lq: LayerQuant) -> tuple[float, int]:
    """An int8 kernel's per-tensor input (scale, zero-point): the learned pair itself for a
    per-tensor quantizer (the int8 input is then exactly the fake-quantized one), else the union of
    the learned per-channel clipping ranges at 255 levels (an approximation). One rule for every
    int8 deployment (ort-cpu's QLinearConv, x86-int8's oneDNN convolutions), so all run the same
    integers."""
    if lq.x_per_tensor:
        return float(lq.x_scale[0]), int(lq.x_zero[0])
    return u8_params(*union_range(lq))


def _quant_params(q: nn.Module, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not hasattr(q, "scale"):
        raise ValueError(f"{type(q).__name__} quantizers cannot be deployed as integers: only the "
                         "asymmetric DPA and min/max quantizers (--quantizer dpa|minmax) have a zero-point")
    s = q.scale[str(bits)].detach().abs().clamp_min(_EPS).float()
    z = torch.round(q.zero_point[str(bits)].detach().float())
    return s, z


@torch.no_grad()
def layer_quant(name: str, m: QuantizedConv, bits: int) -> LayerQuant:
    """Read one layer at `bits` (32 = FP32)."""
    transposed = isinstance(m, nn.ConvTranspose2d)
    if m.groups != 1 or tuple(m.dilation) != (1, 1):
        raise ValueError(f"layer {name}: grouped or dilated convolutions are not deployable yet")
    w = m._effective_weight().detach().float()
    common = dict(name=name, transposed=transposed, bits=bits,
                  bias=None if m.bias is None else m.bias.detach().float().numpy().copy(),
                  stride=tuple(m.stride), padding=tuple(m.padding),
                  output_padding=tuple(getattr(m, "output_padding", (0, 0))))
    if bits == FP32:
        return LayerQuant(weight=w.numpy().copy(), **common)
    if bits not in m.candidates:
        raise ValueError(f"layer {name} was trained for bit-widths {list(m.candidates)}, not {bits}")
    axis = m.weight_channel_dim
    shape = [1] * w.dim()
    shape[axis] = -1
    sw, zw = _quant_params(m.weight_quantizer, bits)
    qmax = float(2**bits - 1)
    zr = zw.view(shape)
    q = torch.round(torch.clamp(w / sw.view(shape) + zr, 0.0, qmax))
    w_fq = sw.view(shape) * (q - zr)  # the same float32 operations as fake_quantize
    sx, zx = _quant_params(m.input_quantizer, bits)
    channels = m.in_channels
    if sx.numel() == 1 and channels != 1:  # a per-tensor quantizer: the same pair for every channel
        sx, zx = sx.expand(channels).contiguous(), zx.expand(channels).contiguous()
    out_q = m.output_quantizer if bits <= OUTPUT_BITS else None
    if out_q is not None:
        sy, zy = _quant_params(out_q, OUTPUT_BITS)
        if not 0 <= float(zy) <= 2**OUTPUT_BITS - 1:
            raise ValueError(f"layer {name}: learned output zero-point {float(zy)} is outside uint8")
        common.update(y_scale=float(sy), y_zero=int(zy))
    return LayerQuant(weight=w_fq.numpy().copy(), w_int=q.numpy().astype(np.int32),
                      w_scale=sw.numpy().copy(), w_zero=zw.numpy().astype(np.int32),
                      x_scale=sx.numpy().copy(), x_zero=zx.numpy().astype(np.int32), **common)


def float_layer(name: str, m: nn.Module) -> LayerQuant:
    """A plain (unwrapped) Conv2d / ConvTranspose2d as an FP32 layer."""
    if m.groups != 1 or tuple(m.dilation) != (1, 1):
        raise ValueError(f"layer {name}: grouped or dilated convolutions are not deployable yet")
    mask = getattr(m, "mask", None)
    w = m.weight.detach().float() * (mask if mask is not None else 1.0)
    return LayerQuant(name=name, transposed=isinstance(m, nn.ConvTranspose2d), bits=FP32,
                      weight=w.numpy().copy(),
                      bias=None if m.bias is None else m.bias.detach().float().numpy().copy(),
                      stride=tuple(m.stride), padding=tuple(m.padding),
                      output_padding=tuple(getattr(m, "output_padding", (0, 0))))


def model_layers(model: nn.Module, profile: Mapping[str, int], allow_fp32: bool = False
                 ) -> dict[str, LayerQuant]:
    """Every conv of the model at the profile's bit-widths (32 = FP32), by layer name.

    Quantized layers must appear in `profile`; plain convs (an FP32 checkpoint) are FP32.
    `allow_fp32` lets a quantized layer run unquantized (the FP32 baseline of a benchmark)."""
    layers = quantized_layers(model)
    missing = set(layers) - set(profile)
    if missing:
        raise ValueError(f"profile lacks layers {sorted(missing)}")
    out = {}
    for name, m in conv_layers(model):
        if name not in layers:
            out[name] = float_layer(name, m)
            continue
        bits = int(profile[name])
        q = layers[name]
        if bits == FP32 and q.mode != "fp32" and not allow_fp32:
            raise ValueError(f"layer {name} runs at {list(q.candidates)} bits in this model, not FP32")
        if q.mode == "fp32" and bits != FP32:
            raise ValueError(f"layer {name} is FP32 in this model and cannot run at {bits} bits")
        out[name] = layer_quant(name, q, bits) if bits != FP32 else float_layer(name, q)
    return out
