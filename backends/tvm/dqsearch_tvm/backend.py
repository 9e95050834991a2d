"""TvmBackend: the dqsearch Backend contract on Apache TVM (Relax), local CPU or RPC board."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from torch import nn

from dqsearch.backends import (
    Backend,
    ContextProfile,
    LayerSpec,
    Measurement,
    ModelTrace,
    container_of,
    cpu_model,
    cpu_signature,
    parse_input_shape,
)

from . import build, context, graph
from .device import Job, LocalDevice, RemoteDevice, local_threads, tuning_export
from .layer import layer_module
from .target import host_target, parse_target
from .timing import Timer, TimingOptions
from .tuning import Tuner, TuningOptions

log = logging.getLogger(__name__)


class TvmBackend(Backend):
    """Layers and transforms compiled by TVM and timed with `time_evaluator`.

    Options (all `--option KEY=VALUE` on the CLI): threads; target (dict, JSON or
    "llvm -mcpu=…"); tune_trials (meta-schedule trials per workload, 0 = untuned); tuning_db
    (database root folder); population, build_timeout (tuning); repeats, min_repeats,
    min_repeat_ms, budget_seconds, clock (timing: "thread" CPU time by default for one local
    thread, else "wall" = time_evaluator); context (measure layers inside their transform, see
    context.py: default on for tuned kernels, off for untuned ones, whose whole transforms run
    ~20× slower), context_repeats (paired repeats per switched run), context_bases (containers
    to switch from, comma-separated; default fp32 and the narrowest); seed.
    """

    CONTAINER_ORDER = ("int8", "int16", "fp32")

    latency_by_container = True  # 2…8 bits run the same int8 program, 9…16 the same int16 one

    def __init__(self, name: str = "tvm-cpu", *, device: LocalDevice | RemoteDevice | None = None,
                 threads: int = 1, target: str | dict | None = None, tune_trials: int = 0,
                 tuning_db: str | None = None, population: int = 128, build_timeout: float = 120.0,
                 repeats: int = 10, min_repeats: int = 3, min_repeat_ms: float = 20.0,
                 budget_seconds: float = 2.0, clock: str | None = None, context: bool | str | None = None,
                 context_repeats: int = 5, context_bases: str | Sequence[str] | None = None,
                 seed: int = 0) -> None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if int(tune_trials) < 0:
            raise ValueError(f"tune_trials must be 0 (untuned) or more, got {tune_trials}")
        self.name, self.threads, self.seed = name, int(threads), int(seed)
        self.device = device or LocalDevice(self.threads)
        if clock is None:  # see timing.py: on a shared machine wall time mostly measures the others
            clock = "thread" if not self.device.remote and self.threads == 1 else "wall"
        self.target = parse_target(target) if target else host_target(self.threads)
        # meta-schedule refuses a target without it ("physical core number must be defined"):
        # tvm-arm's default target and user targets would tune nowhere
        self.target.setdefault("num-cores", self.threads)
        self.timing = TimingOptions(repeats=int(repeats), min_repeats=int(min_repeats),
                                    min_repeat_ms=float(min_repeat_ms), budget_seconds=float(budget_seconds),
                                    clock=str(clock))
        runner = None
        export = None
        if isinstance(self.device, RemoteDevice):
            export = tuning_export(self.device.compiler)
            runner = self._rpc_runner if int(tune_trials) > 0 else None
        self.tuner = Tuner(self.target, TuningOptions(trials=int(tune_trials), population=int(population),
                                                      build_timeout=float(build_timeout), seed=self.seed),
                           root=tuning_db, runner=runner, export=export)
        tuned = self.tuner.options.trials > 0
        self.context = tuned if context in (None, "auto") else _flag(context, "context")
        self.context_repeats = int(context_repeats)
        if isinstance(context_bases, str):
            context_bases = [b.strip() for b in context_bases.split(",") if b.strip()]
        self.context_bases = list(context_bases) if context_bases else None
        self._widest_bits = {c: b for b, c in sorted(self.capabilities().items())}  # per container
        self._tvm_target = tvm.target.Target(self.target)
        self._layer_builds: dict[tuple, build.Built] = {}
        self._model_builds: dict[tuple, build.Built] = {}
        self._transforms: dict[tuple, list[graph.Transform]] = {}
        self.untuned_kernels: set[str] = set()

    # --- contract -------------------------------------------------------------------------------
    def capabilities(self) -> dict[int, str]:
        return {b: container_of(b) for b in (*range(2, 17), 32)}

    def metadata(self) -> dict[str, Any]:
        tuned = self.tuner.options.trials > 0
        return {
            "device": f"{self.name} on {self._device_name()}",
            "board": self._board(),
            "cpu_id": None if self.device.remote else cpu_signature(),
            "target": self.target, "threads": self.threads,
            "tuned": tuned, "tune_trials": self.tuner.options.trials,
            "tuning_database": str(self.tuner.dir) if tuned else None,
            "build": "meta-schedule tuned kernels (database above)" if tuned else
                     "untuned: TVM's default lowering, no schedule search (far slower than tuned)",
            "versions": {"tvm": tvm.__version__, "llvm": tvm.target.codegen.llvm_version_major()},
            "timing": {"method": "time_evaluator" if self.timing.clock == "wall" else "thread CPU clock",
                       "repeats": self.timing.repeats, "min_repeats": self.timing.min_repeats,
                       "min_repeat_ms": self.timing.min_repeat_ms,
                       "budget_seconds": self.timing.budget_seconds},
            "run": self.device.describe(),
            "context": ({"method": "one layer switched at a time in its whole transform, paired with the "
                                   "base transform",
                         "bases": self.context_bases or "fp32 and the narrowest container",
                         "repeats": self.context_repeats} if self.context else None),
            "precision": "fp32 for 32 bits; int8 (uint8 activations x int8 per-channel weights -> int32, "
                         "NCHWc) for <= 8; int16 (int16 x int16 -> int32) for <= 16",
        }

    def required_bits(self) -> set[int]:
        """32 always: in-context tables anchor every layer on its fp32 time, isolated ones derive
        the fixed part from the FP32 model."""
        return {32}

    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        container = self.container(bits)
        key = (spec.op, spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding,
               spec.output_padding, spec.dilation, spec.groups, spec.input_shape, container)
        if key not in self._layer_builds:
            self._layer_builds[key] = self._compile(layer_module(spec, container, seed=self.seed))
        x = np.random.default_rng(self.seed).standard_normal(spec.input_shape).astype(np.float32)
        samples = self.device.measure([Job(self._layer_builds[key].executable, [x])],
                                      lambda timers: timers[0].measure(), self.timing)
        return Measurement.from_samples(samples)

    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """Σ over transforms of their run time; within each repeat every transform runs once, so
        all of them see the same machine state."""
        shape = parse_input_shape(input_shape)
        transforms = self._import(model, shape)
        self.check_profile([n for t in transforms for n in t.layers], bit_profile)
        jobs = [Job(self._transform_build(model, t, bit_profile).executable, [t.input]) for t in transforms]
        return Measurement.from_samples(self.device.measure(jobs, self._interleaved, self.timing))

    @property
    def measures_context(self) -> bool:
        return self.context

    def profile_context(self, model: nn.Module, trace: ModelTrace, bits: Sequence[int], *,
                        progress: bool = False, store: dict | None = None,
                        save: Callable[[], None] | None = None,
                        isolated: Mapping[str, Mapping[int, Measurement]] | None = None
                        ) -> ContextProfile | None:
        """Layer times inside their transform (context.py); raw paired runs go to `store`. The
        fp32 anchors are the table's isolated fp32 times (measured here when not given)."""
        if not self.context:
            return None
        from tqdm import tqdm

        store = store if store is not None else {}
        containers = sorted({self.container(b) for b in bits}, key=self.CONTAINER_ORDER.index)
        if context.FP32 not in containers:
            raise ValueError("in-context profiling anchors every layer on its fp32 time: include 32 in "
                             "--bits (or pass --option context=false)")
        transforms = self._import(model, trace.input_shape)
        specs = {s.name: s for s in trace.layers}
        chosen = self.context_bases
        used = context.bases(containers, chosen)  # checks the option before anything runs
        total = sum(len(context.runs_needed(t.layers, containers, chosen)) for t in transforms)
        layers: dict[str, dict[str, Measurement]] = {}
        fixed: list[list[float]] = []
        gaps, checks = {}, {}
        with tqdm(total=total, desc=f"{self.name} in context", unit="run", disable=not progress) as bar:
            for t in transforms:
                iso = {}
                for n in t.layers:
                    given = (isolated or {}).get(n, {}).get(32)
                    if given is not None:  # the table's own: not copied into the store
                        iso[n] = list(given.samples) or [given.median]
                        continue
                    key = f"{t.name}|isolated-fp32|{n}"
                    if key not in store:
                        store[key] = list(self.profile_layer(specs[n], 32).samples)
                        if save:
                            save()
                    iso[n] = store[key]
                context.measure_all(t.name, t.layers, containers, store,
                                    lambda b, n, c, t=t: self._paired(model, t, b, n, c), save, bar.update,
                                    chosen)
                fit = context.fit_transform(t.layers, containers, iso, store, t.name, chosen)
                for n, per in fit.layers.items():
                    layers[n] = {c: Measurement.from_samples(v) for c, v in per.items()}
                fixed.append(fit.fixed)
                gaps.update({n: round(g, 3) for n, g in fit.base_gap_ms.items()})
                checks[t.name] = {b: {k: round(v, 3) for k, v in d.items()}
                                  for b, d in fit.uniform_check.items()}
        # transforms have different sample counts: the sum of their quantiles, median = Σ medians
        fixed_samples = [max(0.0, sum(float(np.quantile(f, q)) for f in fixed))
                         for q in (0.1, 0.3, 0.5, 0.7, 0.9)]
        return ContextProfile(layers, Measurement.from_samples(fixed_samples), [],
                              {"design": "one layer switched at a time, paired with its base transform",
                               "bases": used, "containers": containers,
                               "runs": total, "repeats": self.context_repeats,
                               "base_gap_ms": gaps, "uniform_check": checks})

    # --- helpers --------------------------------------------------------------------------------
    def _paired(self, model: nn.Module, t: graph.Transform, base: str, layer: str | None,
                container: str | None) -> tuple[list[float], list[float]]:
        """(base transform samples, switched − base samples), alternating which runs first."""
        rep = self._widest_bits
        profile = dict.fromkeys(t.layers, rep[base])
        jobs = [Job(self._transform_build(model, t, profile).executable, [t.input])]
        if layer is not None:
            switched = self._compile(t.module({**profile, layer: rep[container]}))
            jobs.append(Job(switched.executable, [t.input]))

        def measure(timers: list[Timer]) -> tuple[list[float], list[float]]:
            probe = statistics.fmean(timer.calibrate() for timer in timers)
            number, repeats = self.timing.plan(probe * len(timers))
            repeats = max(repeats, self.context_repeats)
            base_s, diff = [], []
            for i in range(repeats):
                order = timers if i % 2 == 0 else timers[::-1]
                got = {id(timer): timer.run(number, 1)[0] for timer in order}
                base_s.append(got[id(timers[0])])
                if len(timers) > 1:
                    diff.append(got[id(timers[1])] - got[id(timers[0])])
            return base_s, diff

        return self.device.measure(jobs, measure, self.timing)

    def _transform_build(self, model: nn.Module, t: graph.Transform, bit_profile: Mapping[str, int]
                         ) -> build.Built:
        containers = tuple(container_of(int(bit_profile[n])) for n in t.layers)
        key = (id(model), t.input.shape, t.name, containers)
        if key not in self._model_builds:
            self._model_builds[key] = self._compile(t.module(bit_profile))
        return self._model_builds[key]

    def _interleaved(self, timers: list[Timer]) -> list[float]:
        probe = sum(t.calibrate() for t in timers)
        _, repeats = self.timing.plan(probe)
        return [sum(t.run(repeat=1)[0] for t in timers) for _ in range(repeats)]

    def _compile(self, mod: tvm.IRModule) -> build.Built:
        tuned = self.tuner.options.trials > 0
        prepared = build.prepare(mod, self._tvm_target)
        if tuned:
            with local_threads(self.threads):  # tuning workers inherit TVM_NUM_THREADS
                self.tuner.ensure(mod, prepared[1])
        built = build.compile_module(mod, self._tvm_target, self.tuner.database if tuned else None, prepared)
        if tuned and built.untuned:
            log.warning("%s: no tuning record for %s (every candidate failed?); built untuned",
                        self.name, built.untuned)
        self.untuned_kernels.update(built.untuned)
        return built

    def _import(self, model: nn.Module, shape: tuple[int, ...]) -> list[graph.Transform]:
        key = (id(model), shape)
        if key not in self._transforms:
            self._transforms[key] = graph.import_model(model, shape, self.seed)
        return self._transforms[key]

    def _board(self) -> str | None:
        """Which board a remote table was measured on: its tracker key (the board kind) or the
        address of a standalone server; None locally (the CPU is in `device`)."""
        if not isinstance(self.device, RemoteDevice):
            return None
        return f"key {self.device.key}" if self.device.tracker else "rpc {}:{}".format(*self.device.direct)

    def _device_name(self) -> str:
        if isinstance(self.device, RemoteDevice):
            return f"{self.target.get('mtriple', self.target.get('mcpu', 'board'))} board over RPC"
        return cpu_model()

    def _rpc_runner(self) -> Any:
        from tvm.s_tir import meta_schedule as ms

        dev = self.device
        if not dev.tracker:
            raise ValueError("tuning on a board needs an RPC tracker (meta-schedule's RPC runner asks the "
                             "tracker for the board): pass rpc_tracker=HOST:PORT and rpc_key=KEY")
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=dev.tracker[0], tracker_port=dev.tracker[1],
                                           tracker_key=dev.key, session_timeout_sec=int(dev.session_timeout)),
            evaluator_config=ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=20),
            max_workers=1)


def _flag(value: bool | str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {name}={value!r}: write true, false or auto")
