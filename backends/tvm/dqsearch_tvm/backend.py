"""TvmBackend: the dqsearch Backend contract on Apache TVM (Relax), local CPU or RPC board."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from torch import nn

from dqsearch.backends import Backend, LayerSpec, Measurement, container_of, cpu_model, parse_input_shape

from . import build, graph
from .device import Job, LocalDevice, RemoteDevice, tuning_export
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
    thread, else "wall" = time_evaluator); seed.
    """

    latency_by_container = True  # 2…8 bits run the same int8 program, 9…16 the same int16 one

    def __init__(self, name: str = "tvm-cpu", *, device: LocalDevice | RemoteDevice | None = None,
                 threads: int = 1, target: str | dict | None = None, tune_trials: int = 0,
                 tuning_db: str | None = None, population: int = 128, build_timeout: float = 120.0,
                 repeats: int = 10, min_repeats: int = 3, min_repeat_ms: float = 20.0,
                 budget_seconds: float = 2.0, clock: str | None = None, seed: int = 0) -> None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if int(tune_trials) < 0:
            raise ValueError(f"tune_trials must be 0 (untuned) or more, got {tune_trials}")
        self.name, self.threads, self.seed = name, int(threads), int(seed)
        self.device = device or LocalDevice(self.threads)
        if clock is None:  # see timing.py: on a shared machine wall time mostly measures the others
            clock = "thread" if not self.device.remote and self.threads == 1 else "wall"
        self.target = parse_target(target) if target else host_target(self.threads)
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
            "precision": "fp32 for 32 bits; int8 (uint8 activations x int8 per-channel weights -> int32, "
                         "NCHWc) for <= 8; int16 (int16 x int16 -> int32) for <= 16",
        }

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
        jobs = []
        for t in transforms:
            containers = tuple(container_of(int(bit_profile[n])) for n in t.layers)
            key = (id(model), shape, t.name, containers)
            if key not in self._model_builds:
                self._model_builds[key] = self._compile(t.module(bit_profile))
            jobs.append(Job(self._model_builds[key].executable, [t.input]))
        return Measurement.from_samples(self.device.measure(jobs, self._interleaved, self.timing))

    # --- helpers --------------------------------------------------------------------------------
    def _interleaved(self, timers: list[Timer]) -> list[float]:
        probe = sum(t.calibrate() for t in timers)
        _, repeats = self.timing.plan(probe)
        return [sum(t.run(repeat=1)[0] for t in timers) for _ in range(repeats)]

    def _compile(self, mod: tvm.IRModule) -> build.Built:
        tuned = self.tuner.options.trials > 0
        prepared = build.prepare(mod, self._tvm_target)
        if tuned:
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
