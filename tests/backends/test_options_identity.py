"""Options reach backends the same way everywhere; threads default sensibly; tables are used only
on the device they describe; the committed tables keep loading and predicting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dqsearch.backends.identity import describe, differences, identity_of
from dqsearch.backends.options import backend_options, parse_options, parse_value
from dqsearch.threads import available_cpus, torch_threads

ROOT = Path(__file__).resolve().parents[2]


def test_option_values_are_int_then_float_then_string():
    assert parse_value("8") == 8 and isinstance(parse_value("8"), int)
    assert parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("wall") == "wall" and parse_value("false") == "false" and parse_value("") == ""
    assert parse_options(["budget-seconds=5", "target=llvm -mcpu=x"]) == {"budget_seconds": 5,
                                                                          "target": "llvm -mcpu=x"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["oops"])


def test_backend_threads_default_to_one_and_option_threads_wins():
    assert backend_options()["threads"] == 1
    assert backend_options(threads=3)["threads"] == 3
    assert backend_options(threads=3, options={"threads": 1})["threads"] == 1
    assert "spec" not in backend_options(spec=None) and backend_options(spec="npu")["spec"] == "npu"
    with pytest.raises(ValueError, match="contradicts"):
        backend_options(options={"tune_trials": 4}, tune_trials=8)
    with pytest.raises(ValueError, match="at least 1"):
        backend_options(threads=0)


def test_thread_defaults_follow_the_cpus_this_process_may_use():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    import torch

    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_torch_threads_default_and_override(monkeypatch):
    import torch

    from dqsearch.threads import set_torch_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("DQSEARCH_THREADS", raising=False)
        assert set_torch_threads(None) == available_cpus() == torch.get_num_threads()
        monkeypatch.setenv("DQSEARCH_THREADS", "1")
        assert set_torch_threads(None) == 1 and set_torch_threads(2) == 2 == torch.get_num_threads()
        monkeypatch.setenv("DQSEARCH_THREADS", "many")
        with pytest.raises(ValueError, match="DQSEARCH_THREADS"):
            set_torch_threads(None)
    finally:
        torch.set_num_threads(before)


def test_cli_sets_a_passive_omp_wait_policy_before_torch():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import dqsearch.cli, os; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # a user's own choice wins
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_identity_differences_name_the_field():
    epyc = json.loads((ROOT / "latency_models/ort-cpu/bmshj2018-hyperprior-M96-N64-768x512.json").read_text())
    table = identity_of(epyc["metadata"])  # written before identities were recorded: from metadata
    assert table["cpu"] == "AMD EPYC" and table["threads"] == 1 and table["versions"]["onnxruntime"]
    xeon = {**table, "cpu": "Intel Xeon", "device": "ort-cpu on Intel Xeon",
            "versions": {**table["versions"], "onnxruntime": "1.99"}}
    diffs = differences(table, xeon)
    assert [d[0] for d in diffs] == ["cpu", "device", "versions.onnxruntime"]
    assert "cpu: table 'AMD EPYC', this backend 'Intel Xeon'" in describe(diffs)
    assert differences(table, json.loads(json.dumps(table))) == []


def test_committed_sim_table_is_found_for_the_embedded_model(monkeypatch, tmp_path):
    pytest.importorskip("dqsearch_sim")
    from dqsearch.backends.options import open_backend
    from dqsearch.backends.tables import SOURCE_TREE, find_table
    from dqsearch.models import build_model

    monkeypatch.setenv("DQSEARCH_CACHE", str(tmp_path))
    backend = open_backend("sim-bitfusion")
    found = find_table(backend, build_model("bmshj2018-hyperprior", N=64, M=96), (1, 3, 768, 512))
    assert found.path == SOURCE_TREE / "sim-bitfusion/bmshj2018-hyperprior-M96-N64-768x512.json"
    assert found.where == "project tables"


def test_a_table_from_another_cpu_is_reported_and_not_used(monkeypatch, tmp_path):
    pytest.importorskip("dqsearch_sim")
    from dqsearch.backends.options import open_backend
    from dqsearch.backends.profiling import profile_table
    from dqsearch.backends.tables import find_table
    from dqsearch.models import build_model

    monkeypatch.setenv("DQSEARCH_CACHE", str(tmp_path))
    backend = open_backend("sim-npu")
    model = build_model("bmshj2018-hyperprior", N=8, M=8)
    path = tmp_path / "latency_models" / "sim-npu" / "t.json"
    path.parent.mkdir(parents=True)
    profile_table(backend, model, "64x64", [8, 32], path, progress=False)
    assert find_table(backend, model, (1, 3, 64, 64)).path == path
    raw = json.loads(path.read_text())
    raw["metadata"]["identity"]["spec_sha256"] = "0000"
    path.write_text(json.dumps(raw))
    found = find_table(backend, model, (1, 3, 64, 64))
    assert found.path is None and "spec_sha256: table '0000'" in found.other_device[0][1]


def test_profile_refuses_bits_without_fp32_before_measuring(tmp_path, capsys):
    pytest.importorskip("dqsearch_torchcpu")
    from dqsearch.cli import main

    out = tmp_path / "t.json"
    code = main(["profile", "--backend", "torch-cpu", "--N", "8", "--M", "8", "--input", "64x64",
                 "--bits", "8", "-o", str(out), "--no-progress"])
    assert code == 2 and "include 32" in capsys.readouterr().err and not out.exists()


def test_input_sizes_must_be_multiples_of_64(capsys):
    from dqsearch.cli import main

    assert main(["profile", "--backend", "sim-npu", "--input", "250x256", "-o", "x.json"]) == 2
    assert "256x256" in capsys.readouterr().err


def test_compare_passes_options_to_measuring_backends(tmp_path):
    from dqsearch.compare import Benchmark

    text = (ROOT / "studies/hw-bitfusion.toml").read_text()
    assert "[latency]" in text
    path = tmp_path / "s.toml"
    path.write_text(text.replace("[latency]", "[latency]\noptions = {threads = 2, repeats = 3}"))
    assert Benchmark.load(path).backend_options == {"threads": 2, "repeats": 3}


def test_cli_model_names_are_the_architectures():
    from dqsearch.cli import MODEL_NAMES
    from dqsearch.models import ARCHITECTURES

    assert MODEL_NAMES == tuple(sorted(ARCHITECTURES))


def test_committed_ort_table_is_not_trusted_without_a_cpu_signature(monkeypatch, tmp_path):
    """The hypervisor calls Zen 4 and Zen 5 both "AMD EPYC": the committed table (no cpu_id) is
    named and passed over, never silently used on another CPU generation."""
    pytest.importorskip("dqsearch_ort")
    from dqsearch.backends import cpu_signature
    from dqsearch.backends.options import open_backend
    from dqsearch.backends.tables import find_table
    from dqsearch.models import build_model

    monkeypatch.setenv("DQSEARCH_CACHE", str(tmp_path))
    assert "family" in cpu_signature()
    model = build_model("bmshj2018-hyperprior", N=64, M=96)
    backend = open_backend("ort-cpu")
    found = find_table(backend, model, (1, 3, 768, 512))
    if found.path is not None:  # a committed table carrying this very CPU's signature (the Zen 5 VM's)
        assert json.loads(found.path.read_text())["metadata"]["cpu_id"] == backend.identity()["cpu_id"]
    else:
        assert any(p.name == "bmshj2018-hyperprior-M96-N64-768x512.json" and "cpu_id: table None" in why
                   for p, why in found.other_device)


def test_workers_build_the_backend_with_the_study_options(tmp_path, monkeypatch, capsys):
    """The study stores --threads/--option; a worker uses them, and its own --option overrides."""
    from dqsearch import study
    from dqsearch.cli import main
    from dqsearch.data import sample_images_dir

    config = study.StudyConfig(family=["embedded:3"], latency_table="t.json", target_ms=10,
                               train_data=str(sample_images_dir()), trial_dir=str(tmp_path),
                               backend="sim-npu", measure=True,
                               backend_options={"threads": 2, "repeats": 3})
    url = f"sqlite:///{tmp_path / 's.db'}"
    study.create_study("w", url, config)
    seen = {}

    def fake_run_trials(s, cfg, n, progress=False):
        seen.update(cfg.backend_options)
        return 0

    monkeypatch.setattr(study, "run_trials", fake_run_trials)
    assert main(["worker", "--study-name", "w", "--storage", url, "--trials", "1", "--option", "repeats=5",
                 "--no-progress"]) == 0
    assert seen == {"threads": 2, "repeats": 5}
