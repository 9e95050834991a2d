"""The graphs ort-cpu times are the graphs its deployment builds (issue 16).

A latency table must time what `dqsearch export --backend ort-cpu` deploys, so this module has no
QDQ insertion of its own: it gives the profiler a post-training-quantized copy of the model (every
conv wrapped over the bit-widths the backend runs, activation ranges calibrated on the bundled
sample images) and builds each transform at a bit profile with the deployment's own builder,
`deployment.transform_graph` (float twin with deployed weights, sub-pixel deconvolutions, folded
GDN, `onnx_graph.quantize_graph`, uint8 PixelShuffle). Timing does not depend on the weight
values, only on the graph and the kinds of kernels it gets, so a PTQ copy stands in for any
trained checkpoint of the architecture.

Rules that make the profiled graph the deployed one (`dqsearch.deploy.artifact.Options` defaults):

* arithmetic ``int8`` (QLinearConv, per-tensor activation scale) for the int8 layers of g_a and
  g_s, ``exact`` (learned per-channel QDQ around a float conv) for every other transform and for
  16-bit layers (`Options.arithmetic_of`);
* a deconvolution runs in sub-pixel form (Conv + PixelShuffle) exactly when it runs in int8
  arithmetic (`--subpixel auto`, `deployment.subpixel_rule`: only the int8 form gets a faster
  kernel from it; `docs/deploy.md`, "Rewrites"), so a layer's form depends on its own bits only;
* int8 weights stored as `--int8-weights` says (``exact``: learned zero-points).

* h_s as the export's `--hyper` says: ``integer`` (the default; ScaleHyperprior only) runs the
  integer-only hyper-synthesis (`dqsearch.integer.int_hyper`: int8 limb products where `_int_mm`
  runs, ~3 ms at 768×512; the float64 reference, ~10 ms, elsewhere), timed per layer here as the
  runtime runs it (`time_integer_hyper`); ``float`` the ONNX h_s graph.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from torch import nn

from dqsearch.backends import FP32, container_of
from dqsearch.deploy.artifact import ARITHMETICS, WEIGHT_MODES
from dqsearch.deploy.calibrate import output_ranges, ptq_copy
from dqsearch.integer.int_entropy import scale_table
from dqsearch.integer.int_hyper import IntegerHyperSynthesis, _conv, _shuffle
from dqsearch.integer.params import LayerQuant, float_layer, layer_quant
from dqsearch.quant.wrap import quantized_layers
from dqsearch.units import INT8_TRANSFORMS

#: recorded as metadata["graph"] in every table (an identity key): which builder timed it
GRAPH_BUILDER = "deployment"
GRAPH_VERSION = 1
QUANT_BITS = tuple(range(2, 17))  # every integer bit-width the backend runs


HYPER = ("integer", "float")


def graph_metadata(arithmetic: str, int8_weights: str, hyper: str) -> dict:
    return {"builder": GRAPH_BUILDER, "version": GRAPH_VERSION, "arithmetic": arithmetic,
            "int8_weights": int8_weights, "subpixel": "each deconvolution that runs in int8",
            "hyper": hyper, **({"integer_h_s": _integer_h_s_path()} if hyper == "integer" else {})}


def _integer_h_s_path() -> str:
    """Which integer h_s the runtime runs here (an identity key: tables timed on the other are
    not reused)."""
    from dqsearch.integer.limbs import int8_matmul_works

    return "int8 limb products" if int8_matmul_works() else "float64 reference"


def check_options(arithmetic: str, int8_weights: str, hyper: str = "integer") -> None:
    if hyper not in HYPER:
        raise ValueError(f"hyper must be one of {HYPER}, got {hyper!r}")
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    if int8_weights not in WEIGHT_MODES:
        raise ValueError(f"int8_weights must be one of {WEIGHT_MODES}, got {int8_weights!r}")


def arithmetic_of(transform: str, arithmetic: str) -> str:
    return arithmetic if transform in INT8_TRANSFORMS else "exact"


def abs_input(model: nn.Module, transform: str) -> bool:
    """ScaleHyperprior's h_a reads |y| (the deployment puts the Abs into the h_a graph)."""
    return (transform == "h_a" and isinstance(model, ScaleHyperprior)
            and not isinstance(model, MeanScaleHyperprior))


class QuantizedCopy:
    """A PTQ copy of a model for profiling: every conv wrapped dynamic over `bits` (DPA
    quantizers, the training default), activation ranges calibrated on `batches`; `layers(profile)`
    gives the LayerQuant a trained checkpoint would give at that profile, `ranges` the int8 output
    ranges (measured once, at 8 bits: their values do not change the graph)."""

    def __init__(self, model: nn.Module, batches: Iterable[torch.Tensor] | None = None,
                 bits: Sequence[int] = QUANT_BITS) -> None:
        self.model, images = ptq_copy(model, bits, batches)
        self._blocks = quantized_layers(self.model)
        self._cache: dict[tuple[str, int], LayerQuant] = {}
        self.ranges = output_ranges(self.model, dict.fromkeys(self._blocks, 8), images)

    def layer(self, name: str, bits: int) -> LayerQuant:
        key = (name, int(bits))
        if key not in self._cache:
            m = self._blocks[name]
            self._cache[key] = float_layer(name, m) if bits == FP32 else layer_quant(name, m, int(bits))
        return self._cache[key]

    def layers(self, profile: Mapping[str, int]) -> dict[str, LayerQuant]:
        return {n: self.layer(n, b) for n, b in profile.items()}


def subpixel_layers(transform: str, layers: Mapping[str, LayerQuant], arithmetic: str) -> list[str]:
    """The deconvolutions the deployment's graph of `transform` has in sub-pixel form
    (`--subpixel auto`, the default: those that run in int8)."""
    from .deployment import subpixel_rule

    return subpixel_rule(transform, layers, arithmetic_of(transform, arithmetic))


def transform_graph(q: QuantizedCopy, transform: str, profile: Mapping[str, int], arithmetic: str = "int8",
                    int8_weights: str = "exact", model: nn.Module | None = None) -> onnx.ModelProto:
    """`transform` of the quantized copy at `profile` (its layers → bits), as the deployment
    builds it; input `x`, output `y`, height and width dynamic. A transform that is one conv
    (a context model's `context_prediction`) is built as a one-layer transform."""
    from .deployment import transform_graph as build

    if transform in profile:  # the transform is the layer itself
        holder = nn.Sequential(OrderedDict([(transform, nn.Sequential(q.model.get_submodule(transform)))]))
        lq = q.layer(transform, profile[transform])
        graph = build(holder, transform, {f"{transform}.0": lq}, arithmetic_of(transform, arithmetic),
                      {f"{transform}.0": q.ranges[transform]} if transform in q.ranges else None,
                      subpixel_layers(transform, {f"{transform}.0": lq}, arithmetic), False, int8_weights)
        for node in graph.graph.node:
            if node.name == f"{transform}.0@conv":
                node.name = f"{transform}@conv"
        return graph
    layers = q.layers({n: b for n, b in profile.items() if n.startswith(transform + ".")})
    for name, lq in layers.items():
        if lq.quantized and container_of(lq.bits) not in ("int8", "int16"):
            raise ValueError(f"layer {name}: {lq.bits} bits has no container")
    return build(q.model, transform, layers, arithmetic_of(transform, arithmetic), q.ranges,
                 subpixel_layers(transform, layers, arithmetic), abs_input(model or q.model, transform),
                 int8_weights)


def has_integer_hyper(model: nn.Module) -> bool:
    """Whether the export's default integer h_s exists for this architecture (scales only)."""
    return isinstance(model, ScaleHyperprior) and not isinstance(model, MeanScaleHyperprior)


def integer_hyper(q: QuantizedCopy, profile: Mapping[str, int]) -> IntegerHyperSynthesis:
    """The integer h_s the export builds (`h_s_int.npz`) for the h_s layers of `profile` (in order)."""
    return IntegerHyperSynthesis.build([q.layer(n, b) for n, b in profile.items()], scale_table(q.model))


def time_integer_hyper(hyper: IntegerHyperSynthesis, names: Sequence[str], z_hat: np.ndarray,
                       warmup: int, repeats: int, clock: Callable[[], float] = time.thread_time
                       ) -> dict[str, list[float]]:
    """Per run, ms: each layer's step of `IntegerHyperSynthesis.indexes` as the deployed runtime
    runs it — the int8 limb path (`LimbHyper.layer_steps`) where it runs here, else the float64
    reference (integer conv, shuffle, ReLU, requantization) — and, under HEAD, the rest (input
    quantizer, scale-table lookup)."""
    fast = hyper.fast_path_for(z_hat)  # the path the runtime takes for this input
    out: dict[str, list[float]] = {"_head": [], **{n: [] for n in names}}
    for i in range(warmup + repeats):
        t = clock()
        q = hyper.quantize_input(z_hat[0])
        step = {"_head": clock() - t}
        if fast is not None:
            steps = fast.layer_steps(q)
            for name in names:
                t = clock()
                acc = next(steps)
                step[name] = clock() - t
            t = clock()
            fast.indexes(acc, hyper.thresholds)
            step["_head"] += clock() - t
        else:
            for j, (name, layer) in enumerate(zip(names, hyper.layers, strict=True)):
                t = clock()
                y = np.maximum(_shuffle(_conv(q, layer), layer.shuffle), 0)
                if j + 1 < len(hyper.layers):
                    m, z = hyper.multipliers[j], hyper.next_zero[j]
                    q = np.round(y.astype(np.float64) * m[:, None, None]).astype(np.int64) + z[:, None, None]
                    q = np.clip(q, 0, hyper.layers[j + 1].qmax)
                step[name] = clock() - t
            t = clock()
            np.searchsorted(hyper.thresholds, y, side="left")
            step["_head"] += clock() - t
        if i >= warmup:
            for k, v in step.items():
                out[k].append(v * 1e3)
    return out


class IntegerHyperRun:
    """The integer h_s with a session's `run(outputs, feeds)` (for `session.time_runs`)."""

    def __init__(self, hyper: IntegerHyperSynthesis):
        self.hyper = hyper

    def run(self, _outputs, feeds: Mapping[str, np.ndarray]):
        return [self.hyper.indexes(feeds["x"])]
