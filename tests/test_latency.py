"""LatencyTable: schema validation, predictions, the differentiable expectation, atomic writes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dqsearch.backends import LayerSpec, Measurement
from dqsearch.backends.profiling import profile_table
from dqsearch.backends.testing import TINY_INPUT, tiny_model
from dqsearch.latency import LatencyTable, LatencyTableError, Transition

sim = pytest.importorskip("dqsearch_sim")


@pytest.fixture(scope="module")
def npu():
    return sim.SimulatedBackend(sim.shipped_specs()["npu"])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def table(npu, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "npu.json"
    return profile_table(npu, model, TINY_INPUT, [4, 8, 16, 32], out, progress=False,
                         model_info={"architecture": "bmshj2018-hyperprior", "arch_args": {"N": 8, "M": 8}})


def two_layer_table(cost: float = 1.5) -> LatencyTable:
    """a → b, containers int8 (≤ 8 bits) and fp32, a transition int8 > fp32 of `cost` ms."""
    spec = dict(op="conv", in_channels=4, out_channels=4, kernel=(3, 3), input_shape=(1, 4, 8, 8),
                output_shape=(1, 4, 8, 8))
    t = LatencyTable(metadata={"backend": "test", "input_shape": [1, 3, 8, 8], "bits": [8, 32],
                               "containers": {"8": "int8", "32": "fp32"}})
    for name, (t8, t32) in {"a": (1.0, 2.0), "b": (3.0, 5.0)}.items():
        s = LayerSpec(name=name, **spec)
        t.set_layer(s, 8, Measurement.exact(t8))
        t.set_layer(s, 32, Measurement.exact(t32))
    t.fixed = Measurement.exact(0.5)
    t.transitions = [Transition("a", "b", {"int8>fp32": cost})]
    return t


def test_table_prediction_matches_the_simulated_device(table, npu, model):
    assert table.complete and table.metadata["method"] == "isolated"
    for bits in (4, 8, 16, 32):
        profile = dict.fromkeys(table.layer_names, bits)
        assert table.predict(profile) == pytest.approx(npu.profile_model(model, profile, TINY_INPUT).median)
    mixed = {n: (4, 32)[i % 2] for i, n in enumerate(table.layer_names)}
    assert table.predict(mixed) == pytest.approx(npu.profile_model(model, mixed, TINY_INPUT).median)


def test_save_load_round_trip(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    profile = dict.fromkeys(table.layer_names, 8)
    assert again.predict(profile) == table.predict(profile)
    assert again.specs == table.specs
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"], "no temporary files may remain"


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d["metadata"].pop("backend"), "metadata.backend"),
    (lambda d: d["metadata"].update(statistic="p99"), "metadata.statistic"),
    (lambda d: d["layers"]["g_a.0"]["latency"]["8"].update(median=-1), "layers.g_a.0.latency.8.median"),
    (lambda d: d["layers"]["g_a.0"]["latency"]["8"].update(n=0), "layers.g_a.0.latency.8.n"),
    (lambda d: d["layers"]["g_a.0"]["spec"].update(op="pool"), "layers.g_a.0.spec"),
    (lambda d: d["layers"]["g_a.0"]["spec"].update(name="g_a.9"), "layers.g_a.0.spec.name"),
    (lambda d: d.update(transitions=[{"from": "g_a.0", "to": "nope", "cost": {}}]), "transitions[0].to"),
    (lambda d: d.update(transitions=[{"from": "g_a.0", "to": "g_a.2", "cost": {"int8>fp16": "x"}}]),
     "transitions[0].cost"),
])
def test_schema_errors_name_the_field(table, tmp_path, edit, field):
    raw = copy.deepcopy(table.to_dict())
    edit(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(LatencyTableError) as e:
        LatencyTable.load(path)
    assert field in str(e.value) and str(path) in str(e.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="dqsearch profile"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        LatencyTable.load(tmp_path / "x.json")


def test_predict_refuses_wrong_profiles(table):
    profile = dict.fromkeys(table.layer_names, 8)
    with pytest.raises(LatencyTableError, match="missing"):
        table.predict({k: v for k, v in list(profile.items())[1:]})
    with pytest.raises(LatencyTableError, match="unknown"):
        table.predict({**profile, "nope": 8})
    with pytest.raises(LatencyTableError, match="measured bits are"):
        table.predict({**profile, table.layer_names[0]: 6})


def test_transitions_count_only_between_different_containers():
    t = two_layer_table(cost=1.5)
    assert t.predict({"a": 8, "b": 8}) == pytest.approx(0.5 + 1 + 3)
    assert t.predict({"a": 8, "b": 32}) == pytest.approx(0.5 + 1 + 5 + 1.5)
    assert t.predict({"a": 32, "b": 8}) == pytest.approx(0.5 + 2 + 3)  # no fp32>int8 cost given
    assert t.breakdown({"a": 8, "b": 32})["transitions"] == pytest.approx(1.5)


def test_expectation_equals_prediction_for_one_hot_choices(table):
    names = table.layer_names
    cands = [4, 8, 32]
    for k, b in enumerate(cands):
        probs = {n: torch.nn.functional.one_hot(torch.tensor(k), 3).float() for n in names}
        e = table.expected_latency(probs, cands)
        assert float(e) == pytest.approx(table.predict(dict.fromkeys(names, b)), rel=1e-6)


def test_expectation_is_exact_in_expectation_and_differentiable():
    t = two_layer_table(cost=1.5)
    logits = {n: torch.randn(4, 2, requires_grad=True) for n in ("a", "b")}  # batch of 4
    probs = {n: v.softmax(-1) for n, v in logits.items()}
    e = t.expected_latency(probs, [8, 32])
    assert e.shape == (4,)
    pa, pb = probs["a"].detach(), probs["b"].detach()
    manual = 0.5 + pa @ torch.tensor([1.0, 2.0]) + pb @ torch.tensor([3.0, 5.0]) + 1.5 * pa[:, 0] * pb[:, 1]
    torch.testing.assert_close(e.detach(), manual)
    # the same number by enumerating the four profiles
    for i in range(4):
        brute = sum(float(pa[i, j] * pb[i, k]) * t.predict({"a": (8, 32)[j], "b": (8, 32)[k]})
                    for j in range(2) for k in range(2))
        assert float(e[i].detach()) == pytest.approx(brute, rel=1e-6)
    e.sum().backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in logits.values())


def test_expectation_gradient_values():
    t = two_layer_table(cost=1.5)
    pa = torch.tensor([0.25, 0.75], requires_grad=True)
    pb = torch.tensor([0.6, 0.4], requires_grad=True)
    t.expected_latency({"a": pa, "b": pb}, [8, 32]).backward()
    torch.testing.assert_close(pa.grad, torch.tensor([1.0 + 1.5 * 0.4, 2.0]))
    torch.testing.assert_close(pb.grad, torch.tensor([3.0, 5.0 + 1.5 * 0.25]))


def test_expectation_with_fixed_layers_and_errors():
    t = two_layer_table()
    e = t.expected_latency({"a": torch.tensor([1.0, 0.0])}, [8, 32], fixed_bits={"b": 32})
    assert float(e) == pytest.approx(t.predict({"a": 8, "b": 32}))
    with pytest.raises(LatencyTableError, match="missing"):
        t.expected_latency({"a": torch.tensor([1.0, 0.0])}, [8, 32])
    with pytest.raises(LatencyTableError, match="2 probabilities for 3 candidates"):
        t.expected_latency({"a": torch.tensor([1.0, 0.0])}, [4, 8, 32], fixed_bits={"b": 8})


def test_expected_latency_of_a_wrapped_model(table, small_image):
    from dqsearch.quant.wrap import QuantPolicy, wrap

    model = wrap(tiny_model(), QuantPolicy.dynamic([4, 8], pin_first=32, pin_last=32))
    model.train()
    model(small_image)
    e = table.expected_latency_of(model)
    assert e.requires_grad and torch.isfinite(e).all()
    lo = table.predict({n: 4 if n not in ("g_a.0", "g_s.6") else 32 for n in table.layer_names})
    hi = table.predict({n: 8 if n not in ("g_a.0", "g_s.6") else 32 for n in table.layer_names})
    assert lo - 1e-6 <= float(e.detach().mean()) <= hi + 1e-6
    e.mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "selector" in n]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_saved_tables_are_readable_by_others(table, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = table.save(tmp_path / "shared.json")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_bits_of_a_measured_container_share_its_time():
    t = two_layer_table()
    t.metadata["capabilities"] = {"4": "int8", "6": "int8", "8": "int8", "32": "fp32"}
    with pytest.raises(LatencyTableError, match="measured bits are"):
        t.predict({"a": 6, "b": 32})  # only where the backend says a container is one program
    t.metadata["latency_by_container"] = True
    assert t.predict({"a": 6, "b": 32}) == t.predict({"a": 8, "b": 32})
    e = t.expected_latency({"a": torch.tensor([0.5, 0.5])}, [4, 32], fixed_bits={"b": 32})
    assert float(e) == pytest.approx((t.predict({"a": 8, "b": 32}) + t.predict({"a": 32, "b": 32})) / 2)


class _HalvedInGraph(sim.SimulatedBackend):
    """A context-measuring device whose layers take half their isolated time inside the graph."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.layer_calls = 0

    def profile_layer(self, spec, bits):
        self.layer_calls += 1
        return super().profile_layer(spec, bits)

    def profile_context(self, model, trace, bits, *, progress=False, store=None, save=None, isolated=None):
        from dqsearch.backends import ContextProfile

        layers = {n: {self.container(b): Measurement.exact(isolated[n][b].median / 2) for b in bits}
                  for n in isolated}
        return ContextProfile(layers, Measurement.exact(1.0), [], {"halved": True})


def test_resume_in_the_other_method_reuses_layers_timed_alone(npu, model, tmp_path):
    out = tmp_path / "t.json"
    first = profile_table(npu, model, TINY_INPUT, [8, 32], out, progress=False)
    assert first.metadata["method"] == "isolated"
    alone = {n: per[8].median for n, per in first.layers.items()}

    ctx = _HalvedInGraph(sim.shipped_specs()["npu"])
    second = profile_table(ctx, model, TINY_INPUT, [8, 32], out, resume=True, progress=False)
    assert ctx.layer_calls == 0, "the isolated table's layer times were measured again"
    assert second.metadata["method"] == "in-context" and second.metadata["context"] == {"halved": True}
    assert {n: per[8].median for n, per in second.isolated.items()} == alone
    assert all(second.time(n, 8) == pytest.approx(alone[n] / 2) for n in alone)
    assert second.fixed.median == 1.0

    third = profile_table(npu, model, TINY_INPUT, [8, 32], out, resume=True, progress=False)
    assert third.metadata["method"] == "isolated" and not third.isolated and "context" not in third.metadata
    assert {n: per[8].median for n, per in third.layers.items()} == alone
    assert third.fixed.median == pytest.approx(first.fixed.median)
