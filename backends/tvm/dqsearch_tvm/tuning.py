"""Meta-schedule tuning with a database on disk, one folder per target.

A workload is one kernel after fusion (structural hash of its PrimFunc), so layers of the same
shape share a record, and records made by per-layer profiling also serve whole-transform builds.
Before a build, `Tuner.ensure` tunes only the workloads whose recorded trial count is below the
requested one; everything else comes from the database, across runs and processes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from . import build
from .target import target_key

DEFAULT_ROOT = Path(os.environ.get("DQSEARCH_TVM_DB", Path.home() / ".cache" / "dqsearch" / "tvm"))


def _build_without_intrinsic_import(mod: tvm.IRModule, target: Target, _params: Any) -> Any:
    """meta-schedule's default build minus `import tvm.s_tir.tensor_intrin`, which costs a build
    worker ~27 s of a 30 s timeout on a busy machine; tensorized candidates already carry the
    intrinsic's body, so the build does not need the registry."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _quiet() -> dict[str, int]:
    """meta-schedule logs every builder/runner start at INFO; keep the progress output readable."""
    names = ["tvm.s_tir.meta_schedule"] + [n for n in logging.root.manager.loggerDict
                                           if n.startswith("tvm.s_tir.meta_schedule")]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    # meta-schedule re-configures its logger by handler *name* on every tuning call and crashes on
    # an unnamed handler (one the previous call's dictConfig left behind under pytest)
    top = logging.getLogger("tvm.s_tir.meta_schedule")
    for h in [h for h in top.handlers if h.get_name() is None]:
        top.removeHandler(h)
    return levels


def _restore(levels: dict[str, int]) -> None:
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


@dataclass
class TuningOptions:
    trials: int = 0  # per workload; 0 = untuned builds
    population: int = 128  # evolutionary search population (512 in TVM; smaller is faster)
    trials_per_iter: int = 16
    build_timeout: float = 120.0
    run_timeout: float = 60.0
    seed: int = 0


class Tuner:
    """The tuning database of one target and the tuning loop that fills it."""

    def __init__(self, target: dict[str, Any], options: TuningOptions, root: str | Path | None = None,
                 runner: Callable[[], Any] | None = None, export: Callable[[Any], str] | None = None) -> None:
        self.target_spec, self.options = target, options
        self.target = Target(target)
        self.dir = Path(root or DEFAULT_ROOT) / target_key(target)
        self._runner, self._export = runner, export
        self._db: Any = None
        self.tuned_seconds = 0.0

    @property
    def database(self) -> Any:
        from tvm.s_tir import meta_schedule as ms

        if self._db is None:
            from .intrin import register_intrinsics

            register_intrinsics()  # loading records replays tensorize steps by intrinsic name
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "target.json").write_text(json.dumps(self.target_spec, indent=1) + "\n")
            self._db = ms.database.JSONDatabase(work_dir=str(self.dir), module_equality="structural")
        return self._db

    def exists(self) -> bool:
        return (self.dir / "database_tuning_record.json").is_file()

    # --- trial bookkeeping: how many trials each workload has had ------------------------------
    def _trials_path(self) -> Path:
        return self.dir / "trials.json"

    def _trials(self) -> dict[str, Any]:
        p = self._trials_path()
        return json.loads(p.read_text()) if p.is_file() else {}

    def _record_trials(self, done: dict[str, Any]) -> None:
        trials = {**self._trials(), **done}
        tmp = self._trials_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(trials, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self._trials_path())

    @staticmethod
    def workload_key(task: Any) -> str:
        import tvm_ffi

        return f"{tvm_ffi.structural_hash(task.dispatched[0]) & 0xFFFFFFFFFFFFFFFF:016x}"

    def missing(self, tasks: list[Any]) -> list[Any]:
        """The tasks that have had fewer than the requested trials (or have no record)."""
        trials = self._trials()
        db = self.database
        out = []
        for task in tasks:
            had = trials.get(self.workload_key(task), {}).get("trials", 0)
            if had < self.options.trials or not db.has_workload(task.dispatched[0]):
                out.append(task)
        return out

    def ensure(self, mod: tvm.IRModule, tasks: list[Any] | None = None) -> list[str]:
        """Tune the workloads of `mod` (or the given tasks of it) the database lacks; returns the
        names tuned now."""
        if self.options.trials <= 0:
            return []
        if tasks is None:
            tasks = build.prepare(mod, self.target)[1]
        tasks = self.missing(tasks)
        if not tasks:
            return []
        from .intrin import register_intrinsics

        register_intrinsics()
        started = time.perf_counter()
        levels = _quiet()
        try:
            self._tune(tasks)
        finally:
            _restore(levels)
        elapsed = time.perf_counter() - started
        self.tuned_seconds += elapsed
        self._record_trials({self.workload_key(t): {"name": t.task_name, "trials": self.options.trials,
                                                    "seconds": round(elapsed / len(tasks), 1)}
                             for t in tasks})
        return [t.task_name for t in tasks]

    def _tune(self, tasks: list[Any]) -> None:
        from tvm.s_tir import meta_schedule as ms

        opts = self.options
        strategy = ms.search_strategy.EvolutionarySearch(population_size=opts.population,
                                                         init_min_unmeasured=min(50, opts.population))
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, str(self.dir), strategy=strategy, num_threads=1, seed=opts.seed)
        builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=opts.build_timeout,
                                          f_build=_build_without_intrinsic_import, f_export=self._export)
        runner = self._runner() if self._runner else ms.runner.LocalRunner(
            timeout_sec=opts.run_timeout,
            evaluator_config=ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=20))
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(self.dir),
                           max_trials_global=opts.trials * len(contexts), max_trials_per_task=opts.trials,
                           num_trials_per_iter=min(opts.trials_per_iter, opts.trials),
                           builder=builder, runner=runner, database=self.database,
                           cost_model=ms.cost_model.XGBModel(num_tuning_cores=1))
