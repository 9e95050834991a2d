"""Tracing: what one forward pass of a (wrapped or plain) CompressAI model shows a backend — the
convolutions' `LayerSpec`s at the input size, the other ops with work, each transform's input —
and `float_model`, the float twin a backend exports before inserting its own quantization."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..units import CONV, DECONV, LayerSpec, parse_input_shape


@dataclass(frozen=True)
class OpSpec:
    """A non-quantized operation with work (GDN, activations, pixel shuffle): the fixed part."""

    name: str
    kind: str  # module class name, e.g. "GDN", "LeakyReLU"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int = 0  # multiply-accumulates (GDN's channel mixing); 0 for element-wise ops

    @property
    def elements(self) -> int:
        return math.prod(self.output_shape)


@dataclass
class ModelTrace:
    """What one forward pass at a given input size shows: layers, other ops, transform inputs."""

    input_shape: tuple[int, int, int, int]
    layers: list[LayerSpec]
    ops: list[OpSpec] = field(default_factory=list)
    group_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.layers]


def _conv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _is_entropy_model(m: nn.Module) -> bool:
    from compressai.entropy_models import EntropyModel

    return isinstance(m, EntropyModel)


@torch.no_grad()
def trace_model(model: nn.Module, input_shape: str | Sequence[int]) -> ModelTrace:
    """Run one forward pass at `input_shape` and record every conv's spec (forward hooks).

    Works on plain and wrapped CompressAI models (quantized blocks are Conv2d/ConvTranspose2d
    subclasses). The model is put in eval mode for the pass and restored afterwards.
    """
    shape = parse_input_shape(input_shape)
    convs = _conv_modules(model)
    if not convs:
        raise ValueError("the model has no Conv2d/ConvTranspose2d layers to profile")
    conv_ids = {id(m) for _, m in convs}
    inside_conv = {id(sub) for _, m in convs for sub in m.modules() if sub is not m}
    specs: dict[str, LayerSpec] = {}
    ops: dict[str, OpSpec] = {}
    group_inputs: dict[str, tuple[int, ...]] = {}
    layer_groups = {n.split(".")[0] for n, _ in convs}
    hooks = []

    def conv_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in specs:  # called twice (shared module): the first call defines the spec
                return
            deconv = isinstance(mod, nn.ConvTranspose2d)
            specs[name] = LayerSpec(
                name=name, op=DECONV if deconv else CONV, in_channels=mod.in_channels,
                out_channels=mod.out_channels, kernel=tuple(mod.kernel_size), stride=tuple(mod.stride),
                padding=tuple(mod.padding), output_padding=tuple(getattr(mod, "output_padding", (0, 0))),
                dilation=tuple(mod.dilation), groups=mod.groups, bias=mod.bias is not None,
                input_shape=tuple(inputs[0].shape), output_shape=tuple(output.shape))
        return hook

    def op_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            if name in ops or not isinstance(output, torch.Tensor) or not inputs:
                return
            x = inputs[0]
            macs = x.shape[1] ** 2 * math.prod(x.shape[2:]) * x.shape[0] if type(mod).__name__ == "GDN" else 0
            ops[name] = OpSpec(name, type(mod).__name__, tuple(x.shape), tuple(output.shape), macs)
        return hook

    def group_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple) -> None:
            if name not in group_inputs and inputs and isinstance(inputs[0], torch.Tensor):
                group_inputs[name] = tuple(inputs[0].shape)
        return hook

    for name, m in model.named_modules():
        if not name:
            continue
        if id(m) in conv_ids:
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif (id(m) not in inside_conv and not _is_entropy_model(m) and name.split(".")[0] in layer_groups
              and (type(m).__name__ == "GDN" or (not list(m.children()) and not list(m.parameters())))):
            hooks.append(m.register_forward_hook(op_hook(name)))
        if "." not in name and name in layer_groups:
            hooks.append(m.register_forward_pre_hook(group_hook(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.rand(shape, device=device))
    except MemoryError:
        raise ValueError(f"not enough memory to run the model at input size {shape[2]}x{shape[3]}; "
                         "profile a smaller --input") from None
    except RuntimeError as e:
        if "alloc" in str(e).lower() or "out of memory" in str(e).lower():
            raise ValueError(f"not enough memory to run the model at input size {shape[2]}x{shape[3]}"
                             "; profile a smaller --input") from None
        raise ValueError(f"the model cannot run at input size {shape[2]}x{shape[3]} ({str(e)[:200]}); "
                         "CompressAI models need height and width divisible by 64") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    order = [n for n, _ in convs if n in specs]
    skipped = [n for n, _ in convs if n not in specs]
    if skipped:
        raise ValueError(f"layers {skipped} did not run in forward(); cannot measure them")
    gdn_inner = [n for n in ops if any(n.startswith(g + ".") for g, o in ops.items() if o.kind == "GDN")]
    for n in gdn_inner:
        ops.pop(n)
    return ModelTrace(shape, [specs[n] for n in order], list(ops.values()), group_inputs)


def extract_layer_specs(model: nn.Module, input_shape: str | Sequence[int]) -> list[LayerSpec]:
    """Specs of every conv in definition order, as they run at `input_shape` (see `trace_model`)."""
    return trace_model(model, input_shape).layers


def float_model(model: nn.Module) -> nn.Module:
    """A deep copy with quantized blocks replaced by plain float convolutions (same weights, mask
    applied) — what a backend exports before inserting its own quantize/dequantize nodes."""
    from ..quant.blocks import QuantizedConv

    out = copy.deepcopy(model).eval()
    for name, m in list(out.named_modules()):
        if isinstance(m, QuantizedConv) or hasattr(m, "mask"):
            spec_mod = (nn.ConvTranspose2d if isinstance(m, nn.ConvTranspose2d) else nn.Conv2d)
            kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                      bias=m.bias is not None)
            if spec_mod is nn.ConvTranspose2d:
                kw["output_padding"] = m.output_padding
            plain = spec_mod(m.in_channels, m.out_channels, m.kernel_size, **kw)
            with torch.no_grad():
                w = m.weight * m.mask if getattr(m, "mask", None) is not None else m.weight
                plain.weight.copy_(w)
                if m.bias is not None:
                    plain.bias.copy_(m.bias)
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, plain)
    return out


def uniform_profile(names: Iterable[str], bits: int) -> dict[str, int]:
    return {n: int(bits) for n in names}
