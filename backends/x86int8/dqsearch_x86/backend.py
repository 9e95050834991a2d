"""X86Backend: the dqsearch Backend contract on PyTorch's x86 int8 engine, timing the modules the
x86-int8 deployment builds (`program.build_program` → `transform.X86Transform`).

Layers: the layer alone as its transform's deployment builds it (int8 in g_a/g_s at ≤ 8 bits:
quantize → x86 int8 conv, sub-pixel for a deconvolution → dequantize; the exact fake-quantized
float conv at 9–16 bits and in the hyper transforms; a float conv at 32). Models: the deployed
transforms of a post-training-quantized copy of the model (timing depends on the architecture
and the profile, not on the weights), h_s as the integer hyper-synthesis the default export runs.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from torch import nn

from dqsearch.backends import (
    FP32,
    Backend,
    BackendError,
    ContextProfile,
    LayerSpec,
    Measurement,
    ModelTrace,
    cpu_model,
    cpu_signature,
    parse_input_shape,
    trace_model,
)
from dqsearch.deploy.calibrate import output_ranges, ptq_copy
from dqsearch.integer.int_entropy import integer_hyper, integer_unsupported
from dqsearch.integer.params import model_layers
from dqsearch.quant.wrap import quantized_layers

from . import context, memory
from .deployment import X86Deployment, arithmetic_of
from .engine import unavailable, x86
from .kernels import compile_unavailable
from .program import build_program, calibrate_gdn
from .transform import X86Transform

QUANT_BITS = tuple(range(2, 17))
HYPER = ("integer", "float")
GRAPH = {"builder": "x86-int8 deployment", "version": 2}  # 2: oneDNN on uint8, h_a int8


def _abs_input(model: nn.Module, transform: str) -> bool:
    """ScaleHyperprior's h_a reads |y| (the deployment runs the Abs inside h_a)."""
    return (transform == "h_a" and isinstance(model, ScaleHyperprior)
            and not isinstance(model, MeanScaleHyperprior))


class _Copy:
    """A PTQ copy of a model: every conv wrapped dynamic over 2–16 bits and calibrated on two
    bundled photos (ranges and GDN ranges at a profile are measured on the same photos)."""

    def __init__(self, model: nn.Module, images: list[torch.Tensor] | None = None) -> None:
        self.model, self.images = ptq_copy(model, QUANT_BITS, images)
        self.names = list(quantized_layers(self.model))

    def program(self, transform: str, profile: Mapping[str, int], arithmetic: str, abs_input: bool
                ) -> tuple[dict, dict]:
        layers = model_layers(self.model, profile, allow_fp32=True)
        int8 = arithmetic == "int8" and any(lq.container == "int8" for n, lq in layers.items()
                                            if n.startswith(transform + "."))
        ranges = output_ranges(self.model, profile, self.images) if int8 else None
        gdn = calibrate_gdn(self.model, profile, self.images) if int8 else {}
        return build_program(self.model, transform, layers, arithmetic, ranges, gdn, abs_input)


class X86Backend(Backend):
    """Options: threads (default 1), warmup (2), repeats (7), seed (0), arithmetic ("int8" or
    "exact" for g_a/g_s, as `dqsearch export --arithmetic`), hyper ("integer": the integer h_s the
    default export runs; "float": the float h_s module), compile (fused GDN kernels under
    torch.compile; False: eager)."""

    name = "x86-int8"
    latency_by_container = True  # 2–8 bits run the same int8 program, 9–16 the same exact one

    def __init__(self, threads: int = 1, warmup: int = 2, repeats: int = 7, seed: int = 0,
                 arithmetic: str = "int8", hyper: str = "integer", compile: bool = True) -> None:
        why = unavailable()
        if why:
            raise BackendError(why)
        if int(threads) < 1 or int(repeats) < 1 or int(warmup) < 0:
            raise ValueError("threads and repeats must be at least 1, warmup at least 0")
        if arithmetic not in ("int8", "exact") or hyper not in HYPER:
            raise ValueError(f"arithmetic must be int8 or exact and hyper one of {HYPER}")
        self.threads, self.warmup, self.repeats, self.seed = int(threads), int(warmup), int(repeats), seed
        self.arithmetic, self.hyper, self.compile = arithmetic, hyper, bool(compile)
        # time under the malloc policy the runtime runs with (`X86Deployment.load` sets it too):
        # without it a table profiled in a fresh process put all-8-bit at 49 ms where the
        # deployed transforms take 39
        memory.apply()
        self._copies: dict[int, _Copy] = {}
        self._traces: dict[tuple, ModelTrace] = {}

    # --- contract -------------------------------------------------------------------------------
    def deployment(self) -> X86Deployment:
        return X86Deployment(self.compile)

    def capabilities(self) -> dict[int, str]:
        """int8 (2–8 bits: x86 int8 convolutions), exact (9–16: the fake-quantized layer as a float
        convolution; no 16-bit integer kernel), fp32 (32)."""
        return {**{b: "int8" for b in range(2, 9)}, **{b: "exact" for b in range(9, 17)}, FP32: "fp32"}

    def metadata(self) -> dict[str, Any]:
        why = compile_unavailable() if self.compile else "compile=False"
        return {"device": f"x86-int8 on {cpu_model()}", "cpu": cpu_model(), "cpu_id": cpu_signature(),
                "cpu_model": cpu_model(), "threads": self.threads, "tuned": False,
                "versions": {"torch": torch.__version__},
                "graph": {**GRAPH, "arithmetic": self.arithmetic, "hyper": self.hyper,
                          "malloc": "keeps freed memory" if memory.apply() else "glibc default",
                          "fused_kernels": "torch.compile" if why is None else f"eager ({why})"},
                "timing": {"clock": self._clock_name, "warmup": self.warmup, "repeats": self.repeats},
                "precision": "int8 layers of g_a/h_a/g_s as oneDNN int8 convolutions (uint8 activations "
                             "per tensor, symmetric int8 weights) with int8 GDN/IGDN between int8 "
                             "layers; 9–16 bits and h_s as the fake-quantized float conv"}

    @property
    def _clock_name(self) -> str:
        return "thread" if self.threads == 1 else "wall"

    def _now(self) -> Callable[[], float]:
        return time.thread_time if self.threads == 1 else time.perf_counter

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        """The layer alone as its transform's deployment builds it."""
        self.container(bits)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            holder = nn.Sequential(OrderedDict([(spec.group, nn.Sequential(spec.module()))]))
            x = torch.randn(spec.input_shape)
        copy = _Copy(holder, [x])
        arith = arithmetic_of(spec.group, self.arithmetic)
        meta, arrays = copy.program(spec.group, {f"{spec.group}.0": bits}, arith, False)
        mod = X86Transform(meta, arrays, self.threads, self.compile)
        return Measurement.from_samples(self._time([lambda: mod(x)]))

    def profile_context(self, model: nn.Module, trace: ModelTrace, bits: Sequence[int], *,
                        progress: bool = False, store: dict | None = None,
                        save: Callable[[], None] | None = None, isolated: Any = None) -> ContextProfile:
        """Layers timed in their deployed chain (`context`): every transform at the uniform and the
        alternating container profiles, each layer's segment per run, the four transforms run one
        after the other in every repeat as `profile_model` runs them (timed alone in a loop, a
        tiny model's int8 transforms ran 25% faster than in sequence); h_s's integer containers
        as the integer hyper-synthesis, its time split evenly over its layers (its cost barely
        depends on the bits)."""
        store = store if store is not None else {}
        order = ["int8", "exact", "fp32"]
        containers = sorted({self.container(b) for b in bits}, key=order.index)
        widest = {c: max(b for b in bits if self.container(b) == c) for c in containers}
        ints = [c for c in containers if c != "fp32"]
        copy = self._copy(model)
        names = {g: [n for n in trace.names if n.split(".")[0] == g] for g in trace.group_inputs}
        designs = {g: context.design(names[g], containers) for g in names}
        integer_hs = "h_s" in names and bool(ints) and self._integer_h_s(
            copy, names["h_s"], {n: widest[ints[0]] if n.startswith("h_s.") else 8 for n in copy.names})
        for k in range(max(len(d) for d in designs.values())):
            runs: dict[str, tuple[dict, Callable[[], list[float]]]] = {}
            for g, gshape in trace.group_inputs.items():
                p = designs[g][k % len(designs[g])]
                runs[f"{g}|" + ",".join(p[n] for n in names[g])] = (p, self._chain_run(
                    copy, model, g, gshape, {n: widest[c] for n, c in p.items()}))
            if integer_hs and k < len(containers) and containers[k] in ints:
                c = containers[k]  # the uniform round of an integer container: the integer h_s too
                runs[f"h_s|integer|{c}"] = ({}, self._integer_run(copy, trace.group_inputs["h_s"],
                                                                  dict.fromkeys(names["h_s"], widest[c])))
            if all(key in store for key in runs):
                continue
            timed = self._interleaved({key: f for key, (_, f) in runs.items()})
            for key, (p, _) in runs.items():
                store.setdefault(key, {"profile": p, "segments": timed[key]})
            if save:
                save()
        layers: dict[str, dict[str, Measurement]] = {}
        fixed_parts, transitions, info = [], [], {}
        for g in trace.group_inputs:
            runs_g = [(store[key]["profile"], store[key]["segments"]) for key in dict.fromkeys(
                f"{g}|" + ",".join(p[n] for n in names[g]) for p in designs[g])]
            a, fixed, trans = context.fit_chain(names[g], containers, runs_g)
            if g == "h_s" and integer_hs:
                for c in ints:  # the default export's h_s: the integer hyper-synthesis
                    t_int = [r[0] for r in store[f"h_s|integer|{c}"]["segments"]]
                    share = [max(t - f, 0.0) / len(names[g]) for t, f in zip(t_int, fixed, strict=False)]
                    for n in names[g]:
                        a[n][c] = share
                trans = [{**t, "cost": {k: v for k, v in t["cost"].items()
                                        if not all(side in ints for side in k.split(">"))}} for t in trans]
            for n, per in a.items():
                layers[n] = {c: Measurement.from_samples(v) for c, v in per.items()}
            fixed_parts.append(fixed)
            transitions += [t for t in trans if t["cost"]]
            info[g] = {"runs": len(runs_g), "fixed_ms": statistics.median(fixed)}
        total = [sum(col) for col in zip(*fixed_parts, strict=False)]
        return ContextProfile(layers, Measurement.from_samples(total), transitions,
                              {"design": "uniform + alternating container profiles per chain, the "
                                         "transforms in sequence in every repeat",
                               "containers": containers, "transforms": info})

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """Σ over transforms (g_a, h_a, h_s, g_s on inputs shaped as `trace.group_inputs`) of the
        deployed modules' time; transforms alternate within each repeat."""
        shape = parse_input_shape(input_shape)
        key = (id(model), shape)
        if key not in self._traces:
            self._traces[key] = trace_model(model, shape)
        trace = self._traces[key]
        self.check_profile(trace.names, bit_profile)
        copy = self._copy(model)
        profile = {n: int(bit_profile[n]) for n in copy.names}
        runs = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for group, gshape in trace.group_inputs.items():
                x = torch.randn(gshape)
                names = [n for n in trace.names if n.split(".")[0] == group]
                if group == "h_s" and self._integer_h_s(copy, names, profile):
                    hyper = integer_hyper(copy.model, profile)
                    z = torch.round(3 * x).numpy()
                    runs.append(lambda h=hyper, z=z: h.indexes(z))
                    continue
                arith = arithmetic_of(group, self.arithmetic)
                meta, arrays = copy.program(group, profile, arith, _abs_input(model, group))
                mod = X86Transform(meta, arrays, self.threads, self.compile)
                runs.append(lambda m=mod, x=x: m(x))
        return Measurement.from_samples(self._time(runs))

    # --- helpers --------------------------------------------------------------------------------
    def _copy(self, model: nn.Module) -> _Copy:
        if id(model) not in self._copies:
            self._copies[id(model)] = _Copy(model)
        return self._copies[id(model)]

    def _chain_run(self, copy: _Copy, model: nn.Module, group: str, shape: Sequence[int],
                   group_bits: Mapping[str, int]) -> Callable[[], list[float]]:
        """One transform at `group_bits` (the rest of the model at FP32, which it does not see) as
        a call returning [head, layer segments…, call overhead] in ms."""
        profile = {n: int(group_bits.get(n, FP32)) for n in copy.names}
        arith = arithmetic_of(group, self.arithmetic)
        meta, arrays = copy.program(group, profile, arith, _abs_input(model, group))
        mod = X86Transform(meta, arrays, self.threads, self.compile)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            x = torch.randn(tuple(shape))
        now = self._now()

        def run() -> list[float]:
            t = now()
            segs = mod.segments(x, now)
            total = now() - t
            return [1e3 * v for v in (*segs, max(total - sum(segs), 0.0))]

        return run

    def _integer_run(self, copy: _Copy, shape: Sequence[int], group_bits: Mapping[str, int]
                     ) -> Callable[[], list[float]]:
        """The integer h_s at `group_bits` as a call returning [ms] (it reads only h_s's layers)."""
        hyper = integer_hyper(copy.model, {n: int(group_bits.get(n, 8)) for n in copy.names})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            z = torch.round(3 * torch.randn(tuple(shape))).numpy()
        now = self._now()

        def run() -> list[float]:
            t = now()
            hyper.indexes(z)
            return [1e3 * (now() - t)]

        return run

    def _interleaved(self, runs: Mapping[str, Callable[[], list[float]]]
                     ) -> dict[str, list[list[float]]]:
        """Each call's results per repeat, all calls in sequence in every repeat, after `warmup`
        rounds; torch's threads and quantized engine restored afterwards."""
        out: dict[str, list[list[float]]] = {k: [] for k in runs}
        with x86(self.threads):
            for _ in range(self.warmup):
                for f in runs.values():
                    f()
            for _ in range(self.repeats):
                for k, f in runs.items():
                    out[k].append(f())
        return out

    def _integer_h_s(self, copy: _Copy, names: list[str], profile: Mapping[str, int]) -> bool:
        """Whether the default export runs this h_s as the integer hyper-synthesis."""
        return (self.hyper == "integer" and bool(names) and all(profile.get(n, FP32) != FP32 for n in names)
                and integer_unsupported(copy.model, profile) is None)

    def _time(self, runs: list[Callable[[], Any]]) -> list[float]:
        """ms of Σ runs per repeat (one thread: thread CPU time), after `warmup` rounds; torch's
        threads and quantized engine restored afterwards."""
        now = self._now()
        with x86(self.threads):
            for _ in range(self.warmup):
                for f in runs:
                    f()
            samples = []
            for _ in range(self.repeats):
                t = now()
                for f in runs:
                    f()
                samples.append((now() - t) * 1e3)
        return samples


def x86_int8(**options: Any) -> X86Backend:
    """Entry point `x86-int8`."""
    return X86Backend(**options)

