"""ONNX graphs of deployed transforms (the ort-cpu deployment, `deployment.OrtDeployment`): export
the float twin, then put each layer's learned quantization on it as explicit QuantizeLinear /
DequantizeLinear nodes.

Two arithmetics per quantized layer (see docs/deploy.md for why both exist):

* ``exact`` — activations quantized per input channel with the learned (s_x, z_x), clipped to
  2^b - 1 inside the container, weights the learned integers with per-channel (s_w, z_w), a float
  Conv in between. This is the fake-quantized layer, operation for operation; ONNX Runtime runs
  it as dequantize + fp32 Conv (no integer kernel takes per-channel activation scales).
* ``int8`` — what ONNX Runtime's QLinearConv accepts: one activation scale per tensor (a model
  trained with per-tensor activation quantizers: its learned (s_x, z_x), exact; otherwise the union
  of the learned per-channel clipping ranges at 255 levels), the learned integer weights in int8
  (zero-point 0 where q - z_w fits, the learned one otherwise), an int32 bias and an output
  requantization to uint8: the model's learned output quantizer where it has one (QuantPolicy
  `quantize_outputs`), else a range from calibration. Faster; exact for a model trained with
  per-tensor activations and output quantizers, an approximation otherwise.

16-bit layers always use ``exact`` (the CPU provider has no 16-bit kernels; see FIELD-NOTES).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dqsearch.deploy.artifact import WEIGHT_MODES
from dqsearch.integer.params import LayerQuant, input_params, u8_params

OPSET = 21  # 16-bit QuantizeLinear/DequantizeLinear are in the default domain from opset 21
ARITHMETICS = ("exact", "int8")
_UNSIGNED = {"int8": (TensorProto.UINT8, np.uint8), "int16": (TensorProto.UINT16, np.uint16)}


def export(module: nn.Module, channels: int, input_name: str = "x", output_names: tuple[str, ...] = ("y",)
           ) -> onnx.ModelProto:
    """The module as ONNX with input [1, channels, H, W] (H, W dynamic), legacy exporter: its
    initializer names follow module paths, which is how layers are found again."""
    buf = io.BytesIO()
    x = torch.zeros(1, channels, 16, 16)
    axes = {input_name: {2: "h", 3: "w"}, **{o: {2: f"{o}_h", 3: f"{o}_w"} for o in output_names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def find_convs(model: onnx.ModelProto, paths: Mapping[str, str]) -> dict[str, onnx.NodeProto]:
    """Layer name → its Conv/ConvTranspose node, found by the weight initializer `<path>.weight`."""
    by_weight = {n.input[1]: n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    out = {}
    for layer, path in paths.items():
        node = by_weight.get(f"{path}.weight")
        if node is None:
            raise RuntimeError(f"cannot find layer {layer}'s convolution in the ONNX export (no Conv "
                               f"reads initializer {path}.weight); the exporter renamed it")
        out[layer] = node
    return out


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


class _Builder:
    """Collects the nodes and initializers that replace one conv node."""

    def __init__(self, prefix: str):
        self.p, self.nodes, self.inits = prefix, [], []

    def init(self, suffix: str, array: np.ndarray) -> str:
        name = f"{self.p}{suffix}"
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], suffix: str, **attrs) -> str:
        out = f"{self.p}{suffix}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _exact(b: _Builder, lq: LayerQuant, x: str, conv: onnx.NodeProto) -> list[str]:
    """Per-channel learned activation QDQ + learned integer weights, float conv inputs."""
    atype, adt = _UNSIGNED[lq.container]
    width = 8 if lq.container == "int8" else 16
    xs = b.init("x.scale", lq.x_scale.astype(np.float32))
    xz = b.init("x.zero", lq.x_zero.astype(adt))
    q = b.node("QuantizeLinear", [x, xs, xz], "x.q", axis=1)
    xd = b.node("DequantizeLinear", [q, xs, xz], "x.dq", axis=1)
    if lq.bits < width:  # clip to [0, 2^b - 1] inside the container, on the dequantized values:
        # the bounds (0 - z) s and (2^b - 1 - z) s are the same float32 products DQ computes, so
        # this is exact (ONNX Runtime has no Clip for uint16)
        shape = (1, -1, 1, 1)
        lo = (np.float32(0) - lq.x_zero.astype(np.float32)) * lq.x_scale.astype(np.float32)
        hi = (np.float32(lq.qmax) - lq.x_zero.astype(np.float32)) * lq.x_scale.astype(np.float32)
        xd = b.node("Max", [xd, b.init("x.lo", lo.reshape(shape))], "x.max")
        xd = b.node("Min", [xd, b.init("x.hi", hi.reshape(shape))], "x.min")
    ws = b.init("w.scale", lq.w_scale.astype(np.float32))
    wz = b.init("w.zero", lq.w_zero.astype(adt))
    wd = b.node("DequantizeLinear", [b.init("w.q", lq.w_int.astype(adt)), ws, wz], "w.dq",
                axis=lq.weight_axis)
    inputs = [xd, wd]
    if len(conv.input) > 2 and conv.input[2]:
        inputs.append(conv.input[2])
    return inputs


def int8_weights(lq: LayerQuant, mode: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """Learned integers as int8 with per-channel zero-points: q - z_w (zero-point 0) for a channel
    whose values fit [-128, 127], else q - 128 with zero-point z_w - 128. Exact either way.

    ``symmetric`` stores q - z_w clipped to [-128, 127] with zero-point 0 everywhere: MLAS's
    QLinearConv is ~25% faster without weight zero-points, at the price of clipping the few
    8-bit weights beyond the range (only 8-bit layers can have any)."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"int8 weight mode must be one of {WEIGHT_MODES}, got {mode!r}")
    axis = lq.weight_axis
    shape = [1] * lq.w_int.ndim
    shape[axis] = -1
    centred = lq.w_int - lq.w_zero.reshape(shape)
    if mode == "symmetric":
        return np.clip(centred, -128, 127).astype(np.int8), np.zeros(lq.w_zero.shape, np.int8)
    reduce = tuple(i for i in range(lq.w_int.ndim) if i != axis)
    fits = (centred.min(axis=reduce) >= -128) & (centred.max(axis=reduce) <= 127)
    zero = np.where(fits, 0, lq.w_zero - 128)
    stored = lq.w_int - 128 * (~fits).reshape(shape) - np.where(fits, lq.w_zero, 0).reshape(shape)
    return stored.astype(np.int8), zero.astype(np.int8)


def _int8(b: _Builder, lq: LayerQuant, x: str, conv: onnx.NodeProto,
          out_range: tuple[float, float] | None, weights: str = "exact"
          ) -> tuple[list[str], tuple[float, int]]:
    sx, zx = input_params(lq)
    xs, xz = b.init("x.scale", np.array(sx, np.float32)), b.init("x.zero", np.array(zx, np.uint8))
    if lq.x_per_tensor and lq.qmax < 255:  # clip to 2^b - 1 inside the uint8 container (the lower
        # bound, code 0, is QuantizeLinear's own saturation); on the float input, before the Q
        hi = (np.float32(lq.qmax) - np.float32(zx)) * np.float32(sx)
        x = b.node("Min", [x, b.init("x.hi", np.array(hi, np.float32))], "x.min")
    xd = b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, xs, xz], "x.q"), xs, xz], "x.dq")
    wq, wz = int8_weights(lq, weights)
    ws = b.init("w.scale", lq.w_scale.astype(np.float32))
    wd = b.node("DequantizeLinear", [b.init("w.q", wq), ws, b.init("w.zero", wz)], "w.dq",
                axis=lq.weight_axis)
    inputs = [xd, wd]
    if lq.bias is not None:
        if lq.transposed:  # no integer ConvTranspose kernel: keep its bias float
            inputs.append(conv.input[2])
        else:
            bs = (np.float32(sx) * lq.w_scale).astype(np.float32)
            bq = np.clip(np.round(lq.bias / bs), -(2**31), 2**31 - 1).astype(np.int32)
            inputs.append(b.node("DequantizeLinear", [b.init("b.q", bq), b.init("b.scale", bs),
                                                      b.init("b.zero", np.zeros_like(bq))], "b.dq", axis=0))
    if lq.y_scale is not None:  # a learned output quantizer: the model's own requantization
        return inputs, (lq.y_scale, lq.y_zero)
    return inputs, u8_params(*out_range)


def quantize_graph(model: onnx.ModelProto, convs: Mapping[str, tuple[str, LayerQuant]],
                   arithmetic: str, out_ranges: Mapping[str, tuple[float, float]] | None = None,
                   weights: str = "exact") -> onnx.ModelProto:
    """A copy of the exported float graph with every quantized layer's QDQ in place.

    `convs`: layer → (module path of its conv, LayerQuant of that conv), as `transform_module`
    returns; `out_ranges`: calibrated conv-output ranges, needed by the ``int8`` arithmetic;
    `weights`: how int8 weights are stored (`int8_weights`)."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = find_convs(out, {k: p for k, (p, _) in convs.items()})
    by_node = {id(n): layer for layer, n in nodes.items()}
    new_nodes, dead = [], set()
    for node in g.node:
        layer = by_node.get(id(node))
        lq = convs[layer][1] if layer else None
        if lq is None or not lq.quantized:
            if layer:  # an FP32 layer: named like the quantized ones, so profiler events find it
                node.name = f"{layer}@conv"
            new_nodes.append(node)
            continue
        b = _Builder(f"{layer}@")
        y = node.output[0]
        if arithmetic == "int8" and lq.container == "int8":
            if lq.y_scale is None and (out_ranges is None or layer not in out_ranges):
                raise ValueError(f"int8 arithmetic needs the calibrated output range of {layer}")
            inputs, (so, zo) = _int8(b, lq, node.input[0], node, out_ranges and out_ranges.get(layer),
                                     weights)
            conv_out = f"{layer}@y"
        else:
            inputs, conv_out = _exact(b, lq, node.input[0], node), y
            if lq.y_scale is not None:  # the model quantizes this output: so does its exact graph
                (so, zo), conv_out = (lq.y_scale, lq.y_zero), f"{layer}@y"
        conv = helper.make_node(node.op_type, inputs, [conv_out], name=f"{layer}@conv")
        conv.attribute.extend(node.attribute)
        b.nodes.append(conv)
        if conv_out != y:
            os_, oz = b.init("y.scale", np.array(so, np.float32)), b.init("y.zero", np.array(zo, np.uint8))
            q = b.node("QuantizeLinear", [conv_out, os_, oz], "y.q")
            b.nodes.append(helper.make_node("DequantizeLinear", [q, os_, oz], [y], name=f"{layer}@y.DQ"))
        new_nodes += b.nodes
        g.initializer.extend(b.inits)
        dead.add(node.input[1])
        if lq.bias is not None and inputs[-1] != node.input[2] and len(node.input) > 2:
            dead.add(node.input[2])
    del g.node[:]
    g.node.extend(new_nodes)
    used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name in used or i.name not in dead]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def shuffles_in_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Q → DQ → DepthToSpace becomes Q → DepthToSpace → DQ: the sub-pixel interleave moves bytes
    instead of floats (a per-tensor quantization commutes with a permutation, so it is exact)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            consumers[t] = consumers.get(t, 0) + 1
    scalars = {i.name for i in g.initializer if len(i.dims) == 0}
    for d2s in g.node:
        if d2s.op_type != "DepthToSpace":
            continue
        dq = producer.get(d2s.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or consumers.get(dq.output[0]) != 1:
            continue
        if dq.input[1] not in scalars:  # per-channel scales do not survive the interleave
            continue
        q_out, shuffled = dq.input[0], d2s.output[0]
        d2s.input[0] = q_out
        d2s.output[0] = f"{shuffled}@u8"
        dq.input[0] = f"{shuffled}@u8"
        dq.output[0] = shuffled
    return _toposort(model)


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle after rewriting")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model
