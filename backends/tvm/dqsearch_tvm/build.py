"""Lower a Relax module, apply tuned schedules from the database, compile it for a target.

The order is the one meta-schedule expects: legalize and fuse first (the PrimFuncs that exist
after fusion are the tuning workloads), then replace each workload that has a record in the
database with its best schedule, then the rest of the default pipeline. Workloads without a
record compile untuned; `Built.untuned` names them so tables can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax
from tvm.target import Target


@dataclass
class Built:
    """A compiled module and which of its kernels ran with a tuned schedule."""

    executable: Any  # tvm.runtime.Executable
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)


def lower(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Legalize and fuse: the kernels (tuning workloads) the module will run."""
    from tvm.relax.backend.cpu_generic.pipeline import legalize_passes

    with target:
        return tvm.transform.Sequential(legalize_passes(target))(mod)


def workloads(mod: tvm.IRModule, target: Target) -> list[Any]:
    """Meta-schedule tasks (one per distinct kernel) of a lowered module."""
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(mod, target))


def prepare(mod: tvm.IRModule, target: Target) -> tuple[tvm.IRModule, list[Any]]:
    """The lowered module and its tuning tasks (lowering once serves tuning and compiling)."""
    lowered = lower(mod, target)
    return lowered, workloads(lowered, target)


def compile_module(mod: tvm.IRModule, target: Target, database: Any | None = None,
                   prepared: tuple[tvm.IRModule, list[Any]] | None = None) -> Built:
    """Compile a Relax module for `target`, tuned where the database has records."""
    from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes

    lowered, tasks = prepared or prepare(mod, target)
    tuned, untuned = [], []
    for task in tasks:
        has = database is not None and database.has_workload(task.dispatched[0])
        (tuned if has else untuned).append(task.task_name)
    if database is not None:
        from .intrin import register_intrinsics

        register_intrinsics()  # tuned records replay tensorize steps by intrinsic name
        with target, database:
            lowered = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
    rest = tvm.transform.Sequential(dataflow_lower_passes(target) + finalize_passes(target))
    with target:
        ex = tvm.compile(lowered, target=target, relax_pipeline=rest)
    return Built(ex, tuned, untuned)
