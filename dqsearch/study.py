"""`dqsearch study`: Optuna searches γ, λ, the candidate bit-set and η for the best rate-distortion
under a latency budget; `dqsearch worker` joins a study from another process or machine.

The study's whole configuration lives in the Optuna storage (a user attribute), so a worker needs
only the study name and the storage URL. Each trial fine-tunes (QAT) from the FP32 family member
nearest its λ, writes a resumable checkpoint, evaluates real bitstreams on a validation split of the
training images (Kodak stays for the final report) and sets the constraint latency/target − 1 ≤ 0.
Heartbeats mark a killed worker's trial failed; the retry callback re-queues it with the same
parameters and the retry resumes from the failed trial's checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from .atomic import write_json
from .data import CropSampler, list_images, split_files
from .evaluate import evaluate_image
from .latency import LatencyTable
from .latency_term import LatencyTerm, check_table_matches
from .models import LoadedCheckpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from .quant.wrap import QuantPolicy, wrap
from .sampler import SAMPLERS, make_sampler
from .storage_url import check_sqlite_folder, redact, scrub
from .train import RunSpec, TrainConfig, train
from .units import DEFAULT_LMBDA, QAT_BATCH_SIZE, QAT_CROP, QAT_LR, QAT_STEPS

CONFIG_ATTR = "dqsearch_config"
STORAGE_RETRIES = 8
# Heartbeats and the stale-trial retry are what make workers restartable; Optuna still tags them
# "experimental", which is not news to our users on every trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
OBJECTIVES = ("multi", "single")


class StudyError(ValueError):
    """A study that cannot be created, joined or shown; the message says why."""


@dataclass(frozen=True)
class TrialParams:
    """What the search chooses for one trial."""

    lmbda: float
    bits: tuple[int, ...]
    gamma: float
    eta: float


@dataclass
class StudyConfig:
    """Everything a worker needs to run a trial (stored in the study, JSON-serialisable)."""

    family: list[str]
    latency_table: str
    target_ms: float
    train_data: str
    trial_dir: str
    backend: str | None = None
    steps: int = QAT_STEPS
    batch_size: int = QAT_BATCH_SIZE
    crop: int = QAT_CROP
    lr: float = QAT_LR
    val_fraction: float = 0.1
    val_limit: int = 5
    calibration_images: int = 8  # whole photos for the activation ranges (0: random crops, the old recipe)
    bit_sets: list[list[int]] = field(default_factory=lambda: [[4, 6, 8], [6, 8, 10], [4, 8, 16]])
    gamma: tuple[float, float] = (1e-3, 0.5)
    eta: tuple[float, float] = (0.01, 10.0)
    latency_form: str = "hinge"
    selector: str = "global"
    objective: str = "multi"
    sampler: str = "tpe"
    startup_trials: int = 8
    lmbda: float | None = None
    measure: bool = False
    compile: bool = False
    seed: int = 0
    heartbeat_s: int = 60
    grace_s: int = 180
    max_retry: int = 2
    backend_options: dict[str, Any] = field(default_factory=dict)  # what --threads/--option gave

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise StudyError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "single" and not self.lmbda:
            raise StudyError("the single-objective mode needs a fixed --lambda")
        if not self.family:
            raise StudyError("a study needs at least one FP32 checkpoint")
        if self.sampler not in SAMPLERS:
            raise StudyError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.startup_trials < 1:
            raise StudyError(f"startup_trials must be ≥ 1, got {self.startup_trials}")
        if self.measure and not self.backend:
            raise StudyError("--measure needs --backend")
        self.gamma, self.eta = tuple(self.gamma), tuple(self.eta)
        if not (0 < self.gamma[0] <= self.gamma[1]):
            raise StudyError(f"γ range must be positive and ordered, got {self.gamma}")
        if not (0 <= self.eta[0] <= self.eta[1]):
            raise StudyError(f"η range must be non-negative and ordered, got {self.eta}")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Counts and bit-widths checked now, not after a whole trial has run."""
        from .quant.quantizer import check_bits

        for name, flag in (("steps", "steps"), ("batch_size", "batch-size"), ("val_limit", "val-limit"),
                           ("heartbeat_s", "heartbeat"), ("grace_s", "grace")):
            if getattr(self, name) < 1:
                raise StudyError(f"--{flag} must be at least 1, got {getattr(self, name)}")
        if not (self.target_ms > 0 and math.isfinite(self.target_ms)):
            raise StudyError(f"the target latency must be a positive number of ms, got {self.target_ms}")
        if self.crop < 64 or self.crop % 64:
            raise StudyError(f"crop must be a multiple of 64 (the models' total stride), got {self.crop}")
        if not 0 < self.val_fraction < 1:
            raise StudyError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if not self.bit_sets:
            raise StudyError("a study needs at least one candidate bit-set")
        for s in self.bit_sets:
            try:
                for b in s:
                    check_bits(b)
            except ValueError as e:
                raise StudyError(f"bit-set {','.join(map(str, s))}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def search_identity(self) -> dict[str, Any]:
        """What makes two configurations the same search: everything but where the files lie (a
        study committed with its repository resumes from any clone) and worker housekeeping."""
        d = json.loads(json.dumps(self.to_dict()))
        for key in ("trial_dir", "heartbeat_s", "grace_s", "max_retry"):
            d.pop(key)
        d["latency_table"] = Path(d["latency_table"]).name
        d["train_data"] = Path(d["train_data"]).name
        d["family"] = [f if f.startswith("embedded:") else Path(f).name for f in d["family"]]
        return d

    def differences(self, other: StudyConfig) -> list[str]:
        """The fields whose values make `other` another search."""
        mine, theirs = self.search_identity(), other.search_identity()
        return sorted(k for k in mine if mine[k] != theirs.get(k))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyConfig:
        """The stored configuration, type-checked (a study database may come from elsewhere)."""
        from pydantic import TypeAdapter, ValidationError

        from .schemas import describe

        if not isinstance(d, dict):
            raise StudyError(f"the stored study configuration is a {type(d).__name__}, not an object")
        names = {f.name for f in fields(cls)}
        try:
            return TypeAdapter(cls).validate_python({k: v for k, v in d.items() if k in names})
        except ValidationError as e:
            raise StudyError(describe(cls, e, "stored study configuration")) from None


# --- storage ------------------------------------------------------------------------------------
def default_storage(output: Path, name: str) -> str:
    output.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output / f'{name}.db').resolve()}"


def make_storage(url: str, heartbeat_s: int = 60, grace_s: int = 180, max_retry: int = 2) -> RDBStorage:
    """RDB storage (SQLite or PostgreSQL) with heartbeats and retry of stale trials."""
    try:
        check_sqlite_folder(url)
    except FileNotFoundError as e:
        raise StudyError(str(e)) from None
    # pool_pre_ping replaces connections a database restart has killed instead of failing on them
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s, engine_kwargs=engine,
                          failed_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    except Exception as e:  # bad URL, driver missing, server down
        first = (scrub(str(e), url).splitlines() or [""])[0][:300]
        raise StudyError(f"cannot open study storage {redact(url)}: {type(e).__name__}: {first}") from None


def _directions(config: StudyConfig) -> list[str]:
    return ["minimize", "maximize"] if config.objective == "multi" else ["minimize"]


def create_study(name: str, storage_url: str, config: StudyConfig) -> optuna.Study:
    """Create the study, or reopen it when the stored configuration is the same."""
    storage = make_storage(storage_url, config.heartbeat_s, config.grace_s, config.max_retry)
    sampler = make_sampler(config.sampler, config.seed, config.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=config.steps // 3)
    study = optuna.create_study(study_name=name, storage=storage, directions=_directions(config),
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
    elif differ := StudyConfig.from_dict(stored).differences(config):
        raise StudyError(f"study {name!r} already exists in {redact(storage_url)} with another "
                         f"configuration ({', '.join(differ)} differ): choose another --study-name or "
                         "join it with `dqsearch worker`")
    return study


def load_study(name: str, storage_url: str) -> tuple[optuna.Study, StudyConfig]:
    probe = make_storage(storage_url)
    try:
        summaries = {s.study_name for s in optuna.get_all_study_summaries(probe)}
    except Exception as e:
        raise StudyError(f"cannot read studies from {redact(storage_url)}: {type(e).__name__}") from None
    if name not in summaries:
        raise StudyError(f"no study {name!r} in {redact(storage_url)}; it has {sorted(summaries)}")
    raw = optuna.load_study(study_name=name, storage=probe).user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise StudyError(f"study {name!r} was not created by dqsearch (no configuration stored)")
    config = StudyConfig.from_dict(raw)
    storage = make_storage(storage_url, config.heartbeat_s, config.grace_s, config.max_retry)
    sampler = make_sampler(config.sampler, config.seed, config.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=config.steps // 3)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), config


# --- one trial ----------------------------------------------------------------------------------
class Objective:
    """Fine-tune, evaluate and constrain one trial."""

    def __init__(self, config: StudyConfig, progress: bool = False):
        self.config = config
        self.progress = progress
        self.table = LatencyTable.load(config.latency_table)
        train_files, val_files = split_files(list_images(config.train_data), config.val_fraction,
                                             config.seed)
        self.val_files = val_files[: config.val_limit]
        self.sampler = CropSampler(train_files, config.crop)
        self.family = sorted(((load_checkpoint(resolve_checkpoint(p)), p) for p in config.family),
                             key=lambda cp: cp[0].meta.get("lmbda") or 0)
        self.backend = None
        if config.measure:
            from .backends.options import open_backend

            self.backend = open_backend(config.backend, options=config.backend_options)

    def lambda_range(self) -> tuple[float, float]:
        lams = [ck.meta.get("lmbda") for ck, _ in self.family]
        if any(v is None for v in lams):
            raise StudyError("every family checkpoint must record its λ (train them with dqsearch)")
        return min(lams), max(lams)

    def nearest(self, lmbda: float) -> tuple[LoadedCheckpoint, str]:
        return min(self.family, key=lambda cp: abs(math.log(cp[0].meta["lmbda"] / lmbda)))

    def __call__(self, trial: optuna.Trial) -> tuple[float, float] | float:
        cfg = self.config
        if cfg.objective == "multi":
            lo, hi = self.lambda_range()
            lmbda = trial.suggest_float("lmbda", lo, hi, log=True) if hi > lo else lo
        else:
            lmbda = float(cfg.lmbda)
        bits = trial.suggest_categorical("bits", [",".join(map(str, b)) for b in cfg.bit_sets])
        gamma = trial.suggest_float("gamma", *cfg.gamma, log=True)
        eta = trial.suggest_float("eta", *cfg.eta, log=cfg.eta[0] > 0) if cfg.eta[1] > 0 else 0.0
        path = Path(cfg.trial_dir) / f"trial-{trial.number}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        previous = Path(cfg.trial_dir) / f"trial-{retried}.pt" if retried is not None else None
        if previous is not None and previous.exists() and not path.exists():
            shutil.copyfile(previous, path)  # the retry resumes where the killed worker stopped
            for suffix in (".log.jsonl",):
                if previous.with_name(previous.name + suffix).exists():
                    shutil.copyfile(previous.with_name(previous.name + suffix),
                                    path.with_name(path.name + suffix))
        on_log = self._pruning_callback(trial) if cfg.objective == "single" else None
        attrs = self.run(TrialParams(lmbda, tuple(int(b) for b in bits.split(",")), gamma, eta),
                         path, seed=cfg.seed + trial.number, number=trial.number, on_log=on_log)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_constraint("latency", attrs["constraint"])
        if cfg.objective == "multi":
            return attrs["bpp"], attrs["psnr"]
        return rd_cost(attrs["bpp"], attrs["psnr"], lmbda)

    def run(self, params: TrialParams, path: Path, seed: int, number: int = 0,
            on_log=None) -> dict[str, Any]:
        """Fine-tune one configuration into `path` (resuming it if present), evaluate it on the
        validation images, and return what a trial records (its constraint value included).
        Optuna's trials call this; so do paired ablations that fix every parameter but one."""
        cfg = self.config
        model, state, run = self._start(path, params.bits, params.lmbda, number)
        check_table_matches(self.table, model)
        term = LatencyTerm(self.table, cfg.target_ms, params.eta, cfg.latency_form)
        config = TrainConfig(lmbda=params.lmbda, steps=cfg.steps, batch_size=cfg.batch_size, crop=cfg.crop,
                             lr=cfg.lr, gamma=params.gamma, seed=seed,
                             checkpoint_every=max(25, cfg.steps // 4), compile=cfg.compile,
                             log_every=max(1, min(25, cfg.steps // 4)),
                             calibration_images=cfg.calibration_images)
        train(model, run, self.sampler, config, path, state, [term], progress=self.progress,
              on_log=on_log)
        attrs = self._evaluate(path)
        attrs.update(term.stats)  # this run's steps only (a resumed run counts from its restart)
        return attrs

    def _start(self, path: Path, candidates: tuple[int, ...], lmbda: float, number: int):
        if path.exists():
            ck = load_checkpoint(path, with_train_state=True)
            return ck.model, ck.train_state, RunSpec(ck.architecture, ck.arch_args, ck.policy, ck.meta)
        fp, spec = self.nearest(lmbda)
        fp = load_checkpoint(resolve_checkpoint(spec))  # a fresh copy: trials must not share weights
        policy = QuantPolicy.dynamic(candidates, selector=self.config.selector)
        model = wrap(fp.model, policy)
        meta = {"init_from": str(spec), "init_model_id": fp.model_id, "trial": number}
        return model, None, RunSpec(fp.architecture, fp.arch_args, policy, meta)

    def _latency(self, ck: LoadedCheckpoint, profiles: list[dict[str, int]]) -> dict[str, Any]:
        """Predicted and (with `measure`) measured latency of the profiles the model picked on the
        validation images: every distinct profile, weighted by how many images chose it. A
        simulated backend's measurement is its analytical model, i.e. the prediction itself."""
        counts = Counter(tuple(sorted(p.items())) for p in profiles)
        distinct = [(dict(p), n / len(profiles)) for p, n in counts.most_common()]
        predicted = sum(w * self.table.predict(p) for p, w in distinct)
        measured, simulated = None, False
        if self.backend is not None:
            simulated = bool(self.backend.metadata().get("simulated"))
            shape = tuple(self.table.metadata.get("input_shape", (1, 3, 512, 768)))
            measured = sum(w * self.backend.profile_model(ck.model, p, shape).median for p, w in distinct)
        return {"predicted_ms": predicted, "measured_ms": measured, "measured_is_simulated": simulated,
                "profile": distinct[0][0], "profiles": [{"profile": p, "share": w} for p, w in distinct],
                "distinct_profiles": len(distinct)}

    @staticmethod
    def _pruning_callback(trial: optuna.Trial):
        history: list[float] = []

        def report(step: int, metrics: dict[str, float]) -> None:
            history.append(metrics["loss"])
            trial.report(statistics.fmean(history[-4:]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        return report

    def _evaluate(self, path: Path) -> dict[str, Any]:
        cfg = self.config
        ck = load_checkpoint(path)
        rows = [evaluate_image(ck, f)[0] for f in self.val_files]
        latency = self._latency(ck, [r.profile for r in rows])
        latency_ms = latency["measured_ms"] if latency["measured_ms"] is not None else latency["predicted_ms"]
        return {
            "bpp": statistics.fmean(r.bpp for r in rows), "psnr": statistics.fmean(r.psnr for r in rows),
            "avg_bits": statistics.fmean(r.avg_bits for r in rows),
            "avg_bits_weighted": statistics.fmean(r.avg_bits_weighted for r in rows),
            **latency, "checkpoint": str(path), "model_id": ck.model_id,
            "constraint": latency_ms / cfg.target_ms - 1.0,
        }


def _storage_failure(error: BaseException) -> str | None:
    """The name of the database error behind `error`, or None if it is not one. A restart of the
    database can surface as SQLAlchemy's OperationalError, as Optuna's StorageInternalError, or
    (Optuna 5, a failure while it finishes a trial) as an UnboundLocalError chained to those."""
    seen: set[int] = set()
    found = None
    e: BaseException | None = error
    while e is not None and id(e) not in seen:  # the deepest database error names the cause
        seen.add(id(e))
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            found = type(e.orig).__name__ if e.orig is not None else type(e).__name__
        elif isinstance(e, optuna.exceptions.StorageInternalError) and found is None:
            found = type(e).__name__
        e = e.__cause__ or e.__context__
    return found


def run_trials(study: optuna.Study, config: StudyConfig, n_trials: int, progress: bool = False) -> int:
    """Run trials until the study holds `n_trials` finished ones (over all workers)."""
    objective = Objective(config, progress)
    done = lambda: len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))  # noqa: E731
    before = done()
    if before >= n_trials:
        return 0
    stop = optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for attempt in range(STORAGE_RETRIES + 1):
        try:
            study.optimize(objective, n_trials=None, callbacks=[stop], catch=(FloatingPointError,),
                           gc_after_trial=True)
            break
        except Exception as e:
            cause = _storage_failure(e)
            if cause is None:
                raise
            if attempt == STORAGE_RETRIES:
                raise StudyError(f"lost the study storage {STORAGE_RETRIES + 1} times; giving up: "
                                 f"{cause}") from None
            wait = min(60, 2 ** attempt)
            print(f"study storage unreachable ({cause}); retrying in {wait} s "
                  f"({attempt + 1}/{STORAGE_RETRIES}); an interrupted trial is retried after its "
                  "heartbeat goes stale", file=sys.stderr)
            time.sleep(wait)
    return done() - before


# --- results ------------------------------------------------------------------------------------
def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values()) if trial.constraints else False


def _front(trials: list[optuna.trial.FrozenTrial], config: StudyConfig) -> set[int]:
    """Numbers of the feasible trials no other feasible trial beats, on the validation images
    (multi: lower bpp and higher PSNR; single: the lowest RD cost)."""
    ok = [t for t in trials if feasible(t)]
    if config.objective == "single":
        return {min(ok, key=lambda t: t.values[0]).number} if ok else set()
    def beats(a, b):  # noqa: E306
        return (a.values[0] <= b.values[0] and a.values[1] >= b.values[1]) and a.values != b.values
    return {t.number for t in ok if not any(beats(o, t) for o in ok)}


def rd_cost(bpp: float, psnr: float, lmbda: float) -> float:
    """bpp + λ·255²·MSE, with MSE recovered from the mean PSNR (images in [0, 1])."""
    return bpp + lmbda * 255**2 * 10 ** (-psnr / 10)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (bpp ↓, PSNR ↑) points up to the reference (worst bpp, worst PSNR)."""
    area, best_psnr = 0.0, ref[1]
    for bpp, psnr in sorted(p for p in points if p[0] < ref[0] and p[1] > ref[1]):
        if psnr > best_psnr:
            area += (ref[0] - bpp) * (psnr - best_psnr)
            best_psnr = psnr
    return area


def progress(rows: list[dict[str, Any]], lmbda: float) -> list[dict[str, Any]]:
    """How the search improved with the trial count: after each finished trial (by number), the
    best feasible RD cost at λ and the hypervolume of the feasible (bpp, PSNR) front."""
    done = sorted((r for r in rows if r["bpp"] is not None), key=lambda r: r["trial"])
    if not done:
        return []
    ref = (max(r["bpp"] for r in done) * 1.05, min(r["psnr"] for r in done) - 0.1)
    out, best, pts = [], None, []
    for r in done:
        if r["feasible"]:
            cost = rd_cost(r["bpp"], r["psnr"], lmbda)
            best = cost if best is None else min(best, cost)
            pts.append((r["bpp"], r["psnr"]))
        out.append({"trial": r["trial"], "best_feasible_rd_cost": best, "hypervolume": hypervolume(pts, ref)})
    return out


def summary(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    if not trials:
        raise StudyError(f"study {study.study_name!r} has no finished trials yet")
    front = _front(trials, config)
    keys = ("bpp", "psnr", "avg_bits", "predicted_ms", "measured_ms", "measured_is_simulated",
            "distinct_profiles")
    rows = [{"trial": t.number, **t.params, **{k: t.user_attrs.get(k) for k in keys},
             "feasible": feasible(t), "front": t.number in front} for t in trials]
    params = [tuple(sorted(t.params.items())) for t in trials]
    lmbda = config.lmbda or statistics.median(r.get("lmbda") or DEFAULT_LMBDA for r in rows)
    return {"study": study.study_name, "target_ms": config.target_ms, "sampler": config.sampler,
            "startup_trials": config.startup_trials, "trials": rows,
            "repeated_parameters": len(params) - len(set(params)),
            "front": [r for r in rows if r["front"]], "progress_lambda": lmbda,
            "progress": progress(rows, lmbda)}


def export_trial(study: optuna.Study, number: int, output: str | Path) -> Path:
    """Write a trial's fine-tuned model as a plain checkpoint (no training state)."""
    matches = [t for t in study.get_trials() if t.number == number]
    if not matches:
        raise StudyError(f"study {study.study_name!r} has no trial {number}")
    t = matches[0]
    if t.state != TrialState.COMPLETE:
        raise StudyError(f"trial {number} is {t.state.name}, not COMPLETE; export a finished trial")
    ck = load_checkpoint(t.user_attrs["checkpoint"])
    meta = {**ck.meta, "study": study.study_name, "trial": number, "params": t.params,
            "predicted_ms": t.user_attrs.get("predicted_ms")}
    save_checkpoint(output, ck.model, ck.architecture, ck.arch_args, ck.policy, meta)
    return Path(output)


def timed_backend(name: str | None) -> bool:
    """Whether feasibility should be measured on `name` by default: yes on real backends; a
    simulated backend's measurement is its own prediction, so measuring adds nothing."""
    if not name:
        return False
    from .backends.registry import load_backend

    return not load_backend(name).metadata().get("simulated", False)


def torch_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def fp32_curve(config: StudyConfig, cache: Path) -> tuple[list[float], list[float]]:
    """The FP32 family on the same validation images (cached beside the study's outputs)."""
    obj_files = split_files(list_images(config.train_data), config.val_fraction, config.seed)[1]
    files = obj_files[: config.val_limit]
    key = {"family": config.family, "images": [f.name for f in files]}
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return data["bpp"], data["psnr"]
    pts = []
    for spec in config.family:
        ck = load_checkpoint(resolve_checkpoint(spec))
        rows = [evaluate_image(ck, f)[0] for f in files]
        pts.append((statistics.fmean(r.bpp for r in rows), statistics.fmean(r.psnr for r in rows)))
    pts.sort()
    out = {"key": key, "bpp": [p[0] for p in pts], "psnr": [p[1] for p in pts]}
    write_json(cache, out)
    return out["bpp"], out["psnr"]


def write_study_report(study: optuna.Study, config: StudyConfig, output: Path) -> dict[str, Any]:
    """Front table, BD-rate of the front against FP32, and the three figures."""
    from .evaluate import bd_overlap, bd_rate
    from .report import plot_pareto, plot_profiles, plot_search_progress

    res = summary(study, config)
    output.mkdir(parents=True, exist_ok=True)
    fp32 = fp32_curve(config, output / "fp32-validation.json")
    front = sorted(res["front"], key=lambda r: r["bpp"])
    res["fp32"] = {"bpp": fp32[0], "psnr": fp32[1]}
    res["bd_rate_vs_fp32"] = None
    if len(front) >= 2 and len(fp32[0]) >= 2:
        try:
            curve = ([r["bpp"] for r in front], [r["psnr"] for r in front])
            res["bd_rate_vs_fp32"] = bd_rate(fp32, curve)[0]
            res["bd_overlap_pct"] = 100 * bd_overlap(fp32, curve)
        except ValueError as e:
            res["bd_rate_note"] = str(e)
    title = f"{study.study_name}: target {config.target_ms:g} ms"
    plot_pareto(res["trials"], fp32, output / "pareto.png", title)
    plot_search_progress(res["progress"], config.startup_trials, res["progress_lambda"],
                         output / "progress.png", f"{title}, {config.sampler} sampler")
    if front:
        trials = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
        profiles = {f"trial {r['trial']}": trials[r["trial"]].user_attrs["profile"] for r in front}
        plot_profiles(profiles, output / "front-bits.png", f"{title}: per-layer bits of the front")
    write_json(output / "summary.json", res)
    return res
