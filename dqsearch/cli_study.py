"""The commands `dqsearch study`, `dqsearch study show|export` and `dqsearch worker` (parsing
only; the search is `dqsearch.study`, the table step `workflows.find_or_profile_table`). Flags
that set a `StudyConfig` field default to None: the field's own default applies."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import (
    THREADS_HELP,
    Command,
    UsageError,
    add_input_arg,
    backend_options,
    bit_sets,
    float_range,
    input_size,
    positive,
)


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


def cmd_study(args: argparse.Namespace) -> int:
    from .threads import set_torch_threads
    from .workflows import SearchRun, search_run

    if args.target_latency is None:
        raise UsageError("the following arguments are required: --target-latency")
    set_torch_threads(args.threads)
    if not args.latency_table:
        input_size(args.input)  # an --input the codec runs (a multiple of 64), checked before anything
    settings = {"steps": args.steps, "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr,
                "val_limit": args.val_limit, "bit_sets": args.bit_sets, "gamma": args.gamma_range,
                "eta": args.eta_range, "latency_form": args.latency_form, "selector": args.selector,
                "objective": args.objective, "sampler": args.sampler,
                "startup_trials": args.startup_trials, "seed": args.seed, "heartbeat_s": args.heartbeat,
                "grace_s": args.grace}
    run = SearchRun(
        target_latency=args.target_latency, checkpoints=args.checkpoint, backend=args.backend,
        backend_options=backend_options(args) if args.backend or not args.latency_table else {},
        latency_table=args.latency_table, input=args.input, study_name=args.study_name,
        storage=args.storage, output=Path(args.output) if args.output else None, trials=args.trials,
        data=Path(args.data) if args.data else None, measure=args.measure, lmbda=args.lmbda,
        compile=bool(args.compile), settings={k: v for k, v in settings.items() if v is not None},
        progress=not args.no_progress)
    study, config, out, ran = search_run(run)
    print(f"study {study.study_name}: ran {ran} trial(s)")
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


class Study(Command):
    name = "study"
    help = "latency-constrained search (and `study show`, `study export`)"
    run = staticmethod(cmd_study)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", nargs="+", help="FP32 family (default: embedded:1..4)")
        p.add_argument("--backend", help="backend whose latency table constrains the search "
                       "(default: this machine's CPU, ort-cpu or tvm-cpu)")
        p.add_argument("--latency-table", help="use this table instead of finding/profiling one")
        add_input_arg(p, "input size the latency refers to")
        p.add_argument("--target-latency", help="budget, e.g. 20ms or 0.5s (required)")
        p.add_argument("--trials", type=positive, default=12, help="finished trials wanted (all workers)")
        p.add_argument("--study-name", help="default dq-BACKEND-TARGET")
        p.add_argument("--storage", help="Optuna storage URL (default: SQLite file in the output folder; "
                       "postgresql://user:pass@host/db to share with workers)")
        p.add_argument("-o", "--output", help="folder for the database, trial checkpoints and figures")
        # the search's own settings: None means StudyConfig's default
        p.add_argument("--steps", type=positive, help="QAT steps per trial")
        p.add_argument("--batch-size", type=positive)
        p.add_argument("--crop", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--data", help="training images (a validation split is held out)")
        p.add_argument("--val-limit", type=positive, help="validation images per trial")
        p.add_argument("--bit-sets", type=bit_sets,
                       help="candidate sets to search, e.g. '4,6,8;6,8,10' (default: StudyConfig.bit_sets)")
        p.add_argument("--gamma-range", type=float_range, help="log-uniform γ range LOW,HIGH")
        p.add_argument("--eta-range", type=float_range,
                       help="η range LOW,HIGH (log-uniform; 0,0 disables the latency term)")
        p.add_argument("--latency-form", choices=["hinge", "linear"])
        p.add_argument("--selector", choices=["global", "per-layer"])
        p.add_argument("--objective", choices=["multi", "single"],
                       help="multi (default): (bpp, PSNR); single: RD cost at --lambda, with pruning")
        p.add_argument("--lambda", dest="lmbda", type=float, help="fixed λ for --objective single")
        p.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None,
                       help="constrain on the latency measured on the backend for the profiles each trial's "
                       "model picks (default: on for timed backends, off for simulated ones)")
        p.add_argument("--sampler", choices=["tpe", "random"],
                       help="Optuna sampler, tpe by default (reseeded per trial from --seed: no process "
                            "replays another)")
        p.add_argument("--startup-trials", type=int,
                       help="random trials before TPE models the history")
        p.add_argument("--compile", action="store_true", help="torch.compile the fake quantizer")
        p.add_argument("--seed", type=int)
        p.add_argument("--heartbeat", type=positive, help="seconds between worker heartbeats")
        p.add_argument("--grace", type=positive, help="seconds before a silent trial is retried")
        p.add_argument("--threads", type=int, help=THREADS_HELP)
        p.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="backend option, as for `dqsearch profile` (stored in the study for its workers)")
        p.add_argument("--no-progress", action="store_true")


class _StudyFolder(Command):
    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("study_name")
        p.add_argument("--storage")
        p.add_argument("-o", "--output", help="study folder (default studies/NAME)")


class StudyShow(_StudyFolder):
    name = "study show"
    help = "Pareto front, BD-rate, figures"
    run = staticmethod(cmd_study_show)


class StudyExport(_StudyFolder):
    name = "study export"
    help = "write a trial's checkpoint"
    run = staticmethod(cmd_study_export)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--trial", type=int, required=True)
        p.add_argument("--out", required=True, help="checkpoint to write")


class Worker(Command):
    name = "worker"
    help = "join a study from another process or machine"
    run = staticmethod(cmd_worker)

    def add_arguments(self, w: argparse.ArgumentParser) -> None:
        w.add_argument("--study-name", required=True)
        w.add_argument("--storage", required=True)
        w.add_argument("--trials", type=positive, required=True, help="stop when the study has this many")
        w.add_argument("--trial-dir", help="where this worker writes trial checkpoints")
        w.add_argument("--threads", type=int, help="CPU threads for this worker's training and evaluation "
                       "(the backend measures with the study's stored options)")
        w.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="override one of the study's backend options for this worker")
        w.add_argument("--no-progress", action="store_true")


COMMANDS = (Study, StudyShow, StudyExport, Worker)
