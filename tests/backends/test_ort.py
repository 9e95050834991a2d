"""dqsearch-ort: the QDQ graphs ONNX Runtime gets, node attribution, and provider errors."""

from __future__ import annotations

import pytest

ort_backend = pytest.importorskip("dqsearch_ort.backend")

from dqsearch_ort import context  # noqa: E402
from dqsearch_ort.session import profile_runs  # noqa: E402

from dqsearch.backends import BackendError  # noqa: E402
from dqsearch.backends.testing import tiny_model  # noqa: E402

FAST = dict(threads=1, warmup=1, repeats=3, min_seconds=0.0, context_repeats=2, context_random=2)


@pytest.fixture(scope="module")
def backend():
    return ort_backend.OrtBackend("ort-cpu", **FAST)


@pytest.fixture(scope="module")
def groups(backend):
    model = tiny_model()
    return model, {g.name: g for g in backend._model_groups(model, (64, 64))}


def optimized(backend, group, bits):
    runs = profile_runs(backend.config, group.graph(bits), group.feeds, 0, 1)
    owner = context.attribute(runs.graph, set(group.layers))
    return runs, owner


def conv_ops(runs, owner):
    return {owner[n.name][0]: n.op_type for n in runs.graph.graph.node if owner[n.name][1]}


def test_capabilities_map_bits_to_containers(backend):
    caps = backend.capabilities()
    assert caps[4] == caps[7] == "int8" and caps[10] == caps[16] == "int16" and caps[32] == "fp32"
    assert caps[8] == "int8-zp"  # learned weight zero-points: another QLinearConv program
    symmetric = ort_backend.OrtBackend("ort-cpu", int8_weights="symmetric", **FAST).capabilities()
    assert symmetric[4] == symmetric[8] == "int8"
    assert backend.latency_by_container
    meta = backend.metadata()
    assert meta["threads"] == 1 and meta["versions"]["onnxruntime"]
    assert meta["provider"] == "CPUExecutionProvider"


def test_int8_layers_get_qlinearconv_as_deployed(backend, groups):
    """The deployment's graphs: g_a/g_s int8 layers run QLinearConv (g_s's deconvolutions in
    sub-pixel form), the hyper transforms' 8-bit layers the exact QDQ around float convolutions."""
    _, g = groups
    for t in ("g_a", "g_s"):
        runs, owner = optimized(backend, g[t], dict.fromkeys(g[t].layers, 8))
        assert set(conv_ops(runs, owner).values()) == {"QLinearConv"}, t
    runs, owner = optimized(backend, g["h_s"], dict.fromkeys(g["h_s"].layers, 8))
    assert "QLinearConv" not in set(conv_ops(runs, owner).values())
    runs, owner = optimized(backend, g["g_s"], dict.fromkeys(g["g_s"].layers, 32))
    assert "ConvTranspose" in set(conv_ops(runs, owner).values())  # FP32: no sub-pixel rewrite


def test_fp32_layer_between_int8_neighbours_stays_fp32(backend, groups):
    """The WeightBiasQuantization trap: without disabling it, g_a.2 would be re-quantized."""
    _, g = groups
    bits = {"g_a.0": 8, "g_a.2": 32, "g_a.4": 8, "g_a.6": 8}
    runs, owner = optimized(backend, g["g_a"], bits)
    ops = conv_ops(runs, owner)
    assert ops["g_a.2"] != "QLinearConv" and ops["g_a.0"] == ops["g_a.4"] == "QLinearConv"


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_every_node_is_attributed_and_each_layer_has_one_conv(backend, groups, bits):
    _, g = groups
    for group in g.values():
        runs, owner = optimized(backend, group, dict.fromkeys(group.layers, bits))
        assert set(owner) == {n.name for n in runs.graph.graph.node}
        assert sorted(conv_ops(runs, owner)) == sorted(group.layers)
        assert set(runs.nodes[0]) <= set(owner)


def test_layer_edges_follow_the_graph(groups):
    _, g = groups
    assert g["g_a"].succ == {"g_a.0": ["g_a.2"], "g_a.2": ["g_a.4"], "g_a.4": ["g_a.6"], "g_a.6": [],
                             context.HEAD: ["g_a.0"]}


def test_residual_edges_of_cheng2020(backend):
    """Found on the deployment's graph of a context model (whose `context_prediction` transform is
    a single conv, built as a one-layer transform)."""
    from dqsearch.models import build_model

    model = build_model("cheng2020-anchor", N=16)
    groups = {g.name: g for g in backend._model_groups(model, (64, 64))}
    succ = groups["g_a"].succ
    # block 0's output feeds block 1's conv1 and, through block 1's identity path, block 2
    assert set(succ["g_a.0.conv2"]) == {"g_a.1.conv1", "g_a.2.conv1", "g_a.2.skip"}
    assert set(succ[context.HEAD]) == {"g_a.0.conv1", "g_a.0.skip"}
    assert set(succ["g_a.0.skip"]) == set(succ["g_a.0.conv2"])
    assert groups["context_prediction"].layers == ["context_prediction"]
    graph = groups["context_prediction"].graph({"context_prediction": 8})
    assert "context_prediction@conv" in {n.name for n in graph.graph.node}


def test_design_covers_every_container_pair_on_consecutive_layers():
    names = [f"l{i}" for i in range(5)]
    cs = ["int8", "int16", "fp32"]
    profiles = context.design(names, cs, n_random=0)
    assert len(profiles) == 9
    for i in range(4):
        pairs = {(p[names[i]], p[names[i + 1]]) for p in profiles}
        assert len(pairs) == 9


def test_missing_gpu_providers_fail_clearly():
    import onnxruntime as ort

    gpu = (("ort-cuda", "CUDAExecutionProvider"), ("ort-tensorrt", "TensorrtExecutionProvider"))
    for name, provider in gpu:
        if provider in ort.get_available_providers():
            continue
        with pytest.raises(BackendError, match=f"{provider}.*onnxruntime-gpu"):
            ort_backend.OrtBackend(name)


def test_context_table_predicts_its_own_design_runs(backend, tmp_path):
    """Fitted on the design runs, the table must reproduce the uniform runs it was built from."""
    from dqsearch.backends.profiling import profile_table

    model = tiny_model()
    table = profile_table(backend, model, (64, 64), [8, 16, 32], tmp_path / "t.json", progress=False)
    assert table.metadata["method"] == "in-context" and table.complete and table.isolated
    assert table.transitions and all(t.src in table.specs for t in table.transitions)
    for bits in (8, 32):
        profile = dict.fromkeys(table.layer_names, bits)
        assert table.predict(profile) > 0
