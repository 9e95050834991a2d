"""A third-party-style plugin (tests/plugins/torch_cpu, installed as its own distribution) through
the whole path: conformance, `profile` → `latency validate` → a one-trial study, with --threads
and --option reaching the backend everywhere, and the table the plugin ships found and refused
because it was measured on another device."""

from __future__ import annotations

import json

import pytest

from dqsearch.backends import load_backend
from dqsearch.backends.testing import BackendConformance
from dqsearch.cli import main
from dqsearch.data import sample_images_dir

pytest.importorskip("dqsearch_torchcpu", reason="the example plugin is not installed: "
                    "pip install -e tests/plugins/torch_cpu (as .ci/run does)")

FAST = ["--threads", "1", "--option", "repeats=3", "--option", "warmup=1"]


class TestTorchCpu(BackendConformance):
    # ~1 ms models: on a 2-core machine with the other core busy one profile came out +51% (table
    # 1.37 ms, model 0.91 ms). Wide enough for load, still far from a ×1000 unit error or a
    # profile_model that ignores the bits (all-8 vs all-32 differ ~2× here).
    additivity_tolerance = 0.6

    def make_backend(self):
        return load_backend("torch-cpu", threads=1, repeats=5)  # through its entry point


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("family") / "fp32.pt"
    assert main(["train", "--model", "bmshj2018-hyperprior", "--N", "16", "--M", "24", "--steps", "1",
                 "--batch-size", "1", "--crop", "64", "--lambda", "0.01", "--threads", "1", "--no-progress",
                 "--data", str(sample_images_dir()), "-o", str(out)]) == 0
    return str(out)


def test_profile_validate_study_with_options(fp32, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DQSEARCH_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "t.json"
    assert main(["profile", "--backend", "torch-cpu", "--N", "16", "--M", "24", "--input", "64x64",
                 "--bits", "8,32", "-o", str(table), "--no-progress", *FAST]) == 0
    meta = json.loads(table.read_text())["metadata"]
    assert meta["threads"] == 1 and meta["timing"] == {"repeats": 3, "warmup": 1}, "options did not arrive"
    assert meta["identity"]["engine"] == meta["engine"], "the plugin's own identity field is recorded"
    assert main(["latency", "validate", str(table), "--samples", "2", "--no-progress", *FAST]) == 0

    out = tmp_path / "study"
    capsys.readouterr()
    assert main(["study", "--checkpoint", fp32, "--backend", "torch-cpu", "--input", "64x64",
                 "--target-latency", "1s", "--trials", "1", "--steps", "1", "--batch-size", "1",
                 "--crop", "64", "--data", str(sample_images_dir()), "--val-limit", "1",
                 "--bit-sets", "4,8;6,8", "--measure", "--study-name", "tc", "-o", str(out),
                 "--no-progress", *FAST]) == 0
    std = capsys.readouterr()
    # the plugin's shipped table (same model, input) was found, and refused naming the field
    assert "dqsearch_torchcpu/tables/torch-cpu" in std.err and "cpu: table 'Example board" in std.err
    cached = list((tmp_path / "cache" / "latency_models" / "torch-cpu").glob("*.json"))
    assert len(cached) == 1 and f"profiling into {cached[0]}" in std.out
    assert json.loads(cached[0].read_text())["metadata"]["timing"] == {"repeats": 3, "warmup": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] and summary["trials"][0]["measured_ms"] is not None

    # the next study finds the cached table: same device, same options
    from dqsearch.models import load_checkpoint
    from dqsearch.workflows import find_or_profile_table

    ck = load_checkpoint(fp32)
    info = {"architecture": ck.architecture, "arch_args": ck.arch_args}
    opts = {"threads": 1, "repeats": 3, "warmup": 1}
    assert find_or_profile_table("torch-cpu", ck.model, info, (1, 3, 64, 64), opts, False) == cached[0]
    assert f"using {cached[0]} (user cache)" in capsys.readouterr().out


def test_a_table_of_other_options_is_not_used(fp32, tmp_path, monkeypatch):
    from dqsearch.backends.options import open_backend
    from dqsearch.backends.profiling import profile_table
    from dqsearch.backends.tables import cache_path, find_table
    from dqsearch.models import load_checkpoint

    monkeypatch.setenv("DQSEARCH_CACHE", str(tmp_path))
    model = load_checkpoint(fp32).model
    one = open_backend("torch-cpu", threads=1, options={"repeats": 2})
    path = cache_path(one, "tiny", (1, 3, 64, 64))
    path.parent.mkdir(parents=True)
    profile_table(one, model, "64x64", [8, 32], path, progress=False)
    assert find_table(one, model, (1, 3, 64, 64)).path == path
    two = open_backend("torch-cpu", threads=2, options={"repeats": 2})
    found = find_table(two, model, (1, 3, 64, 64))
    assert found.path is None
    assert any(p == path and "threads: table 1, this backend 2" in why for p, why in found.other_device)
