"""The search itself: no process replays another's draws, feasibility on measured latency, targets
the table already rules out, and the search-progress record."""

import json
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from dqsearch.cli import main
from dqsearch.feasibility import assess, reach
from dqsearch.latency import LatencyTable
from dqsearch.sampler import make_sampler, trial_seed
from dqsearch.study import create_study, hypervolume, load_study, progress, run_trials

from .test_study import _config, family, table_path  # noqa: F401  (fixtures)


def _toy(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("bits", ["4,6,8", "6,8,10", "4,8,16"])
    return x


def test_a_second_process_with_the_same_seed_draws_new_values():
    """Two study objects on one storage stand for two processes: with TPESampler(seed=0) in each,
    the second replays the first's start-up draws; the per-trial seed does not."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage, sampler=make_sampler("tpe", 0, 8)).optimize(_toy, 3)
    optuna.load_study(study_name="s", storage=storage, sampler=make_sampler("tpe", 0, 8)).optimize(_toy, 3)
    xs = [t.params["x"] for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert len(set(xs)) == 6

    replay = optuna.storages.InMemoryStorage()  # what the old per-process TPESampler(seed) did
    for _ in range(2):
        optuna.create_study(study_name="r", storage=replay, load_if_exists=True,
                            sampler=optuna.samplers.TPESampler(seed=0)).optimize(_toy, 3)
    xs = [t.params["x"] for t in optuna.load_study(study_name="r", storage=replay).trials]
    assert len(set(xs)) == 3, "the failure mode this sampler exists to prevent"


def test_draws_are_reproducible_from_the_seed_and_history():
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler("tpe", 7, 3))
        study.optimize(_toy, 6)  # 3 random, then TPE on the same history
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]
    other = optuna.create_study(sampler=make_sampler("tpe", 8, 3))
    other.optimize(_toy, 3)
    assert [t.params for t in other.trials] != runs[0][:3]
    assert trial_seed(0, 1) != trial_seed(0, 2) and trial_seed(0, 1) == trial_seed(0, 1)


def _worker(url: str, name: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "dqsearch.cli", "worker", "--study-name", name,
                             "--storage", url, "--trials", str(trials), "--threads", "1", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _params(url: str, name: str) -> list[tuple]:
    study, _ = load_study(name, url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return [tuple(sorted(t.params.items())) for t in done]


def test_a_study_resumed_by_another_process_draws_new_parameters(family, table_path, tmp_path):  # noqa: F811
    url, name = f"sqlite:///{tmp_path / 'r.db'}", "resumed"
    config = _config(family, table_path, tmp_path, steps=2, measure=False)
    create_study(name, url, config)
    for total in (2, 4):  # two processes one after the other, same seed
        p = _worker(url, name, total)
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    params = _params(url, name)
    assert len(params) == 4 and len(set(params)) == 4, params


def test_two_workers_at_once_never_share_parameters(family, table_path, tmp_path):  # noqa: F811
    url, name = f"sqlite:///{tmp_path / 'w.db'}", "parallel"
    create_study(name, url, _config(family, table_path, tmp_path, steps=2, measure=False))
    workers = [_worker(url, name, 4) for _ in range(2)]
    for p in workers:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    params = _params(url, name)
    assert len(params) >= 4 and len(set(params)) == len(params), params


def test_the_constraint_uses_the_measured_latency(family, table_path, tmp_path):  # noqa: F811
    """A table whose fixed part is 50 ms off predicts far from what the backend measures; with
    measuring on, feasibility follows the measurement, and every distinct profile is measured."""
    raw = json.loads(table_path.read_text())
    for k in ("median", "mean", "min", "max"):
        raw["fixed"][k] += 50.0
    raw["fixed"]["samples"] = [v + 50.0 for v in raw["fixed"]["samples"]]
    skewed = tmp_path / "skewed.json"
    skewed.write_text(json.dumps(raw))
    config = _config(family, skewed, tmp_path, steps=2, measure=True)
    study = create_study("measured", f"sqlite:///{tmp_path / 'm.db'}", config)
    run_trials(study, config, 1)
    t = study.get_trials(states=(TrialState.COMPLETE,))[0]
    measured, predicted = t.user_attrs["measured_ms"], t.user_attrs["predicted_ms"]
    assert predicted == pytest.approx(measured + 50.0, rel=1e-6)
    assert t.constraints["latency"] == pytest.approx(measured / config.target_ms - 1)
    assert t.user_attrs["measured_is_simulated"] is True
    assert sum(p["share"] for p in t.user_attrs["profiles"]) == pytest.approx(1.0)


def test_reach_and_inert_sets_on_a_table(table_path):  # noqa: F811
    table = LatencyTable.load(table_path)
    r = reach(table, [4, 8], "global")
    uniform = {n: 4 for n in table.layer_names}
    uniform[table.layer_names[0]] = 8  # the global selector pins the first layer to the widest
    assert r.fastest_ms <= table.predict(uniform) + 1e-9
    assert r.slowest_ms >= table.predict({n: 8 for n in table.layer_names}) - 1e-9
    notes = assess(table, [[4, 8]], r.slowest_ms + 1, "global", "64x64", "sim")
    assert notes and "latency term is 0" in notes[0]
    with pytest.raises(ValueError, match=r"cannot be met.*fastest profile.*--target-latency"):
        assess(table, [[4, 8]], r.fastest_ms * 0.5, "global", "64x64", "sim")


def test_an_unreachable_target_is_refused_before_training(family, table_path, tmp_path, capsys):  # noqa: F811
    argv = ["study", "--checkpoint", *family, "--latency-table", str(table_path),
            "--backend", "sim-bitfusion", "--target-latency", "0.0001ms", "--trials", "1",
            "-o", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    assert "cannot be met" in capsys.readouterr().err
    assert not (tmp_path / "o" / "trials").exists(), "nothing trained"


def test_no_backend_means_this_machines_cpu(tmp_path, capsys, monkeypatch):
    """Without --backend the study measures on this CPU; the table lookup (which would profile a
    table for this device into the user cache) is replaced by the committed ort-cpu table."""
    pytest.importorskip("dqsearch_ort")
    from pathlib import Path

    import dqsearch.workflows as workflows

    committed = Path(__file__).parents[1] / "latency_models/ort-cpu/bmshj2018-hyperprior-M96-N64-768x512.json"
    seen = {}

    def lookup(backend_name, *a, **k):
        seen["backend"] = backend_name
        return committed

    monkeypatch.setattr(workflows, "find_or_profile_table", lookup)
    assert main(["study", "--target-latency", "20ms", "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "ort-cpu" in captured.out.splitlines()[0]
    assert "cannot be met on ort-cpu" in captured.err and "fastest profile" in captured.err
    assert seen["backend"] == "ort-cpu"


def test_progress_tracks_the_best_feasible_point():
    rows = [{"trial": 0, "bpp": 0.5, "psnr": 29.0, "feasible": True, "lmbda": 0.01},
            {"trial": 1, "bpp": 0.4, "psnr": 30.0, "feasible": False, "lmbda": 0.01},
            {"trial": 2, "bpp": 0.4, "psnr": 29.5, "feasible": True, "lmbda": 0.01}]
    prog = progress(rows, 0.01)
    assert [p["trial"] for p in prog] == [0, 1, 2]
    assert prog[1]["best_feasible_rd_cost"] == prog[0]["best_feasible_rd_cost"], "infeasible ignored"
    assert prog[2]["best_feasible_rd_cost"] < prog[1]["best_feasible_rd_cost"]
    assert prog[2]["hypervolume"] > prog[0]["hypervolume"] > 0
    assert hypervolume([(0.2, 30.0)], (0.5, 29.0)) == pytest.approx(0.3)
    assert hypervolume([(0.2, 30.0), (0.3, 29.5)], (0.5, 29.0)) == pytest.approx(0.3)
