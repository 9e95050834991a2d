"""Walk a CompressAI model, name its convolutions, and swap in quantized blocks per a policy.

Layer names are module paths (`g_a.0`, `h_s.4`, `context_prediction`), stable across runs. Entropy
models (and GDN, which is not a conv module) stay full precision, so `update()`, `compress()` and
`decompress()` keep working. A precision *profile* maps every layer name to its bit-width, with 32
meaning FP32: that is what the bitstream header and the latency tables speak.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from ..units import FP32, INT8_TRANSFORMS  # noqa: F401  (re-exported)
from .autoregressive import patch_autoregressive
from .blocks import GRANULARITIES, QuantizedConv, from_float
from .quantizer import check_bits
from .selector import BitSelector, bits_loss, bits_per_image

# What a stored policy without these fields was trained with (before issue 15).
LEGACY_DEFAULTS = {"fusion": "input-mix", "relaxation": "soft", "selector_features": "mean",
                   "selector_init_std": 0.0}


@dataclass
class LayerPolicy:
    """One layer's precision: `fp32`, `fixed` (one bit-width) or `dynamic` (candidate set)."""

    mode: str
    bits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.bits = tuple(int(b) for b in self.bits)
        if self.mode not in ("fp32", "fixed", "dynamic"):
            raise ValueError(f"layer mode must be fp32, fixed or dynamic, got {self.mode!r}")
        for b in self.bits:
            check_bits(b)


@dataclass
class QuantPolicy:
    """How to quantize a model: the default layer precision, pins, overrides and quantizer options.

    `pin_first` / `pin_last` set the first analysis and last synthesis layer to a bit-width
    (32 = FP32), as quantization papers usually do. `selector="global"` uses one selector on the
    first layer's output for all dynamic layers (DynaQuant eq. 7); it needs the first layer pinned,
    and pins it to the largest candidate when no pin is given. `fusion` / `relaxation` choose how a
    dynamic layer trains (see `blocks.py`); policies stored before they existed load with the
    fusion they were trained with (`LEGACY_DEFAULTS`). `activation_granularity` is `channel`
    (one learned (s, z) per input channel and bit-width, DPA as published; what policies stored
    before the field existed were trained with) or `tensor` (one per tensor: the int8 ONNX export
    then feeds QLinearConv exactly the fake-quantized input). Weights are per output channel
    either way. `quantize_outputs` names transforms among `INT8_TRANSFORMS` (`("g_s",)`: the
    decoder) whose convs get a learned per-tensor 8-bit quantizer on their output when they run at
    <= 8 bits: the uint8 requantization an int8 kernel (QLinearConv) does, learned in QAT instead of
    calibrated at export.
    """

    mode: str = "fixed"
    bits: tuple[int, ...] = (8,)
    quantizer: str = "dpa"
    rounding: str = "dgm"
    beta: float = 1.0
    learn_scale: bool = True
    learn_zero_point: bool = True
    percentile: float | None = None
    leaky_clip: float = 0.0  # gradient slope outside the clipping range (FMPQ); 0 = none
    selector: str = "per-layer"
    selector_pool: int = 2
    selector_hidden: int = 32
    selector_features: str = "mean-std"
    selector_init_std: float = 0.01
    fusion: str = "output"
    relaxation: str = "st"
    activation_granularity: str = "channel"  # input-activation (s, z): per channel or per tensor
    quantize_outputs: tuple[str, ...] = ()  # transforms (of INT8_TRANSFORMS) with output quantizers
    pin_first: int | None = None
    pin_last: int | None = None
    overrides: dict[str, LayerPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bits = tuple(sorted(int(b) for b in self.bits))
        LayerPolicy(self.mode, self.bits if self.mode != "fp32" else ())
        if self.activation_granularity not in GRANULARITIES:
            raise ValueError(f"activation_granularity must be one of {GRANULARITIES}, "
                             f"got {self.activation_granularity!r}")
        self.quantize_outputs = tuple(str(t) for t in self.quantize_outputs)
        if not set(self.quantize_outputs) <= set(INT8_TRANSFORMS):
            raise ValueError(f"quantize_outputs names transforms among {list(INT8_TRANSFORMS)}, "
                             f"got {list(self.quantize_outputs)}")
        if self.selector not in ("per-layer", "global"):
            raise ValueError(f"selector must be 'per-layer' or 'global', got {self.selector!r}")
        self.overrides = {
            k: v if isinstance(v, LayerPolicy) else LayerPolicy(v["mode"], tuple(v.get("bits", ())))
            for k, v in self.overrides.items()
        }

    @classmethod
    def fixed(cls, bits: int, **kw: object) -> QuantPolicy:
        return cls(mode="fixed", bits=(bits,), **kw)

    @classmethod
    def dynamic(cls, candidates: Sequence[int], **kw: object) -> QuantPolicy:
        return cls(mode="dynamic", bits=tuple(candidates), **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bits"] = list(self.bits)
        d["quantize_outputs"] = list(self.quantize_outputs)
        d["overrides"] = {k: {"mode": v.mode, "bits": list(v.bits)} for k, v in self.overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> QuantPolicy:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown quantization policy fields: {sorted(unknown)}")
        return cls(**{**LEGACY_DEFAULTS, **d, "bits": tuple(d.get("bits", (8,)))})

    def layer_policy(self, name: str, first: str, last: str) -> LayerPolicy:
        if name in self.overrides:
            return self.overrides[name]
        pin = self.pin_first if name == first else self.pin_last if name == last else None
        if name == first and pin is None and self.mode == "dynamic" and self.selector == "global":
            pin = max(self.bits)
        if pin is not None:
            return LayerPolicy("fp32") if pin == FP32 else LayerPolicy("fixed", (pin,))
        return LayerPolicy(self.mode, self.bits if self.mode != "fp32" else ())


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d / ConvTranspose2d of the model, in definition order, by module path."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _first_and_last(names: Sequence[str]) -> tuple[str, str]:
    ga = [n for n in names if n.startswith("g_a.")]
    gs = [n for n in names if n.startswith("g_s.")]
    return (ga[0] if ga else names[0]), (gs[-1] if gs else names[-1])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def wrap(model: nn.Module, policy: QuantPolicy) -> nn.Module:
    """Replace every conv of `model` by its quantized twin under `policy` (in place; returns model)."""
    if quantized_layers(model):
        raise ValueError("model is already wrapped; build a fresh model to wrap with another policy")
    layers = conv_layers(model)
    if not layers:
        raise ValueError("model has no Conv2d/ConvTranspose2d layers to quantize")
    names = [n for n, _ in layers]
    first, last = _first_and_last(names)
    unknown = set(policy.overrides) - set(names)
    if unknown:
        raise ValueError(f"policy overrides name unknown layers {sorted(unknown)}; layers are {names}")
    qopts = dict(percentile=policy.percentile)
    if policy.quantizer == "dpa":
        qopts.update(rounding=policy.rounding, beta=policy.beta, learn_scale=policy.learn_scale,
                     learn_zero_point=policy.learn_zero_point, leak=policy.leaky_clip)
    sel_opts = dict(pool=policy.selector_pool, hidden=policy.selector_hidden,
                    features=policy.selector_features, init_std=policy.selector_init_std)
    for name, conv in layers:
        lp = policy.layer_policy(name, first, last)
        if lp.mode == "fixed" and len(lp.bits) != 1:
            raise ValueError(f"layer {name}: fixed precision needs one bit-width, got {lp.bits}")
        block = from_float(conv, mode=lp.mode, candidates=lp.bits, quantizer=policy.quantizer,
                           quantizer_options=qopts, selector=policy.selector,
                           selector_options=sel_opts, fusion=policy.fusion,
                           relaxation=policy.relaxation,
                           activation_granularity=policy.activation_granularity,
                           quantize_output=name.split(".")[0] in policy.quantize_outputs)
        _set_submodule(model, name, block)
    if policy.mode == "dynamic" and policy.selector == "global":
        _attach_global_selector(model, first, policy, sel_opts)
    patch_autoregressive(model)
    model.dq_policy = policy
    return model


def _attach_global_selector(model: nn.Module, first: str, policy: QuantPolicy, opts: dict) -> None:
    layers = quantized_layers(model)
    source = layers[first]
    if source.mode == "dynamic":
        raise ValueError("the global selector reads the first layer's output: pin the first layer")
    targets = [m for n, m in layers.items() if m.mode == "dynamic"]
    if any(m.candidates != targets[0].candidates for m in targets):
        raise ValueError("the global selector needs one candidate set shared by all dynamic layers")
    source.global_selector = BitSelector(source.out_channels, len(targets[0].candidates),
                                         len(targets), **opts)
    object.__setattr__(source, "dispatch_targets", targets)  # references, not submodules


def quantized_layers(model: nn.Module) -> dict[str, QuantizedConv]:
    """Name → quantized block, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedConv)}


def dynamic_layers(model: nn.Module) -> dict[str, QuantizedConv]:
    return {n: m for n, m in quantized_layers(model).items() if m.mode == "dynamic"}


def selectors(model: nn.Module) -> Iterator[BitSelector]:
    return (m for m in model.modules() if isinstance(m, BitSelector))


def set_temperature(model: nn.Module, temperature: float) -> None:
    for sel in selectors(model):
        sel.temperature.fill_(temperature)


def model_bits_loss(model: nn.Module) -> Tensor:
    """L_bits (eq. 9) of the last forward pass: the selectors' probabilities, batch mean."""
    return bits_loss((m.last_probs, m.candidates) for m in dynamic_layers(model).values())


def model_bits_per_image(model: nn.Module) -> Tensor:
    """Each image's L_bits of the last forward pass, shape [batch]."""
    return bits_per_image((m.last_probs, m.candidates) for m in dynamic_layers(model).values())


def layer_probabilities(model: nn.Module) -> dict[str, Tensor]:
    """The last forward's per-image distribution over candidates of each dynamic layer."""
    return {n: m.last_probs for n, m in dynamic_layers(model).items()}


def get_profile(model: nn.Module, index: int = 0) -> dict[str, int]:
    """Bit-width each layer used for image `index` of the last forward (32 for FP32 layers)."""
    profile = {}
    for name, m in quantized_layers(model).items():
        if m.mode == "fp32":
            profile[name] = FP32
        elif m.last_bits is None:
            raise RuntimeError(f"layer {name} has not run in inference mode yet; no profile to read")
        else:
            profile[name] = int(m.last_bits[index])
    return profile


def set_profile(model: nn.Module, profile: Mapping[str, int] | None, allow_fp32: bool = False) -> None:
    """Force every layer to the profile's bit-width (decoding); None returns control to selectors.

    `allow_fp32` lets any layer run unquantized at 32 (sensitivity analysis, not deployment)."""
    layers = quantized_layers(model)
    if profile is None:
        for m in layers.values():
            m.forced_bits = None
        return
    missing, extra = set(layers) - set(profile), set(profile) - set(layers)
    if missing or extra:
        raise ValueError(f"profile does not match the model: missing {sorted(missing)}, "
                         f"unknown {sorted(extra)}")
    for name, m in layers.items():
        b = int(profile[name])
        allowed = m.candidates if m.mode != "fp32" else (FP32,)
        if b not in allowed and not (allow_fp32 and b == FP32):
            raise ValueError(f"layer {name} cannot run at {b} bits; it allows {list(allowed)}")
        m.forced_bits = None if m.mode == "fp32" else b


def clear_forward_state(model: nn.Module) -> None:
    """Forget per-forward records (probabilities, choices) so stale ones cannot leak."""
    for m in quantized_layers(model).values():
        m.last_probs = m.last_bits = m.external_probs = m.last_weights = m.external_selection = None


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Set activation ranges from calibration images (FP32 forward); returns batches used."""
    layers = quantized_layers(model)
    hooks = []
    for m in layers.values():
        if m.mode == "fp32":
            continue
        m.input_quantizer.observed_batches.zero_()
        hooks.append(m.register_forward_pre_hook(lambda mod, inp: mod.input_quantizer.observe(inp[0])))
        if m.output_quantizer is not None:  # the FP32 output of the calibration pass
            m.output_quantizer.observed_batches.zero_()
            hooks.append(m.register_forward_hook(lambda mod, inp, out: mod.output_quantizer.observe(out)))
    was_training = model.training
    model.eval()
    n = 0
    try:
        for m in layers.values():
            m.calibrating = True
        for x in batches:
            model(x)
            n += 1
    finally:
        for h in hooks:
            h.remove()
        for m in layers.values():
            m.calibrating = False
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration needs at least one batch")
    return n


def average_bits(model: nn.Module, profile: Mapping[str, int], weighted: bool = False) -> float:
    """Layer-mean (or parameter-weighted) bit-width of a profile; FP32 layers count as 32."""
    layers = quantized_layers(model)
    weights = {n: (m.weight.numel() if weighted else 1) for n, m in layers.items()}
    total = sum(weights.values())
    return sum(profile[n] * w for n, w in weights.items()) / total


def weight_bytes(model: nn.Module, profile: Mapping[str, int] | None = None) -> dict[str, float]:
    """Model size in bytes: FP32, and with each conv's weights packed at their bit-width.

    `packed` stores a fixed layer at its bits and a dynamic layer at its largest candidate (every
    branch must be derivable at run time); `paper` is DynaQuant's definition, FP32 size × b̄/32 with
    b̄ the profile's parameter-weighted bits. Everything else (biases, GDN, entropy models) is FP32.
    """
    layers = quantized_layers(model)
    total = sum(p.numel() for p in model.parameters())
    conv_params = {n: m.weight.numel() for n, m in layers.items()}
    rest = total - sum(conv_params.values())
    packed = rest * 4.0
    for n, m in layers.items():
        bits = FP32 if m.mode == "fp32" else max(m.candidates)
        packed += conv_params[n] * bits / 8
    fp32 = total * 4.0
    out = {"fp32": fp32, "packed": packed}
    if profile is not None and layers:
        wbar = sum(profile[n] * conv_params[n] for n in layers) / sum(conv_params.values())
        out["paper"] = fp32 * wbar / 32
    return out
