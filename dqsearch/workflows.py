"""Workflows the CLI (and scripts) call: one config and one function each.

`train_run(TrainRun)` is `dqsearch train` (start from scratch, the zoo, a checkpoint, or resume;
QAT policy; latency term); `find_or_profile_table` is the table lookup-or-profile step that
`dqsearch study`, `dqsearch fmpq` and benchmark files share; `config_default` reads a config
dataclass's own default, so a command that exposes a field as a flag does not write the default a
second time; `fmpq_run(FmpqRun)` is `dqsearch fmpq`; `search_run(SearchRun)` is `dqsearch study`
(hardware, table, feasibility notes, then `study.StudyConfig` + `study.run_trials`). The benchmark
is `compare.Benchmark` + `compare.run_benchmark`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .units import QAT_BATCH_SIZE, QAT_CROP, QAT_LR, QAT_STEPS


class RunError(ValueError):
    """A run that cannot start as asked (printed as one line)."""


@dataclass
class LatencyGoal:
    """The η·L_lat term of a training run: a table, a budget, a weight and its form."""

    table: str
    target: str  # e.g. "20ms"
    weight: float
    form: str = "hinge"
    per_image: bool = True


@dataclass
class TrainRun:
    """One training run (`dqsearch train`): where it starts, what it trains, where it writes.

    The model comes from `checkpoint` (a path or embedded:Q), the CompressAI zoo (`pretrained`,
    at `quality`), or is built (`architecture`, `arch_args`); `policy` wraps it for QAT. `config`
    holds the TrainConfig fields given (the others keep TrainConfig's defaults). With `resume`
    an existing `output` continues (only `steps` may be raised); without, it is refused unless
    `force`."""

    output: Path
    data: Path | None = None
    resume: bool = False
    force: bool = False
    checkpoint: str | None = None
    pretrained: bool = False
    quality: int = 3
    architecture: str = "bmshj2018-hyperprior"
    arch_args: dict[str, Any] = field(default_factory=dict)
    policy: Any = None  # QuantPolicy | None
    config: dict[str, Any] = field(default_factory=dict)
    latency: LatencyGoal | None = None
    command: str | None = None  # recorded in the checkpoint
    progress: bool = True


def _latency_terms(goal: LatencyGoal | None, model) -> list:
    """η·L_lat from the goal, checked against the model."""
    if goal is None:
        return []
    from .latency import LatencyTable
    from .latency_term import LatencyTerm, check_table_matches, parse_latency
    from .quant.wrap import dynamic_layers

    if not dynamic_layers(model):
        raise RunError("the latency term needs selectors to steer: add --candidates (a DQ model)")
    table = LatencyTable.load(goal.table)
    check_table_matches(table, model)
    return [LatencyTerm(table, parse_latency(goal.target), goal.weight, goal.form, per_image=goal.per_image)]


def train_run(run: TrainRun) -> dict[str, Any] | None:
    """Run (or resume) the training run; returns the last logged metrics, or None when a resumed
    run had already finished its steps."""
    from .data import CropSampler, default_train_dir, list_images
    from .models import build_model, load_checkpoint, pretrained_model, resolve_checkpoint
    from .quant.wrap import wrap
    from .train import RunSpec, TrainConfig, train

    output = Path(run.output)
    train_state = None
    if run.resume and output.exists():
        ck = load_checkpoint(output, with_train_state=True)
        if not ck.train_state:
            raise RunError(f"{output} holds no training state to resume (it is a final export)")
        steps = run.config.get("steps")
        config = TrainConfig.from_dict({**ck.train_state["config"], **({"steps": steps} if steps else {})})
        model, train_state = ck.model, ck.train_state
        spec = RunSpec(ck.architecture, ck.arch_args, ck.policy, ck.meta)
        if train_state["step"] >= config.steps:
            print(f"{output} already finished {train_state['step']} steps; raise --steps to continue")
            return None
    else:
        if output.exists() and not run.force:
            raise RunError(f"{output} exists: pass --resume to continue it or --force to overwrite")
        config = TrainConfig(**run.config)
        import torch

        torch.manual_seed(config.seed)  # model initialisation is part of the reproducible run
        meta = {"command": run.command}
        if run.pretrained:
            model = pretrained_model(run.architecture, run.quality)
            spec = RunSpec(run.architecture, {}, None, meta)
        elif run.checkpoint:
            ck = load_checkpoint(resolve_checkpoint(run.checkpoint))
            if ck.policy is not None and run.policy is not None:
                raise RunError(f"{run.checkpoint} is already quantized; start QAT from an FP32 one")
            model = ck.model
            spec = RunSpec(ck.architecture, ck.arch_args, ck.policy,
                           {**meta, "init_from": str(run.checkpoint), "init_model_id": ck.model_id})
        else:
            model = build_model(run.architecture, **run.arch_args)
            spec = RunSpec(run.architecture, dict(run.arch_args), None, meta)
        if run.policy is not None:
            wrap(model, run.policy)
            spec.policy = run.policy
    sampler = CropSampler(list_images(Path(run.data) if run.data else default_train_dir()), config.crop)
    terms = _latency_terms(run.latency, model)
    return train(model, spec, sampler, config, output, train_state, terms, progress=run.progress)


def config_default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (its default_factory called)."""
    f = cls.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is dataclasses.MISSING:
        raise ValueError(f"{cls.__name__}.{name} has no default")
    return f.default


def find_or_profile_table(backend_name: str, model, info: dict, shape: tuple[int, ...],
                          options: dict | None, progress: bool) -> Path:
    """A table measured on the device this backend instance would measure (same identity: CPU or
    board, threads, runtime versions, tuning), from the user cache, a plugin or latency_models/;
    else profile one into the user cache. Tables of another device are named, with the field that
    differs, before profiling."""
    from .backends.options import open_backend
    from .backends.profiling import profile_table
    from .backends.tables import cache_path, find_table

    backend = open_backend(backend_name, options=options)
    found = find_table(backend, model, shape)
    if found.path is not None:
        print(f"using {found.path} ({found.where}): measured on this device and setting")
        return found.path
    for line in found.report():
        print(f"dqsearch: warning: {line}", file=sys.stderr)
    slug = info["architecture"] + "".join(f"-{k}{v}" for k, v in sorted(info.get("arch_args", {}).items()))
    path = cache_path(backend, slug, shape)
    hint = " (pass --latency-table PATH to use another table anyway)" if found.other_device else ""
    print(f"no {backend_name} table for this model at {shape[2]}x{shape[3]} on this device: profiling into "
          f"{path}{hint}")
    bits = sorted(backend.capabilities())
    path.parent.mkdir(parents=True, exist_ok=True)
    profile_table(backend, model, shape, bits, path, resume=path.exists(), model_info=info, progress=progress)
    return path


@dataclass
class FmpqRun:
    """One FMPQ baseline run (`dqsearch fmpq`): exactly one of `target_size` (packed conv weights
    / FP32) or `target_latency` (with `latency_table`, or a `backend` whose table is found or
    profiled at `input_shape`), then leaky-clip QAT with this recipe."""

    checkpoint: str | None
    output: Path
    bits: tuple[int, ...] = ()  # () = fmpq.DEFAULT_BITS
    target_size: float | None = None
    target_latency: str | None = None
    latency_table: str | None = None
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int, int] | None = None
    data: Path | None = None
    steps: int = QAT_STEPS
    batch_size: int = QAT_BATCH_SIZE
    crop: int = QAT_CROP
    lr: float = QAT_LR
    calibration_batches: int = 4
    seed: int = 0
    compile: bool = False
    progress: bool = True


def fmpq_run(run: FmpqRun):
    """Find (or profile) the latency table if needed, then `fmpq.run_fmpq`; returns its result
    and the target."""
    from .data import CropSampler, default_train_dir, list_images
    from .fmpq import DEFAULT_BITS, FMPQTarget, run_fmpq
    from .latency_term import parse_latency
    from .models import load_checkpoint, resolve_checkpoint
    from .train import TrainConfig
    from .units import DEFAULT_INPUT, DEFAULT_LMBDA, parse_input_shape

    ck = load_checkpoint(resolve_checkpoint(run.checkpoint))
    table = run.latency_table
    if run.target_latency and not table and run.backend:
        info = {"architecture": ck.architecture, "arch_args": ck.arch_args}
        shape = run.input_shape or parse_input_shape(DEFAULT_INPUT)
        table = str(find_or_profile_table(run.backend, ck.model, info, shape, run.backend_options,
                                          run.progress))
    latency = parse_latency(run.target_latency) if run.target_latency else None
    target = FMPQTarget(run.target_size, latency, table)
    sampler = CropSampler(list_images(run.data or default_train_dir()), run.crop)
    config = TrainConfig(lmbda=ck.meta.get("lmbda") or DEFAULT_LMBDA, steps=run.steps,
                         batch_size=run.batch_size, crop=run.crop, lr=run.lr, seed=run.seed,
                         compile=bool(run.compile))
    found = run_fmpq(ck, run.bits or DEFAULT_BITS, target, sampler, config, run.output,
                     run.calibration_batches, progress=run.progress)
    return found, target


# This machine's CPU, when a search names no hardware: the first installed of these.
LOCAL_CPU_BACKENDS = ("ort-cpu", "tvm-cpu")


def local_cpu_backend() -> str:
    from .backends import available_backends

    found = [b for b in LOCAL_CPU_BACKENDS if b in available_backends()]
    if not found:
        raise RunError("name the hardware: --backend NAME (or --latency-table TABLE); no CPU "
                       f"backend ({', '.join(LOCAL_CPU_BACKENDS)}) is installed: "
                       "pip install -e backends/onnxruntime")
    return found[0]


@dataclass
class SearchRun:
    """One latency-constrained search (`dqsearch study`). Without `backend` and `latency_table`
    it measures on this machine's CPU (`LOCAL_CPU_BACKENDS`); a backend's table is found or
    profiled (`find_or_profile_table`). `settings` are the `StudyConfig` fields given (the others
    keep StudyConfig's defaults). The study is `study_name` (default dq-BACKEND-TARGET) in
    `storage` (default: SQLite in `output`, default studies/NAME)."""

    target_latency: str
    checkpoints: list[str] | None = None  # the FP32 family (default embedded:1..4)
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    latency_table: str | None = None
    input: str | None = None  # HxW of a table profiled now (default units.DEFAULT_INPUT)
    study_name: str | None = None
    storage: str | None = None
    output: Path | None = None
    trials: int = 12
    data: Path | None = None
    measure: bool | None = None  # default: on for timed backends, off for simulated ones
    lmbda: float | None = None
    compile: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def search_run(run: SearchRun):
    """Create (or resume) the study and run its trials; returns (study, config, output folder,
    trials run now)."""
    from .backends.host import cpu_model
    from .data import default_train_dir
    from .feasibility import assess
    from .latency import LatencyTable
    from .latency_term import parse_latency
    from .models import EMBEDDED_QUALITIES, load_checkpoint, resolve_checkpoint
    from .study import StudyConfig, create_study, default_storage, run_trials, timed_backend
    from .units import DEFAULT_INPUT, parse_input_shape

    target = parse_latency(run.target_latency)
    backend = run.backend
    if not backend and not run.latency_table:
        backend = local_cpu_backend()
        print(f"no --backend given: measuring on this machine's CPU with {backend} ({cpu_model()}); "
              "name another with --backend")
    options = run.backend_options if backend else {}
    specs = run.checkpoints or [f"embedded:{q}" for q in EMBEDDED_QUALITIES]
    family = [s if s.startswith("embedded:") else str(Path(s).resolve()) for s in specs]
    name = run.study_name or f"dq-{backend or 'table'}-{target:g}ms"
    out = Path(run.output) if run.output else Path("studies") / name
    input_text = run.input or DEFAULT_INPUT
    if run.latency_table:
        table = str(Path(run.latency_table).resolve())
    else:
        ck = load_checkpoint(resolve_checkpoint(family[0]))
        info = {"architecture": ck.architecture, "arch_args": ck.arch_args}
        table = str(find_or_profile_table(backend, ck.model, info, parse_input_shape(input_text), options,
                                          run.progress).resolve())
    loaded = LatencyTable.load(table)
    shape = loaded.metadata.get("input_shape")
    size = f"{shape[-2]}x{shape[-1]}" if shape else input_text
    chosen = {k: run.settings.get(k, config_default(StudyConfig, k)) for k in ("bit_sets", "selector")}
    for note in assess(loaded, chosen["bit_sets"], target, chosen["selector"], size,
                       backend or "this table"):
        print(f"note: {note}")
    measure = run.measure if run.measure is not None else timed_backend(backend)
    config = StudyConfig(
        family=family, latency_table=table, target_ms=target,
        train_data=str(Path(run.data).resolve() if run.data else default_train_dir()),
        trial_dir=str((out / "trials").resolve()), backend=backend, lmbda=run.lmbda,
        measure=measure, compile=bool(run.compile), backend_options=options, **run.settings)
    study = create_study(name, run.storage or default_storage(out, name), config)
    ran = run_trials(study, config, run.trials, progress=run.progress)
    return study, config, out, ran
