"""The backend plugin contract: what a backend measures, what it is given, and what it returns.

A backend turns one quantized convolution (a `LayerSpec`) at one bit-width into a latency
`Measurement`, and can time a whole model at a bit profile. Layer specs are read from a real
forward pass (hooks), so they hold the exact shapes a layer sees at a given input size, wrapped
(quantized) or not. Bit profiles map layer names to bit-widths, 32 meaning FP32.
"""

from __future__ import annotations

import copy
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

FP32 = 32


def container_of(bits: int) -> str:
    """The integer container a bit-width executes in: int8 for 2..8, int16 for 9..16, fp32 for 32."""
    if bits == FP32:
        return "fp32"
    if 2 <= bits <= 8:
        return "int8"
    if 9 <= bits <= 16:
        return "int16"
    raise ValueError(f"no container for {bits}-bit layers: use 2..16 bits or 32 (FP32)")


CONV, DECONV = "conv", "deconv"


# --- measurements -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """Latency statistics in milliseconds; `samples` keeps the raw timings (one per repeat)."""

    median: float
    mean: float
    std: float
    min: float
    max: float
    n: int
    samples: tuple[float, ...] = ()
    unit: str = "ms"

    @classmethod
    def from_samples(cls, samples: Iterable[float]) -> Measurement:
        xs = tuple(float(s) for s in samples)
        if not xs:
            raise ValueError("a measurement needs at least one sample")
        bad = [s for s in xs if not math.isfinite(s) or s < 0]
        if bad:
            raise ValueError(f"latency samples must be finite and non-negative, got {bad[:3]}")
        return cls(median=statistics.median(xs), mean=statistics.fmean(xs),
                   std=statistics.pstdev(xs) if len(xs) > 1 else 0.0,
                   min=min(xs), max=max(xs), n=len(xs), samples=xs)

    @classmethod
    def exact(cls, ms: float) -> Measurement:
        """A computed (not timed) latency, e.g. from an analytical model: one sample, no spread."""
        return cls.from_samples([ms])

    def value(self, statistic: str = "median") -> float:
        if statistic not in ("median", "mean", "min"):
            raise ValueError(f"statistic must be median, mean or min, got {statistic!r}")
        return float(getattr(self, statistic))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = [round(s, 6) for s in self.samples]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "measurement") -> Measurement:
        """Validate and load; errors name the offending field (`where` is its path in the file)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object with median/mean/std/min/max/n, got {d!r}")
        if d.get("unit", "ms") != "ms":
            raise ValueError(f"{where}.unit: only 'ms' is supported, got {d.get('unit')!r}")
        out = {}
        for key in ("median", "mean", "std", "min", "max"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{where}.{key}: expected a finite non-negative number, got {v!r}")
            out[key] = float(v)
        n = d.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}.n: expected a positive integer, got {n!r}")
        samples = d.get("samples", [])
        if not isinstance(samples, list) or not all(isinstance(s, (int, float)) for s in samples):
            raise ValueError(f"{where}.samples: expected a list of numbers")
        if out["min"] > out["median"] + 1e-9 or out["median"] > out["max"] + 1e-9:
            raise ValueError(f"{where}: min ≤ median ≤ max does not hold ({out['min']}, "
                             f"{out['median']}, {out['max']})")
        return cls(**out, n=n, samples=tuple(float(s) for s in samples))


# --- layer specs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One convolution as a backend needs it: op kind, hyper-parameters and the shapes it sees."""

    name: str
    op: str  # "conv" or "deconv" (ConvTranspose2d)
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    input_shape: tuple[int, int, int, int] = (1, 1, 1, 1)  # N, C, H, W
    output_shape: tuple[int, int, int, int] = (1, 1, 1, 1)

    def __post_init__(self) -> None:
        if self.op not in (CONV, DECONV):
            raise ValueError(f"layer {self.name}: op must be 'conv' or 'deconv', got {self.op!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"layer {self.name}: channels must divide by groups={self.groups}")

    @property
    def group(self) -> str:
        """The top-level transform the layer belongs to (g_a, h_s, …)."""
        return self.name.split(".")[0]

    @property
    def weight_count(self) -> int:
        return self.in_channels * self.out_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward (batch included); for a transposed conv each input
        pixel scatters a full kernel, so the count follows the input, not the output."""
        n, _, h, w = self.input_shape if self.op == DECONV else self.output_shape
        per_pixel = self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        return n * h * w * self.out_channels * per_pixel

    @property
    def input_elements(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_elements(self) -> int:
        return math.prod(self.output_shape)

    def module(self) -> nn.Module:
        """A float torch layer with these hyper-parameters (random weights): for isolated timing."""
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                  groups=self.groups, bias=self.bias)
        if self.op == DECONV:
            return nn.ConvTranspose2d(self.in_channels, self.out_channels, self.kernel,
                                      output_padding=self.output_padding, **kw)
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "spec") -> LayerSpec:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        fields = cls.__dataclass_fields__
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        missing = [k for k in ("name", "op", "in_channels", "out_channels", "kernel", "input_shape")
                   if k not in d]
        if missing:
            raise ValueError(f"{where}: missing fields {missing}")
        try:
            return cls(**{k: tuple(int(x) for x in v) if isinstance(v, list) else v for k, v in d.items()})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


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


MAX_INPUT_BATCH = 16
MAX_INPUT_PIXELS = 16 * 2**20  # per image: a latency table for larger inputs is not useful


def parse_input_shape(shape: str | Sequence[int]) -> tuple[int, int, int, int]:
    """`"768x512"` (H×W), `(H, W)` or `(N, C, H, W)` → (N, C, H, W) with N=1, C=3 by default."""
    if isinstance(shape, str):
        try:
            dims = tuple(int(v) for v in shape.lower().replace("×", "x").split("x"))
        except ValueError:
            raise ValueError(f"input size {shape!r}: write HxW, e.g. 768x512") from None
    else:
        dims = tuple(int(v) for v in shape)
    if len(dims) == 2:
        dims = (1, 3, *dims)
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"input size {shape!r}: expected HxW or N,C,H,W with positive sizes")
    n, c, h, w = dims
    if n > MAX_INPUT_BATCH or c != 3 or h * w > MAX_INPUT_PIXELS:
        raise ValueError(f"input size {shape!r}: latency is profiled on one to {MAX_INPUT_BATCH} RGB "
                         f"images of at most {MAX_INPUT_PIXELS // 2**20} MP")
    return dims  # type: ignore[return-value]


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


# --- the backend contract ---------------------------------------------------------------------
class Backend(ABC):
    """A device that runs quantized convolutions. Subclass it and register under the entry-point
    group `dqsearch.backends` (see docs/plugins.md); `dqsearch.backends.testing` checks the result.

    Subclasses set `name` (the registry name, e.g. "ort-cpu") and implement `capabilities`,
    `profile_layer` and `profile_model`. Optional hooks refine latency tables: `profile_fixed` (the
    time of everything not quantized) and `profile_context` (layer times measured inside the graph,
    plus transition costs between neighbouring layers of different containers).
    """

    name: str = "backend"
    #: True when bit-widths sharing a container run the very same program (only scales differ),
    #: so a table measures one bit-width per container and records it for the others.
    latency_by_container: bool = False

    @abstractmethod
    def capabilities(self) -> dict[int, str]:
        """Bit-widths this backend executes → the container each runs in, e.g. {6: "int8", 32: "fp32"}."""

    @abstractmethod
    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        """Latency of one layer at `bits` (weights and input activations at that precision)."""

    @abstractmethod
    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """End-to-end latency of the model's transforms with each layer at its profile bit-width."""

    def metadata(self) -> dict[str, Any]:
        """Device, versions, threads… recorded in every latency table this backend writes. Use the
        keys in `identity.IDENTITY_KEYS` (cpu, board, target, threads, versions, tuned…) for the
        facts that change latencies: they decide whether a study may reuse a table."""
        return {}

    def identity(self) -> dict[str, Any]:
        """What must match for a table measured by another instance to predict this one: by default
        the identity fields of `metadata()`. Override to add a fact metadata does not hold."""
        from .identity import identity_of

        return identity_of(self.metadata())

    def required_bits(self) -> set[int]:
        """Bit-widths a table must include. By default 32 when the fixed part is derived as
        profile_model(FP32) − Σ FP32 layers (no `profile_fixed`, no graph context); checked before
        anything is measured."""
        if not self.measures_context and type(self).profile_fixed is Backend.profile_fixed:
            return {FP32}
        return set()

    def profile_fixed(self, model: nn.Module, trace: ModelTrace) -> Measurement | None:
        """Time of everything that is not a quantized layer (GDN, activations, glue). None: unknown."""
        return None

    def profile_context(self, model: nn.Module, trace: ModelTrace, bits: Sequence[int], *,
                        progress: bool = False, store: dict | None = None,
                        save: Callable[[], None] | None = None,
                        isolated: Mapping[str, Mapping[int, Measurement]] | None = None
                        ) -> ContextProfile | None:
        """Layer times measured in their graph, fixed time and transition costs.

        Not overriding it means layers are independent (an isolated time is also the in-model
        time). `store` is a JSON-able dict kept in the table file: put raw runs there and call
        `save()` after each, so a resumed profile repeats none of them. `isolated` holds the
        table's layers timed alone (layer → bits → Measurement), for backends that anchor on them.
        """
        return None

    # helpers shared by every backend
    @property
    def measures_context(self) -> bool:
        """Whether this backend overrides `profile_context` (layer times depend on neighbours)."""
        return type(self).profile_context is not Backend.profile_context

    def container(self, bits: int) -> str:
        caps = self.capabilities()
        if bits not in caps:
            raise ValueError(f"backend {self.name} cannot run {bits}-bit layers; it supports "
                             f"{sorted(caps)} (32 = FP32)")
        return caps[bits]

    def check_profile(self, names: Iterable[str], bit_profile: Mapping[str, int]) -> None:
        names = list(names)
        missing, extra = set(names) - set(bit_profile), set(bit_profile) - set(names)
        if missing or extra:
            raise ValueError(f"bit profile does not match the model: missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}")
        for n in names:
            self.container(int(bit_profile[n]))


@dataclass
class ContextProfile:
    """In-graph measurements: per layer per container latency, the fixed part, and the extra cost
    when a layer of container a feeds a layer of container b (a ≠ b), per connected layer pair."""

    layers: dict[str, dict[str, Measurement]]
    fixed: Measurement
    transitions: list[dict[str, Any]]  # {"from": l, "to": l2, "cost": {"int8>fp32": ms, …}}
    info: dict[str, Any] = field(default_factory=dict)
