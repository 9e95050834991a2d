"""Argument parsing for `dqsearch study`, `dqsearch study show|export` and `dqsearch worker`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_BIT_SETS = "4,6,8;6,8,10;4,8,16"
# This machine's CPU, when the user names no hardware: the first installed of these.
LOCAL_CPU_BACKENDS = ("ort-cpu", "tvm-cpu")


def _local_cpu_backend() -> str:
    from .backends import available_backends

    found = [b for b in LOCAL_CPU_BACKENDS if b in available_backends()]
    if not found:
        raise ValueError("name the hardware: --backend NAME (or --latency-table TABLE); no CPU "
                         f"backend ({', '.join(LOCAL_CPU_BACKENDS)}) is installed: "
                         "pip install -e backends/onnxruntime")
    return found[0]


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    return lo, hi


def _bit_sets(text: str) -> list[list[int]]:
    try:
        sets = [sorted(int(b) for b in s.split(",")) for s in text.split(";") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sets like '4,6,8;6,8,10', got {text!r}") from None
    if not sets or any(len(s) < 2 for s in sets):
        raise argparse.ArgumentTypeError("each candidate set needs at least two bit-widths")
    from .quant.quantizer import check_bits

    try:
        for s in sets:
            for b in s:
                check_bits(b)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return sets


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _output(args: argparse.Namespace) -> Path:
    return Path(args.output) if args.output else Path("studies") / args.study_name


def _storage(args: argparse.Namespace, create: bool = True) -> str:
    """--storage, else the SQLite file in the study's folder; `show`/`export` read it and create
    neither the folder nor the database."""
    from .study import StudyError, default_storage

    if args.storage:
        return args.storage
    if not create:
        db = _output(args) / f"{args.study_name}.db"
        if not db.is_file():
            raise StudyError(f"no study {args.study_name!r}: no study database {db}; pass --storage URL "
                             "or -o FOLDER of the study")
        return f"sqlite:///{db.resolve()}"
    return default_storage(_output(args), args.study_name)


def find_or_profile_table(backend_name: str, model, info: dict, shape: tuple[int, ...],
                          options: dict | None, progress: bool) -> Path:
    """A table measured on the device this backend instance would measure (same identity: CPU or
    board, threads, runtime versions, tuning), from the user cache, a plugin or latency_models/;
    else profile one into the user cache. Tables of another device are named, with the field that
    differs, before profiling."""
    import sys

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


def cmd_study(args: argparse.Namespace) -> int:
    from .backends.host import cpu_model
    from .cli_backends import _backend_options, input_size
    from .feasibility import assess
    from .latency import LatencyTable
    from .latency_term import parse_latency
    from .models import EMBEDDED_QUALITIES, load_checkpoint, resolve_checkpoint
    from .study import StudyConfig, create_study, run_trials, timed_backend
    from .threads import set_torch_threads

    set_torch_threads(args.threads)
    target = parse_latency(args.target_latency)
    if not args.backend and not args.latency_table:
        args.backend = _local_cpu_backend()
        print(f"no --backend given: measuring on this machine's CPU with {args.backend} ({cpu_model()}); "
              "name another with --backend")
    options = _backend_options(args) if args.backend else {}
    specs = args.checkpoint or [f"embedded:{q}" for q in EMBEDDED_QUALITIES]
    family = [s if s.startswith("embedded:") else str(Path(s).resolve()) for s in specs]
    args.study_name = args.study_name or f"dq-{args.backend or 'table'}-{target:g}ms"
    out = _output(args)
    if args.latency_table:
        table = str(Path(args.latency_table).resolve())
    elif args.backend:
        ck = load_checkpoint(resolve_checkpoint(family[0]))
        info = {"architecture": ck.architecture, "arch_args": ck.arch_args}
        table = str(find_or_profile_table(args.backend, ck.model, info, input_size(args.input), options,
                                          not args.no_progress).resolve())
    loaded = LatencyTable.load(table)
    shape = loaded.metadata.get("input_shape")
    size = f"{shape[-2]}x{shape[-1]}" if shape else args.input
    for note in assess(loaded, args.bit_sets, target, args.selector, size, args.backend or "this table"):
        print(f"note: {note}")
    measure = args.measure if args.measure is not None else timed_backend(args.backend)
    from .data import default_train_dir

    config = StudyConfig(
        family=family, latency_table=table, target_ms=target,
        train_data=str(Path(args.data).resolve() if args.data else default_train_dir()),
        trial_dir=str((out / "trials").resolve()), backend=args.backend, steps=args.steps,
        batch_size=args.batch_size, crop=args.crop, lr=args.lr, val_limit=args.val_limit,
        bit_sets=args.bit_sets, gamma=args.gamma_range, eta=args.eta_range,
        latency_form=args.latency_form, selector=args.selector, objective=args.objective,
        lmbda=args.lmbda, measure=measure, sampler=args.sampler, startup_trials=args.startup_trials,
        compile=bool(args.compile), seed=args.seed,
        heartbeat_s=args.heartbeat, grace_s=args.grace, backend_options=options)
    storage = _storage(args)
    study = create_study(args.study_name, storage, config)
    ran = run_trials(study, config, args.trials, progress=not args.no_progress)
    print(f"study {args.study_name}: ran {ran} trial(s)")
    return _show(study, config, out)


def _show(study, config, out: Path) -> int:
    from .report import markdown_table
    from .study import write_study_report

    res = write_study_report(study, config, out)
    cols = [("trial", "trial", "{}"), ("lmbda", "λ", "{:.4g}"), ("bits", "bit-set", "{}"),
            ("gamma", "γ", "{:.3g}"), ("eta", "η", "{:.3g}"), ("bpp", "bpp", "{:.4f}"),
            ("psnr", "PSNR (dB)", "{:.2f}"), ("avg_bits", "avg bits", "{:.2f}"),
            ("predicted_ms", "predicted ms", "{:.2f}"), ("measured_ms", "measured ms", "{:.2f}")]
    print(f"{len(res['trials'])} finished trials, {config.sampler} sampler "
          f"({config.startup_trials} random start-up trials), {res['repeated_parameters']} repeated "
          "parameter set(s)")
    from .study import timed_backend

    if config.backend and not timed_backend(config.backend):
        print(f"{config.backend} is simulated: its measured latency is the prediction by construction")
    elif not config.measure:
        print("latency predicted from the table (not measured: --measure to constrain on measurements)")
    print(f"feasible Pareto front on the validation images (latency ≤ {config.target_ms:g} ms"
          f"{', measured' if config.measure else ', predicted'}):")
    print(markdown_table(res["front"], cols) if res["front"] else "(no feasible trial yet)")
    if res.get("bd_rate_vs_fp32") is not None:
        print(f"BD-rate of the front against the FP32 family: {res['bd_rate_vs_fp32']:+.2f}%")
    print(f"figures and summary.json in {out}")
    return 0


def cmd_study_show(args: argparse.Namespace) -> int:
    from .study import load_study

    study, config = load_study(args.study_name, _storage(args, create=False))
    return _show(study, config, _output(args))


def cmd_study_export(args: argparse.Namespace) -> int:
    from .study import export_trial, load_study

    study, _ = load_study(args.study_name, _storage(args, create=False))
    path = export_trial(study, args.trial, args.out)
    print(f"wrote {path}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .backends.options import parse_options
    from .cli import UsageError
    from .study import load_study, run_trials
    from .threads import set_torch_threads

    set_torch_threads(args.threads)
    study, config = load_study(args.study_name, args.storage)
    try:
        config.backend_options = {**config.backend_options, **parse_options(args.option)}
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.trial_dir:
        config.trial_dir = str(Path(args.trial_dir).resolve())
    ran = run_trials(study, config, args.trials, progress=not args.no_progress)
    print(f"worker finished: ran {ran} trial(s) of study {args.study_name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="latency-constrained search (show / export: see 'study show -h')")
    p.add_argument("--checkpoint", nargs="+", help="FP32 family (default: embedded:1..4)")
    p.add_argument("--backend", help="backend whose latency table constrains the search "
                   "(default: this machine's CPU, ort-cpu or tvm-cpu)")
    p.add_argument("--latency-table", help="use this table instead of finding/profiling one")
    p.add_argument("--input", default="768x512", help="input size the latency refers to (HxW)")
    p.add_argument("--target-latency", required=True, help="budget, e.g. 20ms or 0.5s")
    p.add_argument("--trials", type=_positive, default=12, help="finished trials wanted (all workers)")
    p.add_argument("--study-name", help="default dq-BACKEND-TARGET")
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite file in the output folder; "
                   "postgresql://user:pass@host/db to share with workers)")
    p.add_argument("-o", "--output", help="folder for the database, trial checkpoints and figures")
    p.add_argument("--steps", type=_positive, default=300, help="QAT steps per trial")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--data", help="training images (a validation split is held out)")
    p.add_argument("--val-limit", type=_positive, default=5, help="validation images per trial")
    p.add_argument("--bit-sets", type=_bit_sets, default=_bit_sets(DEFAULT_BIT_SETS),
                   help=f"candidate sets to search (default {DEFAULT_BIT_SETS!r})")
    p.add_argument("--gamma-range", type=_range, default=(1e-3, 0.5), help="log-uniform γ range")
    p.add_argument("--eta-range", type=_range, default=(0.01, 10.0),
                   help="η range (log-uniform; 0,0 disables the latency term)")
    p.add_argument("--latency-form", choices=["hinge", "linear"], default="hinge")
    p.add_argument("--selector", choices=["global", "per-layer"], default="global")
    p.add_argument("--objective", choices=["multi", "single"], default="multi",
                   help="multi: (bpp, PSNR); single: RD cost at --lambda, with pruning")
    p.add_argument("--lambda", dest="lmbda", type=float, help="fixed λ for --objective single")
    p.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None,
                   help="constrain on the latency measured on the backend for the profiles each trial's "
                   "model picks (default: on for timed backends, off for simulated ones)")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe",
                   help="Optuna sampler (reseeded per trial from --seed: no process replays another)")
    p.add_argument("--startup-trials", type=int, default=8,
                   help="random trials before TPE models the history (default 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fake quantizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heartbeat", type=_positive, default=60, help="seconds between worker heartbeats")
    p.add_argument("--grace", type=_positive, default=180, help="seconds before a silent trial is retried")
    p.add_argument("--threads", type=int, help="CPU threads for training and evaluation (default: every "
                   "CPU this process may use) and for the backend (default 1)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend option, as for `dqsearch profile` (stored in the study for its workers)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_study)

    for name, func, helptext in (("study-show", cmd_study_show, "Pareto front, BD-rate, figures"),
                                 ("study-export", cmd_study_export, "write a trial's checkpoint")):
        q = sub.add_parser(name, help=f"(also `dqsearch {name.replace('-', ' ')}`) {helptext}")
        q.add_argument("study_name")
        q.add_argument("--storage")
        q.add_argument("-o", "--output", help="study folder (default studies/NAME)")
        if name == "study-export":
            q.add_argument("--trial", type=int, required=True)
            q.add_argument("--out", required=True, help="checkpoint to write")
        q.set_defaults(func=func)

    w = sub.add_parser("worker", help="join a study from another process or machine")
    w.add_argument("--study-name", required=True)
    w.add_argument("--storage", required=True)
    w.add_argument("--trials", type=_positive, required=True, help="stop when the study has this many")
    w.add_argument("--trial-dir", help="where this worker writes trial checkpoints")
    w.add_argument("--threads", type=int, help="CPU threads for this worker's training and evaluation "
                   "(the backend measures with the study's stored options)")
    w.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="override one of the study's backend options for this worker")
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(func=cmd_worker)
