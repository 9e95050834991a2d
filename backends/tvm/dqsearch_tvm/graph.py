"""Whole transforms (g_a, g_s, h_a, h_s…) in Relax, with each layer at its profile's container.

A transform is imported once per input size: `torch.export` → `from_exported_program` (the path
that handles every CompressAI transform: GDN, transposed and sub-pixel convs, attention). The
import keeps each layer's weight as a constant, so a layer's convolution is found by its weight
(GDN's own 1×1 convolution computes its weight at run time and is left alone). For a bit profile,
every layer's convolution is replaced by `layer.emit_layer` — the very kernels the per-layer
modules time — and the rest of the graph (bias adds, GDN, activations, glue) stays as imported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from dqsearch.backends import LayerSpec, container_of, float_model, parse_input_shape, trace_model

from .layer import emit_layer

CONV_OPS = ("relax.nn.conv2d", "relax.nn.conv2d_transpose")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class Transform:
    """One imported transform: its float Relax module, layers, weights and calibration."""

    name: str
    input: np.ndarray  # a real input (from a forward pass of the model)
    specs: list[LayerSpec]
    mod: tvm.IRModule
    weights: dict[str, np.ndarray]
    absmax: dict[str, float]  # max |input| of each layer in that forward pass
    by_digest: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return [s.name for s in self.specs]

    def module(self, bit_profile: Mapping[str, int]) -> tvm.IRModule:
        """The transform with each layer at `bit_profile[layer]`'s container."""
        containers = {n: container_of(int(bit_profile[n])) for n in self.layers}
        return _Rewriter(self, containers).run()


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, t: Transform, containers: Mapping[str, str]) -> None:
        super().__init__(t.mod)
        self.t, self.containers = t, containers
        self.specs = {s.name: s for s in t.specs}
        self.seen: list[str] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in CONV_OPS
                and isinstance(call.args[1], tvm.ir.Constant)):
            return call
        w = call.args[1].value.numpy()
        name = self.t.by_digest.get(_digest(w))
        if name is None:
            raise RuntimeError(f"{self.t.name}: a convolution with weights {w.shape} matches no layer "
                               f"of {self.t.layers}; the import changed the weights")
        self.seen.append(name)
        return emit_layer(self.builder_, self.specs[name], self.containers[name], call.args[0],
                          self.t.weights[name], self.t.absmax[name])

    def run(self) -> tvm.IRModule:
        for gv, func in self.t.mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        missing = sorted(set(self.t.layers) - set(self.seen))
        if missing:
            raise RuntimeError(f"{self.t.name}: layers {missing} were not found in the imported graph")
        return self.builder_.get()


def _forward_stats(model: nn.Module, shape: tuple[int, ...], groups: Sequence[str],
                   layers: Mapping[str, nn.Module], seed: int) -> tuple[dict, dict]:
    """One forward pass: each transform's input and each layer's input range."""
    inputs: dict[str, np.ndarray] = {}
    absmax: dict[str, float] = {}
    hooks = []

    def keep_input(g: str):  # pre-hooks must return None, or they replace the input
        def hook(_m: nn.Module, args: tuple) -> None:
            inputs.setdefault(g, args[0].detach().cpu().numpy().copy())
        return hook

    def keep_range(n: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            absmax.setdefault(n, float(args[0].detach().abs().max()))
        return hook

    hooks += [model.get_submodule(g).register_forward_pre_hook(keep_input(g)) for g in groups]
    hooks += [m.register_forward_pre_hook(keep_range(n)) for n, m in layers.items()]
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            model(torch.rand(shape, generator=gen))
    finally:
        for h in hooks:
            h.remove()
    return inputs, absmax


def import_model(model: nn.Module, input_shape: str | Sequence[int], seed: int = 0) -> list[Transform]:
    """Every transform that holds layers, imported into Relax at the shape it sees."""
    from tvm.relax.frontend.torch import from_exported_program

    shape = parse_input_shape(input_shape)
    trace = trace_model(model, shape)
    plain = float_model(model).eval()
    layer_mods = {s.name: plain.get_submodule(s.name) for s in trace.layers}
    groups = list(trace.group_inputs)
    inputs, absmax = _forward_stats(plain, shape, groups, layer_mods, seed)
    out = []
    for g in groups:
        specs = [s for s in trace.layers if s.group == g]
        weights = {s.name: layer_mods[s.name].weight.detach().cpu().numpy().astype(np.float32)
                   for s in specs}
        digests = {_digest(w): n for n, w in weights.items()}
        if len(digests) != len(weights):
            raise ValueError(f"{g}: two layers share identical weights; cannot tell them apart in the graph")
        x = torch.from_numpy(inputs[g])
        with torch.no_grad():
            ep = torch.export.export(plain.get_submodule(g), (x,))
        mod = from_exported_program(ep, unwrap_unit_return_tuple=True)
        out.append(Transform(g, inputs[g], specs, mod, weights,
                             {n: absmax.get(n, 1.0) for n in weights}, digests))
    return out
