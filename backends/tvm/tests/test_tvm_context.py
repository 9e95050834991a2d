"""In-context layer times (one layer switched at a time inside its transform)."""

import statistics

import pytest
import torch
from dqsearch_tvm import TvmBackend, context
from torch import nn

from dqsearch.backends.profiling import profile_table
from dqsearch.latency import LatencyTable

FAST = {"repeats": 3, "min_repeats": 2, "budget_seconds": 0.2, "min_repeat_ms": 2, "context_repeats": 3}
CONTAINERS = ["int8", "int16", "fp32"]


class TwoLayers(nn.Module):
    """One transform, a narrow layer then a wide one (int8 is far cheaper than fp32 for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(32, 64, 3, stride=1, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_a(x)


def _synthetic_runs(a: dict, fixed: float, interaction: float = 0.0) -> dict:
    """Paired runs of an additive transform (plus `interaction` ms per int8 layer next to int8)."""
    names = list(a)

    def total(p: dict) -> float:
        t = fixed + sum(a[n][p[n]] for n in names)
        return t + interaction * sum(p[x] == p[y] == "int8" for x, y in zip(names, names[1:], strict=False))

    runs = {}
    for b in CONTAINERS:  # every base, so any choice of bases finds its runs
        base = dict.fromkeys(names, b)
        runs[context.run_key("g", b)] = {"base": [total(base)] * 3}
        for _, n, c in context.switches(names, CONTAINERS, [b]):
            runs[context.run_key("g", b, n, c)] = {"base": [total(base)] * 3,
                                                    "delta": [total({**base, n: c}) - total(base)] * 3}
    return runs


A = {"l1": {"int8": 2.0, "int16": 3.0, "fp32": 5.0}, "l2": {"int8": 1.0, "int16": 4.0, "fp32": 9.0},
     "l3": {"int8": 7.0, "int16": 6.0, "fp32": 8.0}}


def test_fit_recovers_an_additive_transform() -> None:
    iso = {n: [v["fp32"]] for n, v in A.items()}
    fit = context.fit_transform(list(A), CONTAINERS, iso, _synthetic_runs(A, fixed=10.0), "g")
    for n, per in A.items():
        for c, v in per.items():
            assert statistics.median(fit.layers[n][c]) == pytest.approx(v)
    assert statistics.median(fit.fixed) == pytest.approx(10.0)
    assert all(g == pytest.approx(0.0, abs=1e-9) for g in fit.base_gap_ms.values())
    for check in fit.uniform_check.values():
        assert check["predicted_ms"] == pytest.approx(check["measured_ms"])


def test_fit_reports_interactions_it_cannot_represent() -> None:
    iso = {n: [v["fp32"]] for n, v in A.items()}
    fit = context.fit_transform(list(A), CONTAINERS, iso, _synthetic_runs(A, 10.0, interaction=-1.0), "g")
    # switching one layer out of an all-int8 transform breaks one int8 pair (ends) or two (middle)
    assert fit.base_gap_ms == pytest.approx({"l1": 1.0, "l2": 2.0, "l3": 1.0})
    # the estimate is the mean of the two contexts: 2 ms next to fp32, 2 − 1 ms next to int8
    assert statistics.median(fit.layers["l1"]["int8"]) == pytest.approx(1.5)


def test_context_is_on_for_tuned_kernels_only_by_default() -> None:
    assert not TvmBackend().measures_context
    assert TvmBackend(tune_trials=1).measures_context
    assert TvmBackend(context="true").measures_context
    assert not TvmBackend(tune_trials=1, context="false").measures_context
    with pytest.raises(ValueError, match="context"):
        TvmBackend(context="sometimes")


def test_in_context_table_on_a_real_transform(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = TwoLayers().eval()
    backend = TvmBackend(context=True, **FAST)
    out = tmp_path / "t.json"
    table = profile_table(backend, model, (64, 64), [8, 32], out, progress=False)
    assert table.metadata["method"] == "in-context" and table.complete
    info = table.metadata["context"]
    assert info["bases"] == ["fp32", "int8"] and info["runs"] == 2 + 2 * 2
    assert table.metadata["context"]["repeats"] == FAST["context_repeats"]
    # fp32 layers are anchored on their isolated time (scaled down together when the transform
    # runs faster than its layers alone); the all-fp32 profile is the measured transform
    ratios = [table.time(n, 32) / table.isolated[n][32].median for n in table.layer_names]
    assert ratios[0] == pytest.approx(ratios[1]) and ratios[0] <= 1.0
    assert ratios[0] == pytest.approx(1.0) or table.fixed.median == pytest.approx(0.0, abs=1e-6)
    check = info["uniform_check"]["g_a"]["fp32"]
    all_fp32 = dict.fromkeys(table.layer_names, 32)
    assert table.predict(all_fp32) == pytest.approx(check["measured_ms"], rel=1e-3)
    assert table.time("g_a.2", 8) < table.time("g_a.2", 32), "a 32→64 int8 conv in graph beats fp32"

    # resuming a complete table runs nothing again
    def no_runs(*_a, **_k):
        raise AssertionError("resume re-ran a stored in-context run")

    monkeypatch.setattr(TvmBackend, "_paired", no_runs)
    again = profile_table(TvmBackend(context=True, **FAST), model, (64, 64), [8, 32], out, resume=True,
                          progress=False)
    assert again.time("g_a.2", 8) == pytest.approx(LatencyTable.load(out).time("g_a.2", 8))


def test_a_transform_faster_than_its_layers_keeps_predictions() -> None:
    iso = {n: [v["fp32"] * 2] for n, v in A.items()}  # layers alone: twice their in-graph time
    fit = context.fit_transform(list(A), CONTAINERS, iso, _synthetic_runs(A, fixed=0.0), "g")
    assert statistics.median(fit.fixed) == pytest.approx(0.0, abs=1e-9)
    for check in fit.uniform_check.values():
        assert check["predicted_ms"] == pytest.approx(check["measured_ms"])
    assert statistics.median(fit.layers["l2"]["fp32"]) == pytest.approx(9.0)


def test_fit_from_one_base() -> None:
    iso = {n: [v["fp32"]] for n, v in A.items()}
    runs = _synthetic_runs(A, fixed=10.0)
    for chosen in (["int8"], ["fp32"], ["int16", "fp32"]):
        fit = context.fit_transform(list(A), CONTAINERS, iso, runs, "g", chosen)
        assert all(statistics.median(fit.layers[n][c]) == pytest.approx(v) for n, p in A.items()
                   for c, v in p.items()), chosen
        assert not fit.base_gap_ms or max(fit.base_gap_ms.values()) == pytest.approx(0.0, abs=1e-9)
    assert context.runs_needed(["a", "b"], CONTAINERS, ["int8"])[:2] == [("fp32", None, None),
                                                                         ("int8", None, None)]
    assert len(context.runs_needed(["a", "b"], CONTAINERS, ["int8"])) == 2 + 2 * 2
    with pytest.raises(ValueError, match="context_bases"):
        context.bases(CONTAINERS, ["int4"])


def test_context_needs_fp32(tmp_path) -> None:
    with pytest.raises(ValueError, match="include 32"):
        profile_table(TvmBackend(context=True, **FAST), TwoLayers().eval(), (32, 32), [8],
                      tmp_path / "t.json", progress=False)
