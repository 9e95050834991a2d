"""OrtBackend: the dqsearch Backend contract on ONNX Runtime (CPU, CUDA, TensorRT providers)."""

from __future__ import annotations

import statistics
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from torch import nn

from dqsearch.backends import (
    Backend,
    BackendError,
    ContextProfile,
    LayerSpec,
    Measurement,
    ModelTrace,
    container_of,
    cpu_model,
    cpu_signature,
    parse_input_shape,
    trace_model,
)

from . import context, qdq
from .onnx_graph import OPSET
from .session import SessionConfig, TimingOptions, profile_runs, time_runs

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}


class _Group:
    """One transform (g_a, h_s…) of a model's quantized copy, built by the deployment's graph
    builder at each profile (`qdq.transform_graph`), with random input at its traced shape."""

    def __init__(self, q: qdq.QuantizedCopy, model: nn.Module, name: str, shape: Sequence[int],
                 layers: list[str], seed: int, arithmetic: str, int8_weights: str):
        self.q, self.model, self.name, self.layers = q, model, name, layers
        self.arithmetic, self.int8_weights = arithmetic, int8_weights
        rng = np.random.default_rng(seed)
        self.feeds = {"x": rng.standard_normal(tuple(shape)).astype(np.float32)}
        fp32 = self.deployed(dict.fromkeys(layers, 32))
        self.succ = context.layer_edges(fp32, {n: f"{n}@conv" for n in layers})

    def deployed(self, bits: Mapping[str, int]) -> onnx.ModelProto:
        """The graph `dqsearch export` deploys for this transform at `bits`."""
        return qdq.transform_graph(self.q, self.name, {n: bits[n] for n in self.layers}, self.arithmetic,
                                   self.int8_weights, self.model)

    def graph(self, bits: Mapping[str, int]) -> onnx.ModelProto:
        return context.label(self.deployed(bits), set(self.layers))


class OrtBackend(Backend):
    """Layers and transforms timed in ONNX Runtime sessions, each graph built by the ort-cpu
    deployment's builder (`qdq`: the graph `dqsearch export` deploys at that bit profile).

    Options: threads (intra-op, default 1), warmup, repeats, min_seconds, max_repeats (layer
    timing), clock ("thread" CPU time, the default with one thread, or "wall"),
    context_repeats and context_random (graph-context design), seed, and the deployment's graph
    options arithmetic ("int8" or "exact" for g_a/g_s, as `dqsearch export --arithmetic`),
    int8_weights ("exact" or "symmetric", as `--int8-weights`) and hyper ("integer": the numpy
    integer h_s the export runs by default, for ScaleHyperprior; "float": the ONNX h_s).
    """

    latency_by_container = True  # 4-, 6- and 8-bit layers are the same int8 program

    def __init__(self, name: str = "ort-cpu", threads: int = 1, warmup: int = 3, repeats: int = 10,
                 min_seconds: float = 0.3, max_repeats: int = 200, context_repeats: int = 5,
                 context_random: int = 6, seed: int = 0, clock: str | None = None,
                 arithmetic: str = "int8", int8_weights: str = "exact", hyper: str = "integer") -> None:
        provider = PROVIDERS[name]
        available = ort.get_available_providers()
        if provider not in available:
            hint = ("pip install onnxruntime-gpu (instead of onnxruntime) on a machine with CUDA"
                    if name != "ort-cpu" else "reinstall onnxruntime")
            raise BackendError(f"{name} needs ONNX Runtime's {provider}, which this onnxruntime "
                               f"{ort.__version__} does not have (it has {', '.join(available)}): {hint}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name = name
        providers: list = [provider] if name == "ort-cpu" else [provider, "CPUExecutionProvider"]
        self.config = SessionConfig(providers=providers, threads=int(threads))
        clock = clock or ("thread" if threads == 1 and name == "ort-cpu" else "wall")
        if clock == "thread" and (threads != 1 or name != "ort-cpu"):
            raise ValueError("clock=thread needs threads=1 on ort-cpu (otherwise the work runs on other "
                             "threads or the GPU): use clock=wall")
        self.timing = TimingOptions(int(warmup), int(repeats), float(min_seconds), int(max_repeats), clock)
        self.context_repeats, self.context_random, self.seed = int(context_repeats), int(context_random), seed
        qdq.check_options(arithmetic, int8_weights, hyper)
        self.arithmetic, self.int8_weights, self.hyper = arithmetic, int8_weights, hyper
        self._groups: dict[tuple, _Group] = {}
        self._copies: dict[int, qdq.QuantizedCopy] = {}
        self._traces: dict[tuple, ModelTrace] = {}

    # --- contract -------------------------------------------------------------------------------
    def deployment(self):
        """ort-cpu deploys (the export's sessions run on the CPU provider); CUDA and TensorRT do not
        yet."""
        if self.name != "ort-cpu":
            return None
        from .deployment import OrtDeployment

        return OrtDeployment()

    def capabilities(self) -> dict[int, str]:
        """Bits → the program they run: int8 (2–7 bits), int16 (9–16), fp32 (32); and 8 bits as
        `int8-zp` where the deployment stores learned weight zero-points (int8 arithmetic, exact
        weights): a 2–7-bit layer's integers always fit int8 around zero (zero-point 0), an 8-bit
        layer's usually do not, and QLinearConv with weight zero-points is ~25% slower."""
        caps = {b: container_of(b) for b in (*range(2, 17), 32)}
        if self.arithmetic == "int8" and self.int8_weights == "exact":
            caps[8] = "int8-zp"
        return caps

    def metadata(self) -> dict[str, Any]:
        return {"device": f"{self.name} on {cpu_model()}", "provider": self.config.providers[0],
                "cpu": cpu_model(), "cpu_id": cpu_signature(), "threads": self.config.threads, "tuned": False,
                "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                             "opset": OPSET},
                "graph": qdq.graph_metadata(self.arithmetic, self.int8_weights, self.hyper),
                "timing": {"clock": self.timing.clock, "warmup": self.timing.warmup,
                           "repeats": self.timing.repeats,
                           "min_seconds": self.timing.min_seconds,
                           "context_repeats": self.context_repeats,
                           "context_random": self.context_random},
                "precision": "the deployment's QDQ: int8 layers of g_a/g_s as QLinearConv (uint8 "
                             "activations, learned int8 weights; 8 bits with weight zero-points), "
                             "other quantized layers learned per-channel QDQ around a float conv "
                             "(uint8/uint16), none for 32"}

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        """The layer alone, as its transform's deployment builds it (arithmetic and sub-pixel form
        by its transform, `spec.group`), in a one-layer graph."""
        self.container(bits)
        import torch

        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(self.seed)
            holder = nn.Sequential(OrderedDict([(spec.group, nn.Sequential(spec.module()))]))
            x = torch.randn(spec.input_shape)
        q = qdq.QuantizedCopy(holder, [x])
        name = f"{spec.group}.0"
        graph = qdq.transform_graph(q, spec.group, {name: bits}, self.arithmetic, self.int8_weights)
        feeds = {"x": x.numpy()}
        sess = self.config.session(graph)
        return Measurement.from_samples(time_runs(sess, feeds, self.timing))

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """Σ over transforms of their run time; transforms alternate within each repeat so that
        all of them see the same machine state."""
        groups = self._model_groups(model, input_shape)
        self.check_profile([n for g in groups for n in g.layers], bit_profile)
        sessions = [(self._integer_run(model, g, bit_profile) or self.config.session(g.graph(bit_profile)),
                     g.feeds) for g in groups]
        for sess, feeds in sessions:
            for _ in range(self.timing.warmup):
                sess.run(None, feeds)
        once = TimingOptions(0, 1, 0.0, 1, self.timing.clock)
        totals = []
        for _ in range(self.timing.repeats):
            totals.append(sum(time_runs(sess, feeds, once)[0] for sess, feeds in sessions))
        return Measurement.from_samples(totals)

    def profile_context(self, model: nn.Module, trace: ModelTrace, bits: Sequence[int], *,
                        progress: bool = False, store: dict | None = None,
                        save: Callable[[], None] | None = None, isolated: Any = None) -> ContextProfile:
        from tqdm import tqdm

        store = store if store is not None else {}
        order = ["int8", "int8-zp", "int16", "fp32"]
        containers = sorted({self.container(b) for b in bits}, key=order.index)
        groups = self._model_groups(model, trace.input_shape)
        plan = [(g, p) for g in groups for p in context.design(g.layers, containers, self.context_random,
                                                                self.seed)]
        layers: dict[str, dict[str, Measurement]] = {}
        transitions, fixed, residuals, scales = [], [], {}, {}
        bar = tqdm(total=len(plan), desc=f"{self.name} in context", unit="run", disable=not progress)
        for g in groups:
            runs = []
            for p in (p for gg, p in plan if gg is g):
                key = g.name + "|" + ",".join(p[n] for n in g.layers)
                if key not in store:
                    bits_p = {n: max(b for b in bits if self.container(b) == p[n]) for n in g.layers}
                    pr = profile_runs(self.config, g.graph(bits_p), g.feeds, self.timing.warmup,
                                      self.context_repeats, self.timing.clock)
                    store[key] = {"profile": p, "segments": context.segment_times(pr, set(g.layers))}
                    if save:
                        save()
                runs.append((store[key]["profile"], store[key]["segments"]))
                bar.update()
            scale = self._profiler_scale(g, containers, bits, runs, store, save)
            fit = context.fit_group(g.layers, g.succ, containers, runs)
            for name, per in fit.layers.items():
                layers[name] = {c: Measurement.from_samples([v * scale for v in s]) for c, s in per.items()}
            transitions += [{**t, "cost": {k: v * scale for k, v in t["cost"].items()}}
                            for t in fit.transitions]
            uniform_fp32 = next(seg for p, seg in runs if set(p.values()) == {containers[-1]})
            glue = sum(statistics.median(r[1] for r in uniform_fp32[n])
                       for n in g.layers if n in uniform_fp32)
            head = uniform_fp32.get(context.HEAD, [[0.0, 0.0]] * self.context_repeats)
            over = uniform_fp32["_overhead"]
            fixed.append([(h[0] + o[0] + glue) * scale for h, o in zip(head, over, strict=True)])
            residuals[g.name] = fit.residual_ms
            scales[g.name] = scale
        bar.close()
        h_s = next((i for i, g in enumerate(groups) if g.name == "h_s"), None)
        if self.hyper == "integer" and h_s is not None and qdq.has_integer_hyper(model):
            fixed[h_s] = self._integer_h_s(groups[h_s], containers, bits, layers, transitions, store, save)
        fixed_samples = [sum(col) for col in zip(*fixed, strict=True)]
        return ContextProfile(layers, Measurement.from_samples(fixed_samples), transitions,
                              {"design": "affine k^2 + random", "random_profiles": self.context_random,
                               "containers": containers, "runs": len(plan),
                               "fit_median_abs_residual_ms": residuals, "profiler_scale": scales,
                               "fixed_ms_by_transform": {g.name: statistics.median(f)
                                                         for g, f in zip(groups, fixed, strict=True)}})

    def _integer_run(self, model: nn.Module, g: _Group, bit_profile: Mapping[str, int]
                     ) -> qdq.IntegerHyperRun | None:
        """The integer h_s where the default export runs it (every h_s layer quantized)."""
        if (self.hyper != "integer" or g.name != "h_s" or not qdq.has_integer_hyper(model)
                or any(bit_profile[n] == 32 for n in g.layers)):
            return None
        return qdq.IntegerHyperRun(qdq.integer_hyper(g.q, {n: bit_profile[n] for n in g.layers}))

    def _integer_h_s(self, g: _Group, containers: Sequence[str], bits: Sequence[int],
                     layers: dict[str, dict[str, Measurement]], transitions: list[dict],
                     store: dict, save: Callable[[], None] | None) -> list[float]:
        """h_s's integer containers timed as the integer h_s (numpy, per layer step): replaces their
        ONNX times in `layers` and the transitions among them; returns h_s's fixed part (input
        quantizer and scale-table search). FP32 h_s layers keep their ONNX times (an integer h_s
        needs every layer quantized; such a profile deploys only with --hyper float)."""
        ints = [c for c in containers if c != "fp32"]
        for c in ints:
            key = f"h_s|integer|{c}"
            if key not in store:
                b = max(x for x in bits if self.container(x) == c)
                hyper = qdq.integer_hyper(g.q, dict.fromkeys(g.layers, b))
                store[key] = qdq.time_integer_hyper(hyper, g.layers, g.feeds["x"], self.timing.warmup,
                                                    self.context_repeats, self.timing.now)
                if save:
                    save()
            for n in g.layers:
                layers[n][c] = Measurement.from_samples(store[key][n])
        for t in transitions:
            if t["from"] in g.layers:
                t["cost"] = {k: v for k, v in t["cost"].items()
                             if not all(side in ints for side in k.split(">"))}
        return list(store[f"h_s|integer|{ints[0]}"]["_head"]) if ints else [0.0] * self.context_repeats

    def _profiler_scale(self, g: _Group, containers: Sequence[str], bits: Sequence[int], runs: list,
                        store: dict, save: Callable[[], None] | None) -> float:
        """Plain-run time / profiled-run time of the uniform graphs: the profiler's own cost,
        taken out so that the table predicts runs without it (what `profile_model` times)."""
        key = g.name + "|profiler-scale"
        if key not in store:
            ratios = []
            for c in containers:
                seg = next(seg for p, seg in runs if set(p.values()) == {c})
                profiled = statistics.median(sum(seg[s][i][0] for s in seg)
                                             for i in range(len(seg["_overhead"])))
                b = max(x for x in bits if self.container(x) == c)
                sess = self.config.session(g.graph(dict.fromkeys(g.layers, b)))
                plain = statistics.median(time_runs(sess, g.feeds, self.timing))
                ratios.append(plain / profiled)
            store[key] = statistics.fmean(ratios)
            if save:
                save()
        return float(store[key])

    # --- helpers --------------------------------------------------------------------------------
    def _model_groups(self, model: nn.Module, input_shape: str | Sequence[int]) -> list[_Group]:
        shape = parse_input_shape(input_shape)
        key = (id(model), shape)
        if key not in self._traces:
            self._traces[key] = trace_model(model, shape)
        trace = self._traces[key]
        out = []
        for gname, gshape in trace.group_inputs.items():
            gkey = (id(model), shape, gname)
            if gkey not in self._groups:
                if id(model) not in self._copies:
                    self._copies[id(model)] = qdq.QuantizedCopy(model)
                names = [s.name for s in trace.layers if s.group == gname]
                self._groups[gkey] = _Group(self._copies[id(model)], model, gname, gshape, names, self.seed,
                                            self.arithmetic, self.int8_weights)
            out.append(self._groups[gkey])
        return out

    def deployed_graph(self, model: nn.Module, transform: str, bit_profile: Mapping[str, int],
                       input_shape: str | Sequence[int] = "768x512") -> onnx.ModelProto:
        """The graph this backend times for `transform` at `bit_profile` (what deployment builds)."""
        group = next(g for g in self._model_groups(model, input_shape) if g.name == transform)
        return group.deployed(bit_profile)


def cpu(**options: Any) -> OrtBackend:
    """Entry point `ort-cpu`."""
    return OrtBackend("ort-cpu", **options)


def cuda(**options: Any) -> OrtBackend:
    """Entry point `ort-cuda` (needs onnxruntime-gpu and a CUDA device)."""
    return OrtBackend("ort-cuda", **options)


def tensorrt(**options: Any) -> OrtBackend:
    """Entry point `ort-tensorrt` (needs onnxruntime-gpu built with TensorRT)."""
    return OrtBackend("ort-tensorrt", **options)
