import json

import pytest

from dqsearch.cli import main
from dqsearch.compare import Benchmark, BenchmarkError, run_benchmark
from dqsearch.data import sample_images_dir

TINY = ["--model", "bmshj2018-hyperprior", "--N", "16", "--M", "24", "--batch-size", "2",
        "--crop", "64", "--threads", "1", "--no-progress", "--data", str(sample_images_dir())]

STUDY = """
name = "tiny"
description = "test study"
dataset = "{samples}"
limit = 2
family = ["fam/a.pt", "fam/b.pt"]
anchor = "FP32"
output = "out"

[train]
data = "{samples}"
steps = 2
batch_size = 2
crop = 64
calibration_batches = 1

[[methods]]
name = "FP32"
kind = "fp32"

[[methods]]
name = "PTQ-8"
kind = "ptq"
quantizer = "minmax"
bits = 8

[[methods]]
name = "Q (DPA-8)"
bits = 8

[[methods]]
name = "DQ {4,8}"
candidates = [4, 8]
selector = "global"
gamma = 0.01
"""


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for name, lmbda in (("a", "0.002"), ("b", "0.05")):
        out = str(root / "fam" / f"{name}.pt")
        assert main(["train", *TINY, "--steps", "4", "--lambda", lmbda, "-o", out]) == 0
    path = root / "tiny.toml"
    path.write_text(STUDY)
    return path


def test_study_runs_every_method_and_writes_report(study_file):
    study = Benchmark.load(study_file)
    summary = run_benchmark(study, progress=False)
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"FP32", "PTQ-8", "Q (DPA-8)", "DQ {4,8}"}
    assert rows["FP32"]["bd_rate_pct"] == 0 and rows["FP32"]["avg_bits"] == 32
    for r in rows.values():  # barely trained curves may be non-monotonic: then n/a with a reason
        assert isinstance(r["bd_rate_pct"], float) and (r["bd_rate_pct"] == r["bd_rate_pct"] or r["note"])
    assert rows["PTQ-8"]["avg_bits"] == 8 and rows["PTQ-8"]["nominal_speedup"] == 4
    assert 4 < rows["DQ {4,8}"]["avg_bits"] <= 8
    assert rows["Q (DPA-8)"]["size_packed_kb"] < rows["FP32"]["size_packed_kb"]
    out = study.output
    for f in ("summary.md", "summary.csv", "summary.json", "rd.png", "bits-dq-4-8.png", "fp32.json"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "q-dpa-8.json").read_text())
    assert len(res["results"]["bpp"]) == 2  # one RD point per family member


def test_rerun_reuses_checkpoints_and_results(study_file):
    study = Benchmark.load(study_file)
    ck = study.output / "checkpoints" / "q-dpa-8" / "a.pt"
    before = ck.stat().st_mtime_ns
    run_benchmark(study, progress=False)
    assert ck.stat().st_mtime_ns == before


def test_changed_recipe_refuses_the_cached_checkpoint(study_file):
    """A method whose [train] table or policy changed must not reuse models trained the old way."""
    changed = study_file.with_name("changed.toml")
    changed.write_text(STUDY.replace("steps = 2\n", "steps = 2\nlr = 3e-4\n", 1))
    with pytest.raises(BenchmarkError, match=r"q-dpa-8/a.pt.*lr 0.0001 → 0.0003"):
        run_benchmark(Benchmark.load(changed), only=["Q (DPA-8)"], progress=False)
    dpa = 'name = "Q (DPA-8)"\nbits = 8'
    changed.write_text(STUDY.replace(dpa, dpa + '\nrounding = "ste"'))
    with pytest.raises(BenchmarkError, match=r"rounding 'dgm' → 'ste'"):
        run_benchmark(Benchmark.load(changed), only=["Q (DPA-8)"], progress=False)
    study = Benchmark.load(study_file)  # the original recipe still reuses them
    run_benchmark(study, only=["Q (DPA-8)"], progress=False)


def test_remeasure_gives_every_saved_row_a_latency_from_this_run(study_file):
    """Rows saved without (or with another machine's) timings get measured again from their
    stored profiles: the quantized rows come out faster than FP32 on a bit-serial accelerator."""
    timed = study_file.with_name("timed.toml")
    timed.write_text(STUDY + '\n[latency]\nmeasure = ["sim-bitfusion"]\ninput = "64x64"\n')
    study = Benchmark.load(timed)
    assert main(["compare", str(timed), "--remeasure"]) == 2  # only with --report-only
    assert main(["compare", str(timed), "--report-only", "--remeasure"]) == 0
    rows = {r["method"]: r for r in json.loads((study.output / "summary.json").read_text())["rows"]}
    fp32 = rows["FP32"]["measured_ms:sim-bitfusion"]
    assert fp32 > 0 and rows["FP32"]["measured_speedup:sim-bitfusion"] == 1
    assert rows["PTQ-8"]["measured_ms:sim-bitfusion"] < fp32
    assert rows["DQ {4,8}"]["measured_ms:sim-bitfusion"] <= rows["PTQ-8"]["measured_ms:sim-bitfusion"]
    saved = json.loads((study.output / "ptq-8.json").read_text())
    assert all(p["latency"]["measured_ms"]["sim-bitfusion"] > 0 for p in saved["points"])


def test_report_only_rewrites_the_table_without_running(study_file, capsys):
    study = Benchmark.load(study_file)
    (study.output / "summary.md").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in study.output.rglob("*.pt")}
    assert main(["compare", str(study_file), "--report-only"]) == 0
    assert (study.output / "summary.md").exists()
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    next(iter(study.output.glob("q-dpa-8.json"))).unlink()
    assert main(["compare", str(study_file), "--report-only"]) == 2
    assert "has no saved results" in capsys.readouterr().err


@pytest.mark.parametrize("text, msg", [
    ('name = "x"\nfamily = []\n', "missing field 'methods'"),
    ('name = "x"\nfamily = []\n[[methods]]\nname = "a"\nkind = "magic"\n', "kind"),
    ('name = "x"\nfamily = []\n[[methods]]\nname = "a"\n', "needs 'bits' or 'candidates'"),
    ('name = "x"\nfamily = []\n[[methods]]\nname = "a"\nbits = 8\nbogus = 1\n',
     "unknown field .methods.0..bogus"),
    ('name = "x"\nfamily = []\nanchor = "z"\n[[methods]]\nname = "a"\nkind = "fp32"\n', "anchor"),
    ("name = ", "not valid TOML"),
])
def test_bad_study_files(tmp_path, text, msg):
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(BenchmarkError, match=msg):
        Benchmark.load(p)
