"""The hardware-aware study end to end on tiny real models and the simulated BitFusion backend."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from dqsearch.backends import load_backend
from dqsearch.backends.profiling import profile_table
from dqsearch.cli import main
from dqsearch.data import CropSampler, sample_images_dir
from dqsearch.latency import LatencyTable
from dqsearch.latency_term import LatencyTerm, check_table_matches, parse_latency
from dqsearch.models import build_model, load_checkpoint
from dqsearch.quant.wrap import QuantPolicy, wrap
from dqsearch.study import StudyConfig, StudyError, create_study, export_trial, redact, run_trials, summary
from dqsearch.train import RunSpec, TrainConfig, train

TINY = ["--model", "bmshj2018-hyperprior", "--N", "16", "--M", "24", "--batch-size", "2",
        "--crop", "64", "--threads", "1", "--no-progress", "--data", str(sample_images_dir())]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    paths = []
    for name, lmbda in (("lo", "0.003"), ("hi", "0.03")):
        out = root / f"{name}.pt"
        assert main(["train", *TINY, "--steps", "3", "--lambda", lmbda, "-o", str(out)]) == 0
        paths.append(str(out))
    return paths


@pytest.fixture(scope="module")
def table_path(family, tmp_path_factory):
    model = load_checkpoint(family[0]).model
    path = tmp_path_factory.mktemp("table") / "sim.json"
    profile_table(load_backend("sim-bitfusion"), model, "64x64", [4, 6, 8, 10, 16, 32], path, progress=False)
    return path


def test_parse_latency():
    assert parse_latency("20ms") == 20 and parse_latency("0.5s") == 500 and parse_latency("250us") == 0.25
    assert parse_latency("7") == 7
    for bad in ("fast", "-3ms", "0"):
        with pytest.raises(ValueError):
            parse_latency(bad)


def test_table_must_match_the_model(table_path):
    table = LatencyTable.load(table_path)
    check_table_matches(table, build_model("bmshj2018-hyperprior", N=16, M=24))
    with pytest.raises(ValueError, match="g_a.0"):
        check_table_matches(table, build_model("bmshj2018-hyperprior", N=32, M=24))
    with pytest.raises(ValueError, match="layers missing"):
        check_table_matches(table, build_model("cheng2020-anchor", N=16))


def _expected_after_training(family, table, eta):
    torch.manual_seed(0)
    ck = load_checkpoint(family[0])
    model = wrap(ck.model, QuantPolicy.dynamic((4, 8, 16), selector="global"))
    table_ms = table.predict({n: 8 for n in table.layer_names})
    term = LatencyTerm(table, table_ms, eta, "linear")
    cfg = TrainConfig(lmbda=0.01, steps=20, batch_size=2, crop=64, lr=1e-5, selector_lr=0.05,
                      temperature_start=1.0, temperature_end=1.0, checkpoint_every=100,
                      calibration_batches=1, gamma=0.0)
    sampler = CropSampler(list(sample_images_dir().glob("*.png")), 64)
    train(model, RunSpec(ck.architecture, ck.arch_args, model.dq_policy), sampler, cfg,
          family[0] + f".eta{eta}.pt", loss_terms=[term], progress=False)
    return term.last_expected_ms


def test_latency_term_lowers_expected_latency(family, table_path):
    table = LatencyTable.load(table_path)
    without = _expected_after_training(family, table, 0.0)
    with_term = _expected_after_training(family, table, 20.0)
    fastest = table.predict({n: (16 if n == "g_a.0" else 4) for n in table.layer_names})  # g_a.0 pinned
    assert with_term < without
    assert with_term - fastest < 0.2 * (without - fastest), "η drives the selectors to the fast bits"


def _config(family, table_path, tmp_path, **kw):
    base = dict(family=family, latency_table=str(table_path), backend="sim-bitfusion",
                target_ms=LatencyTable.load(table_path).predict(
                    {n: 8 for n in LatencyTable.load(table_path).layer_names}),
                train_data=str(sample_images_dir()), trial_dir=str(tmp_path / "trials"), steps=3,
                batch_size=2, crop=64, val_fraction=0.25, val_limit=1, bit_sets=[[4, 8], [4, 6, 8]],
                measure=True)
    return StudyConfig(**{**base, **kw})


def test_tiny_study_finds_a_feasible_trial(family, table_path, tmp_path):
    config = _config(family, table_path, tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = create_study("tiny", url, config)
    assert run_trials(study, config, 3) == 3
    res = summary(study, config)
    assert len(res["trials"]) == 3 and res["front"], "candidates ≤ 8 bits always meet an 8-bit budget"
    best = res["front"][0]
    assert best["predicted_ms"] <= config.target_ms and best["measured_ms"] is not None
    out = export_trial(study, best["trial"], tmp_path / "best.pt")
    ck = load_checkpoint(out)
    assert ck.policy.mode == "dynamic" and ck.meta["study"] == "tiny"
    with pytest.raises(StudyError, match=r"another configuration \(steps differ\)"):
        create_study("tiny", url, _config(family, table_path, tmp_path, steps=5))


def test_a_study_moved_with_its_repository_resumes(family, table_path, tmp_path):
    """The stored paths name another clone; the search is the same, so it resumes."""
    config = _config(family, table_path, tmp_path)
    moved = StudyConfig(**{**config.to_dict(), "trial_dir": "/elsewhere/trials",
                           "latency_table": f"/elsewhere/{Path(config.latency_table).name}",
                           "train_data": f"/elsewhere/{Path(config.train_data).name}"})
    assert config.differences(moved) == []
    assert config.differences(StudyConfig(**{**config.to_dict(), "latency_table": "/x/other.json"})) == [
        "latency_table"]


def test_study_cli_show_and_export(family, table_path, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["study", "--checkpoint", *family, "--latency-table", str(table_path),
            "--backend", "sim-bitfusion", "--input", "64x64", "--target-latency", "1s", "--trials", "2",
            "--steps", "2", "--batch-size", "2", "--crop", "64", "--data", str(sample_images_dir()),
            "--val-limit", "1", "--study-name", "c", "-o", str(out), "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    assert "feasible Pareto front" in capsys.readouterr().out
    for f in ("pareto.png", "summary.json", "fp32-validation.json"):
        assert (out / f).exists(), f
    assert main(["study", "show", "c", "-o", str(out)]) == 0
    t0 = str(tmp_path / "t0.pt")
    assert main(["study", "export", "c", "-o", str(out), "--trial", "0", "--out", t0]) == 0
    assert main(["study", "show", "nope", "-o", str(out)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_passwords_never_shown():
    assert redact("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


def test_compare_runs_a_study_front_with_latency_columns(family, table_path, tmp_path):
    """One command: compare creates the latency study, runs its trials, evaluates its front."""
    from dqsearch.compare import Benchmark, run_benchmark

    target = LatencyTable.load(table_path).predict({n: 8 for n in LatencyTable.load(table_path).layer_names})
    for f in (*family, table_path):  # a study file reads only inside its folder (or placeholders)
        shutil.copyfile(f, tmp_path / Path(f).name)
    toml = tmp_path / "cmp.toml"
    toml.write_text(f'''
name = "cmp"
dataset = "{{samples}}"
limit = 1
family = {[Path(f).name for f in family]!r}
anchor = "FP32"
output = "out"
[train]
data = "{{samples}}"
batch_size = 2
crop = 64
calibration_batches = 1
[latency]
tables = ["{Path(table_path).name}"]
measure = ["sim-bitfusion"]
input = "64x64"
[[methods]]
name = "FP32"
kind = "fp32"
[[methods]]
name = "DQ front"
kind = "study-front"
study = "front"
backend = "sim-bitfusion"
target_latency = "{target}ms"
trials = 2
steps = 2
val_limit = 1
bit_sets = [[4, 8]]
''')
    rows = {r["method"]: r for r in run_benchmark(Benchmark.load(toml), progress=False)["rows"]}
    fp, dq = rows["FP32"], rows["DQ front"]
    assert fp["predicted_ms:sim-bitfusion"] > dq["predicted_ms:sim-bitfusion"]
    assert dq["predicted_ms:sim-bitfusion"] <= target
    assert dq["measured_speedup:sim-bitfusion"] > 1 and fp["measured_speedup:sim-bitfusion"] == 1
    assert "measured speedup (sim-bitfusion)" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "studies" / "front.db").exists()
    search = tmp_path / "out" / "search-front"  # the search's own report beside the benchmark
    assert {"progress.png", "pareto.png", "summary.json"} <= {p.name for p in search.iterdir()}
    assert len(json.loads((search / "summary.json").read_text())["progress"]) == 2

    # A second study file sharing the cache, same method name, another study: its front must be
    # its own trials, not the first study's checkpoints of the same trial numbers.
    second = tmp_path / "cmp2.toml"
    second.write_text(toml.read_text().replace('name = "cmp"', 'name = "cmp2"')
                      .replace('output = "out"', 'output = "out2"\ncache = "out"')
                      .replace('study = "front"', 'study = "front2"'))
    run_benchmark(Benchmark.load(second), progress=False)
    exported = sorted(p.name for p in (tmp_path / "out" / "checkpoints" / "dq-front").glob("*.pt"))
    assert any(n.startswith("front-trial-") for n in exported)
    assert any(n.startswith("front2-trial-") for n in exported)
    ids = {json.loads(f.read_text())["key"]["model_id"]
           for f in (tmp_path / "out" / "points" / "dq-front").glob("front2-*.json")}
    own = {load_checkpoint(f).model_id for f in (tmp_path / "out" / "trials" / "front2").glob("trial-*.pt")}
    assert ids and ids <= own


def test_storage_password_never_printed(capsys):
    url = "postgresql://dq:hunter2@127.0.0.1:1/nodb"  # nothing listens on port 1
    assert main(["worker", "--study-name", "x", "--storage", url, "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot" in err and "hunter2" not in err and "dq:***@" in err


def test_train_cli_latency_term(family, table_path, tmp_path, capsys):
    out = str(tmp_path / "lat.pt")
    common = ["train", "--checkpoint", family[0], "--steps", "2", "--batch-size", "2", "--crop", "64",
              "--data", str(sample_images_dir()), "--threads", "1", "--no-progress", "-o", out]
    assert main([*common, "--candidates", "4,8", "--latency-table", str(table_path),
                 "--target-latency", "1ms", "--latency-weight", "1.0"]) == 0
    log = (tmp_path / "lat.pt.log.jsonl").read_text()
    assert '"latency"' in log
    assert main([*common, "--force", "--bits", "8", "--latency-table", str(table_path),
                 "--target-latency", "1ms", "--latency-weight", "1.0"]) == 2
    assert "--candidates" in capsys.readouterr().err
    assert main([*common, "--force", "--candidates", "4,8", "--target-latency", "1ms"]) == 2
    assert "needs --latency-table" in capsys.readouterr().err


def test_storage_failures_are_recognised_through_optuna_wrappers():
    """A database restart reaches run_trials in several wrappings; each one must be retried, and
    nothing else may be swallowed."""
    import optuna
    import sqlalchemy.exc

    from dqsearch.study import _storage_failure

    op = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionResetError("server closed"))
    assert _storage_failure(op) == "ConnectionResetError"
    try:  # what Optuna 5 raises when the commit after a trial fails: chained, not wrapped
        try:
            try:
                raise op
            except sqlalchemy.exc.OperationalError as e:
                raise optuna.exceptions.StorageInternalError("commit failed") from e
        except optuna.exceptions.StorageInternalError:
            raise UnboundLocalError("cannot access local variable 'updated_state'")  # noqa: B904
    except UnboundLocalError as chained:
        assert _storage_failure(chained) == "ConnectionResetError"
    assert _storage_failure(UnboundLocalError("a real bug")) is None
    assert _storage_failure(ValueError("bad input")) is None
    # a constraint violation is a bug, not a lost server
    assert _storage_failure(sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("dup"))) is None
