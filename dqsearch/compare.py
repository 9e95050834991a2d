"""`dqsearch compare STUDY.toml`: run (or collect) every method of a study file on a model family
and dataset, then write the comparison table and figures.

A study file names the FP32 family, the evaluation images, shared QAT settings and the methods.
Each method's checkpoints and per-checkpoint results are cached (under `cache`, default the output
folder; studies that share a cache share identical methods), so a rerun only does what is missing
and an interrupted QAT run resumes.
"""

from __future__ import annotations

import fcntl
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json
from .data import CropSampler, list_images, repo_data_dir, sample_images_dir
from .evaluate import evaluate_checkpoint, load_results, results_json
from .models import load_checkpoint, resolve_checkpoint, save_checkpoint
from .quant.wrap import QuantPolicy, calibrate, weight_bytes, wrap
from .report import csv_table, markdown_table, plot_bits_heatmap, plot_rd, summary_rows
from .schemas import SchemaError, read_text, study_file_schema, validate
from .storage_url import sqlite_path
from .train import RunSpec, TrainConfig, calibration_inputs, train
from .units import DEFAULT_INPUT, DEFAULT_LMBDA

METHOD_KINDS = ("fp32", "ptq", "qat", "fmpq", "study-front")
_POLICY_KEYS = set(QuantPolicy.__dataclass_fields__) - {"overrides"}
_TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)
# study-front: the study to read, and (optionally) how to run it when it is missing or unfinished
_FRONT_KEYS = {"study", "storage", "backend", "target_latency", "trials", "steps", "eta_range",
               "gamma_range", "bit_sets", "val_limit", "selector", "latency_form", "sampler",
               "startup_trials", "measure", "seed", "backend_options"}


class StudyError(ValueError):
    """A study file that cannot be run; the message names the field."""


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


@dataclass
class Study:
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
    def load(cls, path: str | Path) -> Study:
        path = Path(path)
        try:
            raw = tomllib.loads(read_text(path, "study file"))
        except FileNotFoundError:
            raise StudyError(f"study file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise StudyError(f"study file {path} is not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError, SchemaError) as e:
            raise StudyError(f"study file {path} cannot be read: {e}") from None
        try:
            validate(study_file_schema(TrainConfig, QuantPolicy, METHOD_KINDS, DEFAULT_INPUT), raw,
                     f"study file {path}")
        except SchemaError as e:
            raise StudyError(str(e)) from None
        root = path.parent

        def where(p: str | None, default: Path, key: str = "path") -> Path:
            return default if p is None else inside(root, p, f"{path}: {key}")

        lat = raw.get("latency", {})
        bad_lat = set(lat) - {"tables", "measure", "input", "options"}
        if bad_lat:
            raise StudyError(f"{path}: unknown [latency] fields {sorted(bad_lat)}")
        for key in ("name", "family", "methods"):
            if key not in raw:
                raise StudyError(f"{path}: missing field '{key}'")
        train_cfg = dict(raw.get("train", {}))
        bad = set(train_cfg) - _TRAIN_KEYS - {"data"}
        if bad:
            raise StudyError(f"{path}: unknown [train] fields {sorted(bad)}")
        methods = []
        for i, m in enumerate(raw["methods"]):
            if "name" not in m:
                raise StudyError(f"{path}: methods[{i}] has no 'name'")
            kind = m.get("kind", "qat")
            if kind not in METHOD_KINDS:
                raise StudyError(f"{path}: method {m['name']!r} has kind {kind!r}; use one of {METHOD_KINDS}")
            pol_fields = {k: v for k, v in m.items() if k in _POLICY_KEYS}
            extra = set(m) - _POLICY_KEYS - _TRAIN_KEYS - {"name", "kind", "candidates", "target_size",
                                                           "target_latency", "latency_table"} - _FRONT_KEYS
            if extra:
                raise StudyError(f"{path}: method {m['name']!r} has unknown fields {sorted(extra)}")
            policy = None
            if kind == "study-front":
                if "study" not in m:
                    raise StudyError(f"{path}: method {m['name']!r} of kind study-front needs 'study'")
                cache = where(raw.get("cache") or raw.get("output"), root / raw["name"], "cache")
                storage = m.get("storage") or f"sqlite:///{cache / 'studies' / (m['study'] + '.db')}"
                if str(storage).startswith("sqlite:///") and not str(storage).startswith("sqlite:////"):
                    storage = "sqlite:///" + str(where(str(storage)[len("sqlite:///"):], root, "storage"))
                elif m.get("storage") and str(storage).startswith("sqlite:"):
                    raise StudyError(f"{path}: method {m['name']!r}: storage {storage} is outside the "
                                     "study's folder; give a relative sqlite:///NAME.db")
                opts = {k: m[k] for k in _FRONT_KEYS if k in m}
                methods.append(Method(m["name"], kind, None, {}, {**opts, "storage": storage}))
                continue
            if kind == "fmpq":
                fm = {k: m[k] for k in ("target_size", "target_latency", "latency_table") if k in m}
                if "latency_table" in fm:
                    fm["latency_table"] = str(where(fm["latency_table"], root, "latency_table"))
                methods.append(Method(m["name"], kind, None,
                                      {k: v for k, v in m.items() if k in _TRAIN_KEYS},
                                      {**fm, "bits": m.get("candidates", [4, 6, 8, 10, 16])}))
                continue
            if kind != "fp32":
                try:
                    if "candidates" in m:
                        policy = QuantPolicy.dynamic(m["candidates"], **pol_fields)
                    elif "bits" in pol_fields:
                        policy = QuantPolicy(mode="fixed", **{**pol_fields, "bits": (pol_fields["bits"],)})
                    else:
                        raise StudyError(f"{path}: method {m['name']!r} needs 'bits' or 'candidates'")
                except StudyError:
                    raise
                except ValueError as e:
                    raise StudyError(f"{path}: method {m['name']!r}: {e}") from None
            methods.append(Method(m["name"], kind, policy, {k: v for k, v in m.items() if k in _TRAIN_KEYS}))
        names = [m.name for m in methods]
        _check_names(methods, path)
        for spec in raw["family"]:
            if not spec.startswith("embedded:"):
                inside(root, spec, f"{path}: family")
        anchor = raw.get("anchor", names[0])
        if anchor not in names:
            raise StudyError(f"{path}: anchor {anchor!r} is not one of the methods {names}")
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
        raise StudyError(f"{what}: {text!r} is an absolute path; study files take paths relative to "
                         f"their folder ({root}) or under {{shared}}, {{samples}}, {{latency_models}}")
    resolved = (base / rest).resolve()
    if not resolved.is_relative_to(base):
        raise StudyError(f"{what}: {text!r} leaves {base}; study files take paths inside their "
                         "folder (or under {shared}, {samples}, {latency_models})")
    return resolved


def _check_names(methods: list[Method], path: Path) -> None:
    """Method names are table rows and, as slugs, cache folders: both must be unique."""
    seen: dict[str, str] = {}
    for m in methods:
        if not m.slug:
            raise StudyError(f"{path}: method name {m.name!r} has no letters or digits; it names files")
        if m.slug in seen:
            clash = (f"method name {m.name!r} is given twice" if seen[m.slug] == m.name else
                     f"methods {seen[m.slug]!r} and {m.name!r} share the file name {m.slug!r}")
            raise StudyError(f"{path}: {clash}: rename one (each method has its own results and "
                             "checkpoints)")
        seen[m.slug] = m.name


def _family_checkpoint(study: Study, spec: str) -> Path:
    p = resolve_checkpoint(spec)
    return p if p.is_absolute() or str(spec).startswith("embedded:") else (study.root / p).resolve()


def method_checkpoint(study: Study, method: Method, base: Path, progress: bool) -> Path:
    """The checkpoint of `method` derived from FP32 `base`: itself, PTQ-calibrated, or QAT-trained
    (resuming an interrupted run). A lock file serialises studies that share a cache."""
    if method.kind == "fp32":
        return base
    out = study.cache / "checkpoints" / method.slug / f"{base.stem}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we are killed
        return _method_checkpoint(study, method, base, out, progress)


def _method_checkpoint(study: Study, method: Method, base: Path, out: Path, progress: bool) -> Path:
    resumed = load_checkpoint(out, with_train_state=True) if out.exists() else None
    if resumed is not None and resumed.meta.get("finished"):
        return out
    if method.kind == "fmpq":
        return _fmpq_checkpoint(study, method, base, out, progress)
    if resumed is not None:
        model, state = resumed.model, resumed.train_state
        run = RunSpec(resumed.architecture, resumed.arch_args, resumed.policy, resumed.meta)
    else:
        fp = load_checkpoint(base)
        model, state = wrap(fp.model, method.policy), None
        run = RunSpec(fp.architecture, fp.arch_args, method.policy,
                      {"init_from": str(base), "init_model_id": fp.model_id, "study": study.name,
                       "method": method.name, "lmbda": fp.meta.get("lmbda", DEFAULT_LMBDA)})
    config = TrainConfig.from_dict({**study.train, **method.train, "lmbda": run.meta["lmbda"]})
    sampler = CropSampler(list_images(study.train_data), config.crop)
    if method.kind == "ptq":  # calibration only, no weight updates
        gen = torch.Generator().manual_seed(config.seed)
        calibrate(model, calibration_inputs(sampler, config, gen))
        model.update(force=True)
        save_checkpoint(out, model, run.architecture, run.arch_args, run.policy,
                        {**run.meta, "finished": True, "steps": 0})
        return out
    train(model, run, sampler, config, out, train_state=state, progress=progress)
    return out


def _fmpq_checkpoint(study: Study, method: Method, base: Path, out: Path, progress: bool) -> Path:
    from .fmpq import FMPQTarget, run_fmpq
    from .latency_term import parse_latency

    fp = load_checkpoint(base)
    f = method.options
    latency = parse_latency(f["target_latency"]) if "target_latency" in f else None
    target = FMPQTarget(f.get("target_size"), latency, f.get("latency_table"))
    config = TrainConfig.from_dict({**study.train, **method.train,
                                     "lmbda": fp.meta.get("lmbda", DEFAULT_LMBDA)})
    sampler = CropSampler(list_images(study.train_data), config.crop)
    run_fmpq(fp, f["bits"], target, sampler, config, out, config.calibration_batches,
             cache=study.cache / "fmpq-sensitivity", progress=progress)
    return out


def method_checkpoints(study: Study, method: Method, progress: bool) -> list[Path]:
    """The checkpoints behind a method's RD points: one per family member, or a study's front."""
    if method.kind != "study-front":
        return [method_checkpoint(study, method, _family_checkpoint(study, spec), progress)
                for spec in study.family]
    from .study import load_study, summary, write_study_report

    if "target_latency" in method.options:
        _run_front_study(study, method, progress)
    opt, config = load_study(method.options["study"], method.options["storage"])
    # the search's own report beside the benchmark: validation front, progress and Pareto figures
    write_study_report(opt, config, study.output / f"search-{opt.study_name}")
    front = sorted(summary(opt, config)["front"], key=lambda r: r["bpp"])
    if not front:
        raise StudyError(f"study {method.options['study']!r} has no feasible trial to compare yet")
    from .study import export_trial

    paths = []
    ids = {t.number: t.user_attrs.get("model_id") for t in opt.get_trials(deepcopy=False)}
    for row in front:  # named by study too: study files sharing a cache may reuse a method name
        out = study.cache / "checkpoints" / method.slug / f"{opt.study_name}-trial-{row['trial']}.pt"
        # a study re-created under the same name numbers its trials from 0 again: re-export
        # unless the file holds this trial's model
        if not out.exists() or load_checkpoint(out).model_id != ids.get(row["trial"]):
            export_trial(opt, row["trial"], out)
        paths.append(out)
    return paths


def _run_front_study(study: Study, method: Method, progress: bool) -> None:
    """Create (or resume) the latency study behind a study-front method, up to its trial count."""
    from .latency import LatencyTable
    from .latency_term import parse_latency
    from .study import StudyConfig, create_study, run_trials, timed_backend

    o = method.options
    backend = o.get("backend")
    tables = [p for p in study.latency_tables if LatencyTable.load(p).metadata.get("backend") == backend]
    if not tables:
        raise StudyError(f"method {method.name!r}: list a {backend} table under [latency] tables")
    train = {**study.train, **method.train}
    # what the file sets; every other field keeps StudyConfig's default (defined there only)
    given = {"steps": o.get("steps", train.get("steps")), "batch_size": train.get("batch_size"),
             "crop": train.get("crop"), "lr": train.get("lr"), "val_limit": o.get("val_limit"),
             "bit_sets": o.get("bit_sets"), "gamma": o.get("gamma_range"), "eta": o.get("eta_range"),
             "selector": o.get("selector"), "latency_form": o.get("latency_form"),
             "sampler": o.get("sampler"), "startup_trials": o.get("startup_trials"), "seed": o.get("seed")}
    cast = {"steps": int, "batch_size": int, "crop": int, "lr": float, "val_limit": int, "gamma": tuple,
            "eta": tuple, "startup_trials": int, "seed": int}
    config = StudyConfig(
        family=[str(_family_checkpoint(study, s)) if not s.startswith("embedded:") else s
                for s in study.family],
        latency_table=str(tables[0]), target_ms=parse_latency(o["target_latency"]),
        train_data=str(study.train_data), trial_dir=str(study.cache / "trials" / o["study"]),
        backend=backend, backend_options={**study.backend_options, **o.get("backend_options", {})},
        measure=bool(o["measure"]) if "measure" in o else timed_backend(backend),
        compile=bool(train.get("compile", False)),
        **{k: cast.get(k, lambda v: v)(v) for k, v in given.items() if v is not None})
    db = sqlite_path(o["storage"])
    if db is not None and db.resolve().is_relative_to(study.root.resolve()):
        db.parent.mkdir(parents=True, exist_ok=True)  # inside the study's folder (checked by load)
    run_trials(create_study(o["study"], o["storage"], config), config, int(o.get("trials", 8)), progress)


_backends: dict[str, Any] = {}


def latency_of_point(study: Study, ck, point: dict[str, Any]) -> dict[str, Any]:
    """Predicted latency (mean over images' profiles) per table, and measured latency (mean over
    the images' distinct profiles, weighted by frequency) per backend named in [latency] measure."""
    from collections import Counter

    from .latency import LatencyTable
    from .quant.wrap import FP32, conv_layers

    profiles = [img["profile"] or {n: FP32 for n, _ in conv_layers(ck.model)} for img in point["images"]]
    out: dict[str, Any] = {"predicted_ms": {}, "measured_ms": {}}
    for path in study.latency_tables:
        table = LatencyTable.load(path)
        name = table.metadata.get("backend", path.stem)
        out["predicted_ms"][name] = sum(table.predict(p) for p in profiles) / len(profiles)
    if study.measure:
        from .backends import parse_input_shape
        from .backends.options import open_backend

        # every distinct profile the images picked, weighted by how many picked it
        counts = Counter(tuple(sorted(p.items())) for p in profiles)
        for name in study.measure:
            key = json.dumps([name, study.backend_options], sort_keys=True, default=str)
            if key not in _backends:
                _backends[key] = open_backend(name, options=study.backend_options)
            backend = _backends[key]
            shape = parse_input_shape(study.measure_input)
            out["measured_ms"][name] = sum(
                n * backend.profile_model(ck.model, dict(p), shape).median for p, n in counts.items()
            ) / len(profiles)
    return out


def run_study(study: Study, only: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Produce every method's checkpoints and results, then the table and figures."""
    images = list_images(study.dataset)[: study.limit] if study.limit else list_images(study.dataset)
    study.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for method in study.methods:
        res_path = study.output / f"{method.slug}.json"
        if only and method.name not in only:
            if res_path.exists():
                results[method.name] = load_results(res_path)
            continue
        points = []
        for ck_path in method_checkpoints(study, method, progress):
            ck = load_checkpoint(ck_path)
            cache = study.cache / "points" / method.slug / f"{ck_path.stem}.json"
            key = {"model_id": ck.model_id, "images": [p.name for p in images]}
            if cache.exists() and json.loads(cache.read_text()).get("key") == key:
                point = json.loads(cache.read_text())["point"]
            else:
                point = evaluate_checkpoint(ck, images, progress=progress)
                profile = point["images"][0]["profile"] or None
                point["size"] = weight_bytes(ck.model, profile)
                write_json(cache, {"key": key, "point": point})
            point["latency"] = latency_of_point(study, ck, point)
            points.append(point)
        results[method.name] = results_json(method.name, points,
                                            f"{study.name}: {method.name} on {study.dataset.name}")
        write_json(res_path, results[method.name])
    return write_report(study, results)


def report_from_saved(study: Study, remeasure: bool = False) -> dict[str, Any]:
    """The table and figures again from each method's saved results (after a change to the
    report), without training or evaluating anything. `remeasure`: the latency columns of every
    method again, in this one run on this machine, from the bit profiles the saved results hold
    (latency depends on the architecture and the profile, not on the weights), so no row's time
    comes from another machine or another run."""
    results = {}
    base = load_checkpoint(_family_checkpoint(study, study.family[0])) if remeasure else None
    for method in study.methods:
        path = study.output / f"{method.slug}.json"
        if not path.exists():
            raise StudyError(f"{method.name!r} has no saved results ({path}); run "
                             f"`dqsearch compare` on study {study.name!r} first")
        results[method.name] = load_results(path)
        if base is not None:
            for point in results[method.name]["points"]:
                point["latency"] = latency_of_point(study, base, point)
            write_json(path, results[method.name])
    return write_report(study, results)


def write_report(study: Study, results: dict[str, dict]) -> dict[str, Any]:
    rows = summary_rows(results, study.anchor, study.bd_method)
    out = study.output
    (out / "summary.md").write_text(
        f"# {study.name}\n\n{study.description}\n\nBD-rate against **{study.anchor}** "
        f"({study.bd_method}), {len(list_images(study.dataset)[: study.limit or None])} images of "
        f"`{study.dataset.name}`; bits are means over the RD points.\n\n" + markdown_table(rows))
    (out / "summary.csv").write_text(csv_table(rows))
    write_json(out / "summary.json", {"study": study.name, "anchor": study.anchor, "rows": rows})
    plot_rd(results, out / "rd.png", f"{study.name} ({study.dataset.name})")
    for name, res in results.items():
        pts = [p for p in res["points"] if p["images"] and p["images"][0]["profile"]]
        dynamic = pts and any(p["policy"] and p["policy"]["mode"] == "dynamic" for p in pts)
        if dynamic:
            mid = pts[len(pts) // 2]
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            plot_bits_heatmap(mid, out / f"bits-{slug}.png",
                              f"{name}: bits per layer and image (λ={mid.get('lmbda')})")
    return {"rows": rows, "output": str(out)}
