"""`dqsearch compare FILE.toml`: run (or collect) every method of a benchmark file on a model family
and dataset, then write the comparison table and figures.

A benchmark file (`Benchmark`; the TOML files in studies/ and the CLI still call it a study file)
names the FP32 family, the evaluation images, shared QAT settings and the methods. Each method has
a kind from the `METHOD_KINDS` registry (`@method_kind`): how its table is read and where its
checkpoints come from; a new kind is one `MethodKind` subclass here.
Each method's checkpoints and per-checkpoint results are cached (under `cache`, default the output
folder; studies that share a cache share identical methods), so a rerun only does what is missing
and an interrupted QAT run resumes.
"""

from __future__ import annotations

import fcntl
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json
from .data import CropSampler, list_images, repo_data_dir, sample_images_dir
from .evaluate import evaluate_checkpoint, load_results, results_json
from .fmpq import DEFAULT_BITS as FMPQ_BITS
from .models import load_checkpoint, resolve_checkpoint, save_checkpoint
from .quant.wrap import QuantPolicy, calibrate, weight_bytes, wrap
from .report import csv_table, markdown_table, plot_bits_heatmap, plot_rd, summary_rows
from .schemas import SchemaError, benchmark_file_schema, read_text, validate
from .storage_url import sqlite_path
from .train import RunSpec, TrainConfig, calibration_inputs, train
from .units import DEFAULT_INPUT, DEFAULT_LMBDA

_POLICY_KEYS = set(QuantPolicy.__dataclass_fields__) - {"overrides"}
_TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)
# study-front: the study to read, and (optionally) how to run it when it is missing or unfinished
_FRONT_KEYS = {"study", "storage", "backend", "target_latency", "trials", "steps", "eta_range",
               "gamma_range", "bit_sets", "val_limit", "selector", "latency_form", "sampler",
               "startup_trials", "measure", "seed", "backend_options"}


class BenchmarkError(ValueError):
    """A benchmark file that cannot be run; the message names the field."""


@dataclass
class Method:
    name: str
    kind: str
    policy: QuantPolicy | None
    train: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # fmpq targets, or the study of a front

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    @property
    def handler(self) -> MethodKind:
        return METHOD_KINDS[self.kind]


@dataclass
class FileContext:
    """What a method kind may use while a benchmark file is read: the file, its folder, its raw
    table, and `where(text, default, key)` (a path inside the file's folder, checked)."""

    path: Path
    root: Path
    raw: dict[str, Any]
    where: Callable[..., Path]


class MethodKind:
    """One kind of benchmark method. `fields` are the method keys it reads besides the policy and
    training ones; `parse` turns a method table into a `Method`; `checkpoints` lists the models
    behind its RD points (by default `checkpoint` once per family member, cached and locked)."""

    name: str = ""
    fields: frozenset[str] = frozenset()
    #: method fields this kind adds to the benchmark-file schema: {name: type} (optional keys)
    schema_fields: dict[str, Any] = {}

    def parse(self, m: dict[str, Any], ctx: FileContext) -> Method:
        return Method(m["name"], self.name, None, _train_fields(m))

    def checkpoints(self, bench: Benchmark, method: Method, progress: bool) -> list[Path]:
        return [method_checkpoint(bench, method, _family_checkpoint(bench, spec), progress)
                for spec in bench.family]

    def checkpoint(self, bench: Benchmark, method: Method, base: Path, out: Path, progress: bool) -> Path:
        """Write `out`, this method's model derived from FP32 `base` (resume what is there)."""
        raise NotImplementedError

    def train_config(self, bench: Benchmark, method: Method, base: Path) -> TrainConfig | None:
        """The training configuration `checkpoint` runs with (None: this kind does not train);
        a cached checkpoint trained otherwise is refused rather than reused."""
        return None


METHOD_KINDS: dict[str, MethodKind] = {}


def method_kind(cls: type[MethodKind]) -> type[MethodKind]:
    """Class decorator: register a method kind under its `name` (like CompressAI's register_model)."""
    if cls.name in METHOD_KINDS:
        raise ValueError(f"method kind {cls.name!r} is registered twice")
    METHOD_KINDS[cls.name] = cls()
    return cls


def _train_fields(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k in _TRAIN_KEYS}


@dataclass
class Benchmark:
    name: str
    description: str
    root: Path
    dataset: Path
    train_data: Path
    family: list[str]
    anchor: str
    methods: list[Method]
    train: dict[str, Any]
    output: Path
    cache: Path
    limit: int | None = None
    bd_method: str = "pchip"
    latency_tables: list[Path] = field(default_factory=list)
    measure: list[str] = field(default_factory=list)
    measure_input: str = DEFAULT_INPUT
    backend_options: dict[str, Any] = field(default_factory=dict)  # [latency] options, --threads

    @classmethod
    def load(cls, path: str | Path) -> Benchmark:
        path = Path(path)
        try:
            raw = tomllib.loads(read_text(path, "study file"))
        except FileNotFoundError:
            raise BenchmarkError(f"study file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise BenchmarkError(f"study file {path} is not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError, SchemaError) as e:
            raise BenchmarkError(f"study file {path} cannot be read: {e}") from None
        try:
            kind_fields = tuple((n, t) for k in METHOD_KINDS.values() for n, t in k.schema_fields.items())
            validate(benchmark_file_schema(TrainConfig, QuantPolicy, tuple(METHOD_KINDS), DEFAULT_INPUT,
                                           kind_fields), raw, f"study file {path}")
        except SchemaError as e:
            raise BenchmarkError(str(e)) from None
        root = path.parent

        def where(p: str | None, default: Path, key: str = "path") -> Path:
            return default if p is None else inside(root, p, f"{path}: {key}")

        lat = raw.get("latency", {})
        bad_lat = set(lat) - {"tables", "measure", "input", "options"}
        if bad_lat:
            raise BenchmarkError(f"{path}: unknown [latency] fields {sorted(bad_lat)}")
        for key in ("name", "family", "methods"):
            if key not in raw:
                raise BenchmarkError(f"{path}: missing field '{key}'")
        train_cfg = dict(raw.get("train", {}))
        bad = set(train_cfg) - _TRAIN_KEYS - {"data"}
        if bad:
            raise BenchmarkError(f"{path}: unknown [train] fields {sorted(bad)}")
        methods = []
        for i, m in enumerate(raw["methods"]):
            if "name" not in m:
                raise BenchmarkError(f"{path}: methods[{i}] has no 'name'")
            kind = m.get("kind", "qat")
            if kind not in METHOD_KINDS:
                raise BenchmarkError(f"{path}: method {m['name']!r} has kind {kind!r}; use one of "
                                     f"{tuple(METHOD_KINDS)}")
            known = set().union(*(set(k.fields) | set(k.schema_fields) for k in METHOD_KINDS.values()))
            extra = set(m) - _POLICY_KEYS - _TRAIN_KEYS - {"name", "kind"} - known
            if extra:
                raise BenchmarkError(f"{path}: method {m['name']!r} has unknown fields {sorted(extra)}")
            methods.append(METHOD_KINDS[kind].parse(m, FileContext(path, root, raw, where)))
        names = [m.name for m in methods]
        _check_names(methods, path)
        for spec in raw["family"]:
            if not spec.startswith("embedded:"):
                inside(root, spec, f"{path}: family")
        anchor = raw.get("anchor", names[0])
        if anchor not in names:
            raise BenchmarkError(f"{path}: anchor {anchor!r} is not one of the methods {names}")
        return cls(
            name=raw["name"], description=raw.get("description", ""), root=root,
            dataset=where(raw.get("dataset"), sample_images_dir(), "dataset"),
            train_data=where(train_cfg.pop("data", None), repo_data_dir() / "train", "train.data"),
            family=list(raw["family"]), anchor=anchor, methods=methods, train=train_cfg,
            output=where(raw.get("output"), root / raw["name"], "output"),
            cache=where(raw.get("cache") or raw.get("output"), root / raw["name"], "cache"),
            limit=raw.get("limit"), bd_method=raw.get("bd_method", "pchip"),
            latency_tables=[where(t, root, "latency.tables") for t in lat.get("tables", [])],
            measure=list(lat.get("measure", [])), measure_input=lat.get("input", DEFAULT_INPUT),
            backend_options=dict(lat.get("options", {})),
        )


PLACEHOLDERS = {"{shared}": repo_data_dir, "{samples}": sample_images_dir,
                "{latency_models}": lambda: Path(__file__).resolve().parents[1] / "latency_models"}


def inside(root: Path, text: str, what: str) -> Path:
    """A path from a study file: under a placeholder folder ({shared}, {samples},
    {latency_models}) or inside the study file's folder. Absolute paths and `..` escapes are
    refused: a study file from someone else must not read or write elsewhere on this machine."""
    for key, folder in PLACEHOLDERS.items():
        if text.startswith(key):
            base = folder().resolve()
            rest = text[len(key):].lstrip("/")
            break
    else:
        base, rest = root.resolve(), text
    if Path(rest).is_absolute() or "{" in rest:
        raise BenchmarkError(f"{what}: {text!r} is an absolute path; study files take paths relative to "
                         f"their folder ({root}) or under {{shared}}, {{samples}}, {{latency_models}}")
    resolved = (base / rest).resolve()
    if not resolved.is_relative_to(base):
        raise BenchmarkError(f"{what}: {text!r} leaves {base}; study files take paths inside their "
                         "folder (or under {shared}, {samples}, {latency_models})")
    return resolved


def _check_names(methods: list[Method], path: Path) -> None:
    """Method names are table rows and, as slugs, cache folders: both must be unique."""
    seen: dict[str, str] = {}
    for m in methods:
        if not m.slug:
            raise BenchmarkError(f"{path}: method name {m.name!r} has no letters or digits; it names files")
        if m.slug in seen:
            clash = (f"method name {m.name!r} is given twice" if seen[m.slug] == m.name else
                     f"methods {seen[m.slug]!r} and {m.name!r} share the file name {m.slug!r}")
            raise BenchmarkError(f"{path}: {clash}: rename one (each method has its own results and "
                             "checkpoints)")
        seen[m.slug] = m.name


def _family_checkpoint(bench: Benchmark, spec: str) -> Path:
    p = resolve_checkpoint(spec)
    return p if p.is_absolute() or str(spec).startswith("embedded:") else (bench.root / p).resolve()


def method_checkpoint(bench: Benchmark, method: Method, base: Path, progress: bool) -> Path:
    """The checkpoint of `method` derived from FP32 `base`, written by its kind (resuming an
    interrupted run). A lock file serialises benchmarks that share a cache."""
    out = bench.cache / "checkpoints" / method.slug / f"{base.stem}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we are killed
        resumed = load_checkpoint(out, with_train_state=True) if out.exists() else None
        if resumed is not None:
            _check_cached(out, resumed, method, method.handler.train_config(bench, method, base))
            if resumed.meta.get("finished"):
                return out
        return method.handler.checkpoint(bench, method, base, out, progress)


def method_recipe(bench: Benchmark, method: Method, lmbda: float) -> TrainConfig:
    """How a training kind trains `method`: the benchmark's `[train]` table, the method's own
    training keys, and the λ of the FP32 model it starts from."""
    return TrainConfig.from_dict({**bench.train, **method.train, "lmbda": lmbda})


def _base_lmbda(base: Path) -> float:
    return load_checkpoint(base).meta.get("lmbda", DEFAULT_LMBDA)


#: TrainConfig fields that do not change the trained model (how often to save or log, where to run).
_NOT_RECIPE = frozenset({"checkpoint_every", "log_every", "device", "compile"})


def _check_cached(path: Path, cached, method: Method, wanted: TrainConfig | None) -> None:
    """Refuse a cached checkpoint (finished or to be resumed) made with another policy or training
    recipe than the method now asks: methods of one name share the cache across benchmark files,
    and a changed `[train]` table must not silently reuse models trained the old way."""
    diffs = []
    if method.policy is not None and cached.policy is not None:
        old, new = cached.policy.to_dict(), method.policy.to_dict()
        diffs += [f"{k} {old.get(k)!r} → {v!r}" for k, v in new.items() if old.get(k) != v]
    stored = (cached.train_state or {}).get("config") if cached.train_state else None
    if wanted is not None and stored:
        diffs += [f"{k} {stored[k]!r} → {v!r}" for k, v in vars(wanted).items()
                  if k not in _NOT_RECIPE and k in stored and stored[k] != v]
    if diffs:
        raise BenchmarkError(
            f"{path}: cached checkpoint of method {method.name!r} was made with another recipe "
            f"({'; '.join(diffs)}); delete it to retrain, or give the method another name or the "
            "benchmark another cache")


def method_checkpoints(bench: Benchmark, method: Method, progress: bool) -> list[Path]:
    """The checkpoints behind a method's RD points: one per family member, or a study's front."""
    return method.handler.checkpoints(bench, method, progress)


@method_kind
class FP32Method(MethodKind):
    """The FP32 family itself."""

    name = "fp32"

    def checkpoints(self, bench: Benchmark, method: Method, progress: bool) -> list[Path]:
        return [_family_checkpoint(bench, spec) for spec in bench.family]


@method_kind
class PTQMethod(MethodKind):
    """Post-training quantization: the FP32 model wrapped at `bits` (or over `candidates`) and
    calibrated, no weight updates."""

    name = "ptq"
    fields = frozenset({"candidates"})

    def parse(self, m: dict[str, Any], ctx: FileContext) -> Method:
        pol_fields = {k: v for k, v in m.items() if k in _POLICY_KEYS}
        try:
            if "candidates" in m:
                policy = QuantPolicy.dynamic(m["candidates"], **pol_fields)
            elif "bits" in pol_fields:
                policy = QuantPolicy(mode="fixed", **{**pol_fields, "bits": (pol_fields["bits"],)})
            else:
                raise BenchmarkError(f"{ctx.path}: method {m['name']!r} needs 'bits' or 'candidates'")
        except BenchmarkError:
            raise
        except ValueError as e:
            raise BenchmarkError(f"{ctx.path}: method {m['name']!r}: {e}") from None
        return Method(m["name"], self.name, policy, _train_fields(m))

    def _start(self, bench: Benchmark, method: Method, base: Path, out: Path):
        """The model (resumed from `out`, else `base` wrapped), its training state, run, config
        and crop sampler."""
        resumed = load_checkpoint(out, with_train_state=True) if out.exists() else None
        if resumed is not None:
            model, state = resumed.model, resumed.train_state
            run = RunSpec(resumed.architecture, resumed.arch_args, resumed.policy, resumed.meta)
        else:
            fp = load_checkpoint(base)
            model, state = wrap(fp.model, method.policy), None
            run = RunSpec(fp.architecture, fp.arch_args, method.policy,
                          {"init_from": str(base), "init_model_id": fp.model_id, "study": bench.name,
                           "method": method.name, "lmbda": fp.meta.get("lmbda", DEFAULT_LMBDA)})
        config = method_recipe(bench, method, run.meta["lmbda"])
        return model, state, run, config, CropSampler(list_images(bench.train_data), config.crop)

    def train_config(self, bench: Benchmark, method: Method, base: Path) -> TrainConfig:
        return method_recipe(bench, method, _base_lmbda(base))

    def checkpoint(self, bench: Benchmark, method: Method, base: Path, out: Path, progress: bool) -> Path:
        model, _, run, config, sampler = self._start(bench, method, base, out)
        gen = torch.Generator().manual_seed(config.seed)
        calibrate(model, calibration_inputs(sampler, config, gen))
        model.update(force=True)
        save_checkpoint(out, model, run.architecture, run.arch_args, run.policy,
                        {**run.meta, "finished": True, "steps": 0})
        return out


@method_kind
class QATMethod(PTQMethod):
    """Quantization-aware training from the FP32 model (the default kind)."""

    name = "qat"

    def checkpoint(self, bench: Benchmark, method: Method, base: Path, out: Path, progress: bool) -> Path:
        model, state, run, config, sampler = self._start(bench, method, base, out)
        train(model, run, sampler, config, out, train_state=state, progress=progress)
        return out


@method_kind
class FMPQMethod(MethodKind):
    """The FMPQ baseline: sensitivity-based bit allocation under a size or latency target."""

    name = "fmpq"
    fields = frozenset({"candidates", "target_size", "target_latency", "latency_table"})

    def parse(self, m: dict[str, Any], ctx: FileContext) -> Method:
        fm = {k: m[k] for k in ("target_size", "target_latency", "latency_table") if k in m}
        if "latency_table" in fm:
            fm["latency_table"] = str(ctx.where(fm["latency_table"], ctx.root, "latency_table"))
        return Method(m["name"], self.name, None, _train_fields(m),
                      {**fm, "bits": m.get("candidates", list(FMPQ_BITS))})

    def train_config(self, bench: Benchmark, method: Method, base: Path) -> TrainConfig:
        return method_recipe(bench, method, _base_lmbda(base))

    def checkpoint(self, bench: Benchmark, method: Method, base: Path, out: Path, progress: bool) -> Path:
        from .fmpq import FMPQTarget, run_fmpq
        from .latency_term import parse_latency

        fp = load_checkpoint(base)
        f = method.options
        latency = parse_latency(f["target_latency"]) if "target_latency" in f else None
        target = FMPQTarget(f.get("target_size"), latency, f.get("latency_table"))
        config = method_recipe(bench, method, fp.meta.get("lmbda", DEFAULT_LMBDA))
        sampler = CropSampler(list_images(bench.train_data), config.crop)
        run_fmpq(fp, f["bits"], target, sampler, config, out, config.calibration_batches,
                 cache=bench.cache / "fmpq-sensitivity", progress=progress)
        return out


@method_kind
class StudyFrontMethod(MethodKind):
    """The feasible Pareto front of a latency-constrained search (`dqsearch study`), run or
    resumed here when the method gives its target."""

    name = "study-front"
    fields = frozenset(_FRONT_KEYS)

    def parse(self, m: dict[str, Any], ctx: FileContext) -> Method:
        path, root, raw, where = ctx.path, ctx.root, ctx.raw, ctx.where
        if "study" not in m:
            raise BenchmarkError(f"{path}: method {m['name']!r} of kind study-front needs 'study'")
        cache = where(raw.get("cache") or raw.get("output"), root / raw["name"], "cache")
        storage = m.get("storage") or f"sqlite:///{cache / 'studies' / (m['study'] + '.db')}"
        if str(storage).startswith("sqlite:///") and not str(storage).startswith("sqlite:////"):
            storage = "sqlite:///" + str(where(str(storage)[len("sqlite:///"):], root, "storage"))
        elif m.get("storage") and str(storage).startswith("sqlite:"):
            raise BenchmarkError(f"{path}: method {m['name']!r}: storage {storage} is outside the "
                                 "study's folder; give a relative sqlite:///NAME.db")
        opts = {k: m[k] for k in _FRONT_KEYS if k in m}
        return Method(m["name"], self.name, None, {}, {**opts, "storage": storage})

    def checkpoints(self, bench: Benchmark, method: Method, progress: bool) -> list[Path]:
        from .study import load_study, write_study_report

        if "target_latency" in method.options:
            _run_front_study(bench, method, progress)
        opt, config = load_study(method.options["study"], method.options["storage"])
        # the search's own report beside the benchmark (validation front, progress and Pareto
        # figures); its summary is the front this method evaluates
        report = write_study_report(opt, config, bench.output / f"search-{opt.study_name}")
        front = sorted(report["front"], key=lambda r: r["bpp"])
        if not front:
            raise BenchmarkError(f"study {method.options['study']!r} has no feasible trial to compare yet")
        from .study import export_trial

        paths = []
        ids = {t.number: t.user_attrs.get("model_id") for t in opt.get_trials(deepcopy=False)}
        for row in front:  # named by study too: study files sharing a cache may reuse a method name
            out = bench.cache / "checkpoints" / method.slug / f"{opt.study_name}-trial-{row['trial']}.pt"
            # a study re-created under the same name numbers its trials from 0 again: re-export
            # unless the file holds this trial's model
            if not out.exists() or load_checkpoint(out).model_id != ids.get(row["trial"]):
                export_trial(opt, row["trial"], out)
            paths.append(out)
        return paths


def _run_front_study(bench: Benchmark, method: Method, progress: bool) -> None:
    """Create (or resume) the latency study behind a study-front method, up to its trial count."""
    from .latency import LatencyTable
    from .latency_term import parse_latency
    from .study import StudyConfig, create_study, run_trials, timed_backend

    o = method.options
    backend = o.get("backend")
    tables = [p for p in bench.latency_tables if LatencyTable.load(p).metadata.get("backend") == backend]
    if not tables:
        raise BenchmarkError(f"method {method.name!r}: list a {backend} table under [latency] tables")
    train = {**bench.train, **method.train}
    # what the file sets; every other field keeps StudyConfig's default (defined there only)
    given = {"steps": o.get("steps", train.get("steps")), "batch_size": train.get("batch_size"),
             "crop": train.get("crop"), "lr": train.get("lr"), "val_limit": o.get("val_limit"),
             "bit_sets": o.get("bit_sets"), "gamma": o.get("gamma_range"), "eta": o.get("eta_range"),
             "selector": o.get("selector"), "latency_form": o.get("latency_form"),
             "sampler": o.get("sampler"), "startup_trials": o.get("startup_trials"), "seed": o.get("seed")}
    cast = {"steps": int, "batch_size": int, "crop": int, "lr": float, "val_limit": int, "gamma": tuple,
            "eta": tuple, "startup_trials": int, "seed": int}
    config = StudyConfig(
        family=[str(_family_checkpoint(bench, s)) if not s.startswith("embedded:") else s
                for s in bench.family],
        latency_table=str(tables[0]), target_ms=parse_latency(o["target_latency"]),
        train_data=str(bench.train_data), trial_dir=str(bench.cache / "trials" / o["study"]),
        backend=backend, backend_options={**bench.backend_options, **o.get("backend_options", {})},
        measure=bool(o["measure"]) if "measure" in o else timed_backend(backend),
        compile=bool(train.get("compile", False)),
        **{k: cast.get(k, lambda v: v)(v) for k, v in given.items() if v is not None})
    db = sqlite_path(o["storage"])
    if db is not None and db.resolve().is_relative_to(bench.root.resolve()):
        db.parent.mkdir(parents=True, exist_ok=True)  # inside the study's folder (checked by load)
    run_trials(create_study(o["study"], o["storage"], config), config, int(o.get("trials", 8)), progress)


_backends: dict[str, Any] = {}


def latency_of_point(bench: Benchmark, ck, point: dict[str, Any]) -> dict[str, Any]:
    """Predicted latency (mean over images' profiles) per table, and measured latency (mean over
    the images' distinct profiles, weighted by frequency) per backend named in [latency] measure."""
    from collections import Counter

    from .latency import LatencyTable
    from .quant.wrap import FP32, conv_layers

    profiles = [img["profile"] or {n: FP32 for n, _ in conv_layers(ck.model)} for img in point["images"]]
    out: dict[str, Any] = {"predicted_ms": {}, "measured_ms": {}}
    for path in bench.latency_tables:
        table = LatencyTable.load(path)
        name = table.metadata.get("backend", path.stem)
        out["predicted_ms"][name] = sum(table.predict(p) for p in profiles) / len(profiles)
    if bench.measure:
        from .backends import parse_input_shape
        from .backends.options import open_backend

        # every distinct profile the images picked, weighted by how many picked it
        counts = Counter(tuple(sorted(p.items())) for p in profiles)
        for name in bench.measure:
            key = json.dumps([name, bench.backend_options], sort_keys=True, default=str)
            if key not in _backends:
                _backends[key] = open_backend(name, options=bench.backend_options)
            backend = _backends[key]
            shape = parse_input_shape(bench.measure_input)
            out["measured_ms"][name] = sum(
                n * backend.profile_model(ck.model, dict(p), shape).median for p, n in counts.items()
            ) / len(profiles)
    return out


def run_benchmark(bench: Benchmark, only: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Produce every method's checkpoints and results, then the table and figures."""
    images = list_images(bench.dataset)[: bench.limit] if bench.limit else list_images(bench.dataset)
    bench.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for method in bench.methods:
        res_path = bench.output / f"{method.slug}.json"
        if only and method.name not in only:
            if res_path.exists():
                results[method.name] = load_results(res_path)
            continue
        points = []
        for ck_path in method_checkpoints(bench, method, progress):
            ck = load_checkpoint(ck_path)
            cache = bench.cache / "points" / method.slug / f"{ck_path.stem}.json"
            key = {"model_id": ck.model_id, "images": [p.name for p in images]}
            if cache.exists() and json.loads(cache.read_text()).get("key") == key:
                point = json.loads(cache.read_text())["point"]
            else:
                point = evaluate_checkpoint(ck, images, progress=progress)
                profile = point["images"][0]["profile"] or None
                point["size"] = weight_bytes(ck.model, profile)
                write_json(cache, {"key": key, "point": point})
            point["latency"] = latency_of_point(bench, ck, point)
            points.append(point)
        results[method.name] = results_json(method.name, points,
                                            f"{bench.name}: {method.name} on {bench.dataset.name}")
        write_json(res_path, results[method.name])
    return write_report(bench, results)


def report_from_saved(bench: Benchmark, remeasure: bool = False) -> dict[str, Any]:
    """The table and figures again from each method's saved results (after a change to the
    report), without training or evaluating anything. `remeasure`: the latency columns of every
    method again, in this one run on this machine, from the bit profiles the saved results hold
    (latency depends on the architecture and the profile, not on the weights), so no row's time
    comes from another machine or another run."""
    results = {}
    base = load_checkpoint(_family_checkpoint(bench, bench.family[0])) if remeasure else None
    for method in bench.methods:
        path = bench.output / f"{method.slug}.json"
        if not path.exists():
            raise BenchmarkError(f"{method.name!r} has no saved results ({path}); run "
                             f"`dqsearch compare` on study {bench.name!r} first")
        results[method.name] = load_results(path)
        if base is not None:
            for point in results[method.name]["points"]:
                point["latency"] = latency_of_point(bench, base, point)
            write_json(path, results[method.name])
    return write_report(bench, results)


def write_report(bench: Benchmark, results: dict[str, dict]) -> dict[str, Any]:
    rows = summary_rows(results, bench.anchor, bench.bd_method)
    out = bench.output
    (out / "summary.md").write_text(
        f"# {bench.name}\n\n{bench.description}\n\nBD-rate against **{bench.anchor}** "
        f"({bench.bd_method}), {len(list_images(bench.dataset)[: bench.limit or None])} images of "
        f"`{bench.dataset.name}`; bits are means over the RD points.\n\n" + markdown_table(rows))
    (out / "summary.csv").write_text(csv_table(rows))
    write_json(out / "summary.json", {"study": bench.name, "anchor": bench.anchor, "rows": rows})
    plot_rd(results, out / "rd.png", f"{bench.name} ({bench.dataset.name})")
    for name, res in results.items():
        pts = [p for p in res["points"] if p["images"] and p["images"][0]["profile"]]
        dynamic = pts and any(p["policy"] and p["policy"]["mode"] == "dynamic" for p in pts)
        if dynamic:
            mid = pts[len(pts) // 2]
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            plot_bits_heatmap(mid, out / f"bits-{slug}.png",
                              f"{name}: bits per layer and image (λ={mid.get('lmbda')})")
    return {"rows": rows, "output": str(out)}
