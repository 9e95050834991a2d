"""Export torch modules to ONNX at a fixed input shape and find each quantizable layer's node."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import onnx
import torch
from torch import nn

OPSET = 21  # 16-bit QuantizeLinear/DequantizeLinear are in the default domain from opset 21
CONV_OPS = ("Conv", "ConvTranspose")


def export(module: nn.Module, input_shape: Sequence[int], seed: int = 0) -> onnx.ModelProto:
    """The module as an ONNX graph with one input `x` of exactly `input_shape` (legacy exporter:
    its node and initializer names follow the module paths, which the layer mapping relies on)."""
    buf = io.BytesIO()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(input_shape), generator=g)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=OPSET,
                          input_names=["x"], output_names=["y"], do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def layer_nodes(model: onnx.ModelProto, prefix: str, layers: Sequence[str]) -> dict[str, str]:
    """Layer name → name of its Conv/ConvTranspose node, for a graph exported from the module at
    path `prefix` (whose parameters are named relative to it: `g_a.2` → initializer `2.weight`)."""
    by_weight = {n.input[1]: n.name for n in model.graph.node if n.op_type in CONV_OPS}
    out = {}
    for layer in layers:
        rel = layer[len(prefix) + 1:] if layer != prefix else ""
        key = f"{rel}.weight" if rel else "weight"
        if key not in by_weight:
            raise RuntimeError(f"cannot find layer {layer}'s convolution in the ONNX export of "
                               f"{prefix!r} (no Conv reads initializer {key!r})")
        out[layer] = by_weight[key]
    return out
