"""The kernels one quantized convolution becomes, per container, as TE computes.

A layer is a float tensor in and a float tensor out (NCHW, no bias: the model's bias add stays in
the graph), so any mix of containers composes without extra glue:

* fp32:  one kernel, TOPI's conv2d / conv2d_transpose.
* int8:  `quantize` (uint8 with zero point, padding — and for a transposed conv the zero
  insertion — folded in, packed NCHW[x]4c) then `conv` (uint8 × int8 → int32 in the packed
  `NCHWc` layout VNNI / sdot kernels need: data [n, C/4, h, w, 4], weights
  [K/16, C/4, kh, kw, 1, 16, 4]) with the dequantize + unpack epilogue in the same kernel.
* int16: `quantize` (symmetric int16, NCHW, padding folded in) then `conv` (int16 × int16 →
  int32) with the dequantize epilogue.

A transposed convolution is the stride-1 convolution of the zero-inserted input with the flipped,
transposed kernel (how TVM lowers it), so both ops share one integer kernel. Every tensor
argument of these kernels has a fixed shape derived from the `LayerSpec`, so two layers of the
same shape produce the same workload (one tuning record serves both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx, topi

from dqsearch.backends import LayerSpec

IC_BLOCK, OC_BLOCK = 4, 16  # NCHWc blocks of the int8 kernel: 4 uint8 per dot, 16 int32 lanes
DTYPE = {"int8": "uint8", "int16": "int16"}  # activation storage per container


def int_ranges(container: str, accumulate: int) -> tuple[tuple[int, int], int]:
    """(activation lo, hi), weight magnitude for a container and `accumulate` products per output.

    int8 uses the full uint8 × int8 ranges (products fit int32 for any realistic layer). int16
    values are limited so that `accumulate` products cannot overflow the int32 accumulator
    (2·b + log2(accumulate) ≤ 31 magnitude bits, at most 15): latency depends on the container,
    not on the values, and the results stay exact.
    """
    if container == "int8":
        return (0, 255), 127
    bits = min(15, (31 - max(1, accumulate - 1).bit_length()) // 2)
    m = 2**bits - 1
    return (-m, m), m


def _ceil_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class Geometry:
    """A layer as the stride-`stride` convolution the integer kernels compute."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_before: tuple[int, int]  # in the (zero-inserted, for deconv) input
    pad_after: tuple[int, int]
    insert: tuple[int, int]  # zero insertion step (the deconv stride); (1, 1) for conv
    out_h: int
    out_w: int

    @property
    def in_h(self) -> int:  # height of the padded (and zero-inserted) input the conv reads
        return (self.h - 1) * self.insert[0] + 1 + self.pad_before[0] + self.pad_after[0]

    @property
    def in_w(self) -> int:
        return (self.w - 1) * self.insert[1] + 1 + self.pad_before[1] + self.pad_after[1]


def geometry(spec: LayerSpec) -> Geometry:
    """The direct-convolution geometry of a conv or transposed conv (groups = 1)."""
    if spec.groups != 1:
        raise ValueError(f"layer {spec.name}: grouped convolutions (groups={spec.groups}) have no TVM "
                         "integer kernel here; only groups=1 layers can be profiled on tvm backends")
    n, c, h, w = spec.input_shape
    kh, kw = spec.kernel
    if spec.op == "deconv":
        if spec.dilation != (1, 1):
            raise ValueError(f"layer {spec.name}: dilated transposed convolutions are not supported")
        before = tuple(k - 1 - p for k, p in zip(spec.kernel, spec.padding, strict=True))
        after = tuple(b + op for b, op in zip(before, spec.output_padding, strict=True))
        if min(before) < 0:
            raise ValueError(f"layer {spec.name}: transposed conv padding larger than kernel - 1")
        g = Geometry(n, c, h, w, spec.out_channels, kh, kw, (1, 1), (1, 1), before, after,
                     spec.stride, 0, 0)
    else:
        g = Geometry(n, c, h, w, spec.out_channels, kh, kw, spec.stride, spec.dilation, spec.padding,
                     spec.padding, (1, 1), 0, 0)
    out_h = (g.in_h - (kh - 1) * g.dilation[0] - 1) // g.stride[0] + 1
    out_w = (g.in_w - (kw - 1) * g.dilation[1] - 1) // g.stride[1] + 1
    if (n, spec.out_channels, out_h, out_w) != tuple(spec.output_shape):
        raise ValueError(f"layer {spec.name}: computed output {(n, spec.out_channels, out_h, out_w)} "
                         f"differs from the traced {tuple(spec.output_shape)}")
    return Geometry(**{**g.__dict__, "out_h": out_h, "out_w": out_w})


# --- weights and quantization parameters (NumPy, folded into the module as constants) ----------
def direct_weight(spec: LayerSpec, weight: np.ndarray) -> np.ndarray:
    """OIHW weights of the direct convolution (a deconv's IOHW kernel flipped and transposed)."""
    if spec.op == "deconv":
        return np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    return weight


@dataclass(frozen=True)
class Quantized:
    """Integer weights and the constants the dequantize epilogue needs."""

    weight: np.ndarray  # packed (int8) or OIHW (int16) integer weights
    scale: np.ndarray  # float32 [K]: s_x · s_w[k]
    offset: np.ndarray  # int32 [K]: zero_point · Σ w_q[k] (int8); zeros for int16
    x_scale: float
    x_zero: int
    x_range: tuple[int, int]

    @property
    def params(self) -> np.ndarray:
        """The `quantize` kernel's runtime parameters: [1 / scale, zero point] (float32)."""
        return np.array([1.0 / self.x_scale, self.x_zero], dtype=np.float32)


def weight_scales(w: np.ndarray, wmax: int) -> np.ndarray:
    m = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return np.where(m > 0, m / wmax, 1.0).astype(np.float32)


def quantize_weights(spec: LayerSpec, weight: np.ndarray, container: str, x_absmax: float) -> Quantized:
    """Per-channel symmetric weights, per-tensor activations covering ±`x_absmax`."""
    w = direct_weight(spec, weight.astype(np.float32))
    (lo, hi), wmax = int_ranges(container, int(np.prod(w.shape[1:])))
    sw = weight_scales(w, wmax)
    wq = np.clip(np.round(w / sw[:, None, None, None]), -wmax, wmax)
    x_absmax = max(float(x_absmax), 1e-6)
    if container == "int8":
        x_scale, x_zero = 2 * x_absmax / (hi - lo), (hi + lo + 1) // 2
        offset = (x_zero * wq.reshape(wq.shape[0], -1).sum(axis=1)).astype(np.int32)
        packed = pack_weight(wq.astype(np.int8))
        k = _ceil_to(w.shape[0], OC_BLOCK)
        offset = np.pad(offset, (0, k - len(offset)))
        scale = np.pad(x_scale * sw, (0, k - len(sw)))
        return Quantized(packed, scale.astype(np.float32), offset, x_scale, x_zero, (lo, hi))
    x_scale = x_absmax / hi
    return Quantized(wq.astype(np.int16), (x_scale * sw).astype(np.float32),
                     np.zeros(w.shape[0], np.int32), x_scale, 0, (lo, hi))


def pack_weight(wq: np.ndarray) -> np.ndarray:
    """OIHW int8 → [K/16, C/4, kh, kw, 1, 16, 4] (zero-padded channels)."""
    k, c, kh, kw = wq.shape
    kp, cp = _ceil_to(k, OC_BLOCK), _ceil_to(c, IC_BLOCK)
    w = np.zeros((kp, cp, kh, kw), np.int8)
    w[:k, :c] = wq
    w = w.reshape(kp // OC_BLOCK, OC_BLOCK, cp // IC_BLOCK, 1, IC_BLOCK, kh, kw)
    return np.ascontiguousarray(w.transpose(0, 2, 5, 6, 3, 1, 4))


# --- TE computes --------------------------------------------------------------------------------
def _source(g: Geometry, y: tirx.PrimExpr, x: tirx.PrimExpr, axis: int) -> tuple[tirx.PrimExpr, ...]:
    """Map a coordinate of the padded/zero-inserted input to (valid, source index)."""
    d = (y if axis == 0 else x) - g.pad_before[axis]
    step, size = g.insert[axis], (g.h, g.w)[axis]
    if step == 1:
        return tirx.all(d >= 0, d < size), d
    idx = tirx.floordiv(d, step)
    return tirx.all(d >= 0, idx < size, tirx.floormod(d, step) == 0), idx


def quantize(g: Geometry, x: te.Tensor, params: te.Tensor, container: str,
             x_range: tuple[int, int]) -> te.Tensor:
    """Float NCHW → the integer input of the conv kernel, padding (and zero insertion) included:
    positions outside the input hold the zero point, i.e. the real value 0.

    `params` = [1 / scale, zero point] is a tensor argument, not a constant in the kernel, so
    layers of one shape with different activation ranges share one workload (and tuning record).
    """
    lo, hi = x_range
    dtype = DTYPE[container]
    inv_scale, zero = params[0], params[1]

    def q(n, c, y, xx):
        vy, iy = _source(g, y, xx, 0)
        vx, ix = _source(g, y, xx, 1)
        ok = tirx.all(vy, vx, c < g.c)
        def clamp(i, size):
            return tirx.max(tirx.min(i, size - 1), 0)

        safe = (n, tirx.min(c, g.c - 1), clamp(iy, g.h), clamp(ix, g.w))
        v = tirx.round(x[safe] * inv_scale) + zero
        v = tirx.max(tirx.min(v, float(hi)), float(lo))
        return tirx.if_then_else(ok, v, zero).astype(dtype)

    if container == "int8":
        cb = _ceil_to(g.c, IC_BLOCK) // IC_BLOCK
        return te.compute((g.n, cb, g.in_h, g.in_w, IC_BLOCK),
                          lambda n, co, y, xx, ci: q(n, co * IC_BLOCK + ci, y, xx), name="quantize")
    return te.compute((g.n, g.c, g.in_h, g.in_w), lambda n, c, y, xx: q(n, c, y, xx), name="quantize")


def conv_int8_acc(g: Geometry, xq: te.Tensor, wq: te.Tensor) -> te.Tensor:
    """uint8 [n, C/4, h, w, 4] × int8 [K/16, C/4, kh, kw, 1, 16, 4] → int32 [n, K/16, oh, ow, 16]."""
    cb, kb = xq.shape[1], wq.shape[0]
    ico = te.reduce_axis((0, cb), "ico")
    ici = te.reduce_axis((0, 1), "ici")
    k4 = te.reduce_axis((0, IC_BLOCK), "k4")
    r = te.reduce_axis((0, g.kh), "r")
    s = te.reduce_axis((0, g.kw), "s")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    return te.compute(
        (g.n, kb, g.out_h, g.out_w, OC_BLOCK),
        lambda n, ko, y, x, ki: te.sum(
            xq[n, ico, y * sh + r * dh, x * sw + s * dw, ici * 4 + k4].astype("int32")
            * wq[ko, ico, r, s, ici, ki, k4].astype("int32"),
            axis=[r, s, ico, ici, k4]),
        name="conv_int8")


def conv_int8(g: Geometry, xq: te.Tensor, wq: te.Tensor, offset: te.Tensor, scale: te.Tensor) -> te.Tensor:
    """uint8 × int8 → int32 in NCHWc, then float NCHW = (acc − offset) · scale."""
    acc = conv_int8_acc(g, xq, wq)
    return te.compute(
        (g.n, g.k, g.out_h, g.out_w),
        lambda n, k, y, x: (acc[n, k // OC_BLOCK, y, x, k % OC_BLOCK] - offset[k]).astype("float32")
        * scale[k],
        name="dequantize")


def conv_int16(g: Geometry, xq: te.Tensor, wq: te.Tensor, scale: te.Tensor) -> te.Tensor:
    """int16 × int16 → int32 in NCHW, then float NCHW = acc · scale."""
    c = te.reduce_axis((0, g.c), "c")
    r = te.reduce_axis((0, g.kh), "r")
    s = te.reduce_axis((0, g.kw), "s")
    (sh, sw), (dh, dw) = g.stride, g.dilation
    acc = te.compute(
        (g.n, g.k, g.out_h, g.out_w),
        lambda n, k, y, x: te.sum(
            xq[n, c, y * sh + r * dh, x * sw + s * dw].astype("int32") * wq[k, c, r, s].astype("int32"),
            axis=[c, r, s]),
        name="conv_int16")
    return te.compute(acc.shape, lambda n, k, y, x: acc[n, k, y, x].astype("float32") * scale[k],
                      name="dequantize")


def conv_fp32(spec: LayerSpec, x: te.Tensor, w: te.Tensor) -> te.Tensor:
    """TOPI's float kernels, as TVM's own legalization would produce them."""
    if spec.op == "deconv":
        return topi.nn.conv2d_transpose_nchw(x, w, list(spec.stride), list(spec.padding), "float32",
                                             list(spec.output_padding))
    return topi.nn.conv2d_nchw(x, w, list(spec.stride), list(spec.padding), list(spec.dilation), "float32")


def int8_macs(spec: LayerSpec) -> int:
    """MACs the int8 kernel executes (channel padding and zero insertion included)."""
    g = geometry(spec)
    return (g.n * g.out_h * g.out_w * _ceil_to(g.k, OC_BLOCK) * _ceil_to(g.c, IC_BLOCK)
            * g.kh * g.kw)


def reference_int32(xq: np.ndarray, wq: np.ndarray, stride: tuple[int, int],
                    dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """NumPy int32 reference of an integer NCHW convolution of already padded input."""
    n, c, h, w = xq.shape
    k, _, kh, kw = wq.shape
    oh = (h - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (w - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    out = np.zeros((n, k, oh, ow), np.int64)
    x64, w64 = xq.astype(np.int64), wq.astype(np.int64)
    for r in range(kh):
        for s in range(kw):
            patch = x64[:, :, r * dilation[0]: r * dilation[0] + (oh - 1) * stride[0] + 1: stride[0],
                        s * dilation[1]: s * dilation[1] + (ow - 1) * stride[1] + 1: stride[1]]
            out += np.einsum("nchw,kc->nkhw", patch, w64[:, :, r, s])
    assert np.abs(out).max(initial=0) < 2**31, "reference overflows int32"
    return out.astype(np.int32)


def unpack_weight(wp: np.ndarray, out_channels: int, in_channels: int) -> np.ndarray:
    kb, cb, kh, kw, _, ko, ki = wp.shape
    w = wp.transpose(0, 5, 1, 4, 6, 2, 3).reshape(kb * ko, cb * ki, kh, kw)
    return w[:out_channels, :in_channels]


def macs_ratio(spec: LayerSpec) -> float:
    """int8 kernel MACs / the layer's own MACs (≥ 1: padding, zero insertion)."""
    return int8_macs(spec) / max(1, spec.macs)


def quantize_numpy(spec: LayerSpec, x: np.ndarray, container: str, q: Quantized) -> np.ndarray:
    """NumPy twin of `quantize`: the padded (zero-inserted) NCHW integer input, unpacked."""
    g = geometry(spec)
    lo, hi = q.x_range
    inv, zero = q.params
    v = np.clip(np.round(x.astype(np.float32) * inv) + zero, lo, hi)
    out = np.full((g.n, g.c, g.in_h, g.in_w), q.x_zero, dtype=np.int64)
    (ph, pw), (sh, sw) = g.pad_before, g.insert
    out[:, :, ph: ph + (g.h - 1) * sh + 1: sh, pw: pw + (g.w - 1) * sw + 1: sw] = v
    return out


def layer_numpy(spec: LayerSpec, x: np.ndarray, container: str, q: Quantized) -> np.ndarray:
    """NumPy reference of an integer layer: quantize, int32 convolution, dequantize."""
    g = geometry(spec)
    xq = quantize_numpy(spec, x, container, q)
    wq = (unpack_weight(q.weight, g.k, g.c) if container == "int8" else q.weight)
    acc = reference_int32(xq, wq, g.stride, g.dilation)
    centred = (acc - q.offset[:g.k, None, None]).astype(np.float32)
    return (centred * q.scale[:g.k, None, None]).astype(np.float32)
