"""Insert explicit QDQ around chosen convolutions: the graph a deployed mixed-precision model runs.

For a layer in container int8: input activation Q/DQ to uint8 (asymmetric, from a calibration
range), weights stored int8 per output channel with a DequantizeLinear, bias int32 at scale
s_x·s_w, output Q/DQ to uint8 — the pattern ONNX Runtime fuses into QLinearConv. int16 uses
uint16/int16 the same way (bias stays float: no 16-bit conv kernel consumes it). A bit-width
below the container's width narrows the quantization range (2^b levels) inside the container.
Layer nodes and tensors are renamed `<layer>@…` so profiler events can be traced back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dqsearch.backends import container_of

CONTAINERS = {  # container → (activation type, weight type, numpy weight dtype, width)
    "int8": (TensorProto.UINT8, TensorProto.INT8, np.int8, 8),
    "int16": (TensorProto.UINT16, TensorProto.INT16, np.int16, 16),
}


def calibrate(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], tensors: list[str]
              ) -> dict[str, tuple[float, float]]:
    """Min/max of the named tensors on one FP32 run (the quantization ranges)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, dict(feeds)), strict=True))
    return {t: (float(values[t].min()), float(values[t].max())) for t in tensors}


def insert_qdq(model: onnx.ModelProto, layers: Mapping[str, str], bits: Mapping[str, int],
               ranges: Mapping[str, tuple[float, float]]) -> onnx.ModelProto:
    """A copy of `model` where each layer (name → its Conv node name) runs at `bits[layer]`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    node_layer = {node: layer for layer, node in layers.items()}
    new_nodes, new_inits = [], []

    def act_qdq(tensor: str, tag: str, layer: str, container: str, b: int, dst: str | None = None) -> float:
        atype = CONTAINERS[container][0]
        lo, hi = ranges[tensor]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        levels = 2 ** b - 1
        scale = max(hi - lo, 1e-8) / levels
        zp = int(round(-lo / scale))
        p = f"{layer}@{tag}"
        new_inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{p}.scale"),
                          helper.make_tensor(f"{p}.zero", atype, [], [zp])])
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, f"{p}.scale", f"{p}.zero"], [f"{p}.q"],
                                          name=f"{p}.Q"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{p}.q", f"{p}.scale", f"{p}.zero"],
                                          [dst or f"{p}.dq"], name=f"{p}.DQ"))
        return scale

    for node in g.node:
        layer = node_layer.get(node.name)
        if layer is None:
            new_nodes.append(node)
            continue
        b = int(bits[layer])
        container = container_of(b)
        conv_out = node.output[0]
        node.name = f"{layer}@conv"
        if container == "fp32":
            new_nodes.append(node)
            continue
        _, wtype, wdtype, _width = CONTAINERS[container]
        sx = act_qdq(node.input[0], "in", layer, container, b)
        w = numpy_helper.to_array(inits[node.input[1]])
        axis = 1 if node.op_type == "ConvTranspose" else 0
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        qmax = 2 ** (b - 1) - 1
        sw = (np.maximum(np.abs(w).max(axis=reduce), 1e-12) / qmax).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        wq = np.clip(np.round(w / sw.reshape(shape)), -qmax, qmax).astype(wdtype)
        p = f"{layer}@w"
        new_inits.extend([numpy_helper.from_array(wq, f"{p}.q"), numpy_helper.from_array(sw, f"{p}.scale"),
                          numpy_helper.from_array(np.zeros_like(sw, dtype=wdtype), f"{p}.zero")])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{p}.q", f"{p}.scale", f"{p}.zero"],
                                          [f"{p}.dq"], axis=axis, name=f"{p}.DQ"))
        inputs = [f"{layer}@in.dq", f"{p}.dq"]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]])
            if container == "int8" and node.op_type == "Conv":
                bs = (sx * sw).astype(np.float32)
                bq = np.clip(np.round(bias / bs), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
                new_inits.extend([numpy_helper.from_array(bq, f"{layer}@b.q"),
                                  numpy_helper.from_array(bs, f"{layer}@b.scale"),
                                  numpy_helper.from_array(np.zeros_like(bq), f"{layer}@b.zero")])
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{layer}@b.q", f"{layer}@b.scale",
                                                                       f"{layer}@b.zero"],
                                                  [f"{layer}@b.dq"], axis=0, name=f"{layer}@b.DQ"))
                inputs.append(f"{layer}@b.dq")
            else:
                inputs.append(node.input[2])
        conv = helper.make_node(node.op_type, inputs, [f"{layer}@y"], name=f"{layer}@conv")
        conv.attribute.extend(node.attribute)
        new_nodes.append(conv)
        act_qdq_out = ranges[conv_out]
        ranges = {**ranges, f"{layer}@y": act_qdq_out}
        act_qdq(f"{layer}@y", "out", layer, container, b, dst=conv_out)
    # FP32 layers: name their output `<layer>@y` too (ONNX Runtime names some fused nodes after
    # their output tensor), rewiring consumers and graph outputs
    rename = {}
    for n in new_nodes:
        layer = n.name[:-len("@conv")] if n.name.endswith("@conv") else None
        if layer and n.output[0] != f"{layer}@y":
            rename[n.output[0]] = f"{layer}@y"
            n.output[0] = f"{layer}@y"
    for n in new_nodes:
        for i, t in enumerate(n.input):
            if t in rename and not n.name.endswith("@conv"):
                n.input[i] = rename[t]
    for o in g.output:
        if o.name in rename:
            o.name = rename[o.name]
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    return out


def layer_tensors(model: onnx.ModelProto, layers: Mapping[str, str]) -> list[str]:
    """Input and output activations of the layers' nodes: what `calibrate` must observe."""
    wanted = set(layers.values())
    names = []
    for n in model.graph.node:
        if n.name in wanted:
            names += [n.input[0], n.output[0]]
    return names
