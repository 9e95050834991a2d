"""OrtBackend: the dqsearch Backend contract on ONNX Runtime (CPU, CUDA, TensorRT providers)."""

from __future__ import annotations

import statistics
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
    float_model,
    parse_input_shape,
    trace_model,
)

from . import context, export, qdq
from .session import SessionConfig, TimingOptions, profile_runs, time_runs

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}


class _Group:
    """One transform (g_a, h_s…) exported once at its input shape, with calibration ranges."""

    def __init__(self, module: nn.Module, name: str, shape: Sequence[int], layers: list[str], seed: int):
        self.name, self.layers = name, layers
        self.fp32 = export.export(module, shape, seed)
        self.nodes = export.layer_nodes(self.fp32, name, layers)
        rng = np.random.default_rng(seed)
        self.feeds = {"x": rng.standard_normal(tuple(shape)).astype(np.float32)}
        self.ranges = qdq.calibrate(self.fp32, self.feeds, qdq.layer_tensors(self.fp32, self.nodes))
        self.succ = context.layer_edges(self.fp32, self.nodes)

    def graph(self, bits: Mapping[str, int]) -> onnx.ModelProto:
        graph = qdq.insert_qdq(self.fp32, self.nodes, {n: bits[n] for n in self.layers}, self.ranges)
        return context.label(graph, set(self.layers))


class OrtBackend(Backend):
    """Layers and transforms timed in ONNX Runtime sessions with explicit QDQ per container.

    Options: threads (intra-op, default 1), warmup, repeats, min_seconds, max_repeats (layer
    timing), clock ("thread" CPU time, the default with one thread, or "wall"),
    context_repeats and context_random (graph-context design), seed.
    """

    latency_by_container = True  # 4-, 6- and 8-bit layers are the same int8 program

    def __init__(self, name: str = "ort-cpu", threads: int = 1, warmup: int = 3, repeats: int = 10,
                 min_seconds: float = 0.3, max_repeats: int = 200, context_repeats: int = 5,
                 context_random: int = 6, seed: int = 0, clock: str | None = None) -> None:
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
        self._groups: dict[tuple, _Group] = {}
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
        return {b: container_of(b) for b in (*range(2, 17), 32)}

    def metadata(self) -> dict[str, Any]:
        return {"device": f"{self.name} on {cpu_model()}", "provider": self.config.providers[0],
                "cpu": cpu_model(), "cpu_id": cpu_signature(), "threads": self.config.threads, "tuned": False,
                "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                             "opset": export.OPSET},
                "timing": {"clock": self.timing.clock, "warmup": self.timing.warmup,
                           "repeats": self.timing.repeats,
                           "min_seconds": self.timing.min_seconds,
                           "context_repeats": self.context_repeats,
                           "context_random": self.context_random},
                "precision": "QDQ: uint8 activations / int8 per-channel weights for <= 8 bits, "
                             "uint16/int16 for <= 16, none for 32"}

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        self.container(bits)
        import torch

        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(self.seed)
            module = spec.module()
        fp32 = export.export(module, spec.input_shape, self.seed)
        node = next(n.name for n in fp32.graph.node if n.op_type in export.CONV_OPS)
        feeds = {"x": np.random.default_rng(self.seed).standard_normal(spec.input_shape).astype(np.float32)}
        ranges = qdq.calibrate(fp32, feeds, qdq.layer_tensors(fp32, {spec.name: node}))
        graph = qdq.insert_qdq(fp32, {spec.name: node}, {spec.name: bits}, ranges)
        sess = self.config.session(graph)
        return Measurement.from_samples(time_runs(sess, feeds, self.timing))

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """Σ over transforms of their run time; transforms alternate within each repeat so that
        all of them see the same machine state."""
        groups = self._model_groups(model, input_shape)
        self.check_profile([n for g in groups for n in g.layers], bit_profile)
        sessions = [(self.config.session(g.graph(bit_profile)), g.feeds) for g in groups]
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
        containers = sorted({self.container(b) for b in bits}, key=["int8", "int16", "fp32"].index)
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
        fixed_samples = [sum(col) for col in zip(*fixed, strict=True)]
        return ContextProfile(layers, Measurement.from_samples(fixed_samples), transitions,
                              {"design": "affine k^2 + random", "random_profiles": self.context_random,
                               "containers": containers, "runs": len(plan),
                               "fit_median_abs_residual_ms": residuals, "profiler_scale": scales})

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
        plain = None
        out = []
        for gname, gshape in trace.group_inputs.items():
            gkey = (id(model), shape, gname)
            if gkey not in self._groups:
                plain = plain or float_model(model)
                names = [s.name for s in trace.layers if s.group == gname]
                self._groups[gkey] = _Group(plain.get_submodule(gname), gname, gshape, names, self.seed)
            out.append(self._groups[gkey])
        return out


def cpu(**options: Any) -> OrtBackend:
    """Entry point `ort-cpu`."""
    return OrtBackend("ort-cpu", **options)


def cuda(**options: Any) -> OrtBackend:
    """Entry point `ort-cuda` (needs onnxruntime-gpu and a CUDA device)."""
    return OrtBackend("ort-cuda", **options)


def tensorrt(**options: Any) -> OrtBackend:
    """Entry point `ort-tensorrt` (needs onnxruntime-gpu built with TensorRT)."""
    return OrtBackend("ort-tensorrt", **options)
