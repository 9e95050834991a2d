"""Emit one layer at one container into a Relax function: alone (per-layer timing) or in place of
a convolution inside an imported transform (whole-model timing). Both paths emit the very same
kernels, so the table's layer times and the end-to-end graphs run identical code, and a tuning
record made for one serves the other.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from dqsearch.backends import LayerSpec

from . import kernels

#: PrimFunc attribute that keeps a kernel out of Relax operator fusion (kOpaque): a layer's
#: kernels never merge with their neighbours, so per-layer and in-graph kernels are the same
#: workloads and layer times add up.
OPAQUE = {"op_pattern": 8}


def emit_layer(bb: relax.BlockBuilder, spec: LayerSpec, container: str, x: relax.Expr,
               weight: np.ndarray, x_absmax: float) -> relax.Var:
    """Emit `spec` at `container` reading float NCHW `x`; returns the float NCHW result (no bias)."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    tag = f"{spec.op}_{container}"
    # emit_te takes only tensors and plain values: bind the layer's geometry in closures
    if container == "fp32":
        return bb.emit_te(lambda x_, w_: kernels.conv_fp32(spec, x_, w_), x, relax.const(weight),
                          primfunc_name_hint=tag, primfunc_attrs=OPAQUE)
    g = kernels.geometry(spec)
    q = kernels.quantize_weights(spec, weight, container, x_absmax)
    xq = bb.emit_te(lambda x_, p_: kernels.quantize(g, x_, p_, container, q.x_range), x,
                    relax.const(q.params), primfunc_name_hint=f"quantize_{tag}", primfunc_attrs=OPAQUE)
    if container == "int8":
        return bb.emit_te(lambda a, w_, o, s: kernels.conv_int8(g, a, w_, o, s), xq, relax.const(q.weight),
                          relax.const(q.offset), relax.const(q.scale), primfunc_name_hint=tag,
                          primfunc_attrs=OPAQUE)
    return bb.emit_te(lambda a, w_, s: kernels.conv_int16(g, a, w_, s), xq, relax.const(q.weight),
                      relax.const(q.scale), primfunc_name_hint=tag, primfunc_attrs=OPAQUE)


def random_weight(spec: LayerSpec, seed: int) -> np.ndarray:
    """Weights shaped like the torch layer's (OIHW, or IOHW for a transposed conv)."""
    kh, kw = spec.kernel
    shape = ((spec.in_channels, spec.out_channels // spec.groups, kh, kw) if spec.op == "deconv"
             else (spec.out_channels, spec.in_channels // spec.groups, kh, kw))
    fan_in = spec.in_channels // spec.groups * kh * kw
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32) / np.sqrt(fan_in)


def layer_module(spec: LayerSpec, container: str, weight: np.ndarray | None = None,
                 x_absmax: float = 4.0, seed: int = 0) -> tvm.IRModule:
    """`main(x) -> y`: the layer alone, float in and out."""
    weight = random_weight(spec, seed) if weight is None else weight
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(spec.input_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = emit_layer(bb, spec, container, x, weight, x_absmax)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()
