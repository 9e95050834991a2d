"""ort-cpu profiles the graph it deploys (issue 16): the latency table of a model times, per bit
profile, the graphs `dqsearch export` writes, and predicts the deployed transforms."""

from __future__ import annotations

import collections
import statistics
import time

import onnx
import pytest
import torch

from .conftest import export

FAST = dict(threads=1, warmup=1, repeats=3, min_seconds=0.0, context_repeats=3, context_random=2)


def _ops(graph: onnx.ModelProto) -> collections.Counter:
    """Op types (Identity aside: the exporter adds one per duplicated constant, ORT drops them)."""
    return collections.Counter(n.op_type for n in graph.graph.node if n.op_type != "Identity")


def _inits(graph: onnx.ModelProto) -> collections.Counter:
    """Initializers by element type and rank (the quantization's containers and layouts)."""
    return collections.Counter((i.data_type, len(i.dims)) for i in graph.graph.initializer)


@pytest.mark.parametrize("arithmetic", ["int8", "exact"])
def test_profiled_graph_is_the_exported_graph(tmp_path, mixed_checkpoint, arithmetic):
    """Same profile (8 bits, a 6-bit and a 12-bit layer): the backend's graph of every transform
    has the exported graph's nodes and initializer types. The backend builds it from a PTQ copy of
    the float model (other weights, same graph)."""
    from dqsearch_ort.backend import OrtBackend

    from dqsearch.backends import float_model
    from dqsearch.models import load_checkpoint

    store = export(mixed_checkpoint, tmp_path / "e", subpixel="auto", arithmetic=arithmetic)
    ck = load_checkpoint(mixed_checkpoint)
    profile = {e["name"]: e["bits"][0] for e in store.manifest["layers"]}
    art, _ = store.profile(tuple(profile[n] for n in store.layer_names))
    backend = OrtBackend("ort-cpu", arithmetic=arithmetic, **FAST)
    plain = float_model(ck.model)  # what `dqsearch profile --model` hands the backend
    for t in ("g_a", "h_a", "h_s", "g_s"):
        deployed = onnx.load(str(art.path(f"{t}.onnx")))
        profiled = backend.deployed_graph(plain, t, profile, "64x64")
        assert _ops(profiled) == _ops(deployed), t
        assert _inits(profiled) == _inits(deployed), t
    assert art.info["decisions"]["g_s"]["subpixel"] == (arithmetic == "int8")
    assert "DepthToSpace" in _ops(onnx.load(str(art.path("g_s.onnx")))) or arithmetic == "exact"


def test_table_predicts_the_deployed_transforms(tmp_path, mixed_checkpoint):
    """A table profiled on the checkpoint's architecture predicts the exported profile's four
    transforms (the ONNX sessions the runtime runs and the integer h_s) within ±35% at 128×128
    (the conformance suite's additivity tolerance: tiny graphs, mostly per-node overhead)."""
    import numpy as np
    from dqsearch_ort.backend import OrtBackend
    from dqsearch_ort.deployment import OrtDeployment

    from dqsearch.backends import trace_model
    from dqsearch.backends.profiling import profile_table
    from dqsearch.models import load_checkpoint

    shape = (128, 128)
    store = export(mixed_checkpoint, tmp_path / "e", subpixel="auto")
    ck = load_checkpoint(mixed_checkpoint)
    profile = {e["name"]: e["bits"][0] for e in store.manifest["layers"]}
    art, _ = store.profile(tuple(profile[n] for n in store.layer_names))
    backend = OrtBackend("ort-cpu", **FAST)
    table = profile_table(backend, ck.model, shape, [6, 8, 16, 32], tmp_path / "t.json", progress=False)
    assert table.metadata["graph"]["builder"] == "deployment"
    assert table.metadata["identity"]["graph"] == table.metadata["graph"]
    predicted = table.predict(profile)

    trace = trace_model(ck.model, shape)
    rng = np.random.default_rng(0)
    hyper = art.integer_hyper()  # the default export's h_s: integers in numpy, as the table times it
    runs = [(OrtDeployment().load(art.folder, t, 1) if t != "h_s" else hyper.indexes,
             rng.standard_normal(s).astype(np.float32)) for t, s in trace.group_inputs.items()]
    with torch.no_grad():
        for _ in range(3):
            for run, x in runs:
                run(x)
        totals = []
        for _ in range(15):
            t0 = time.thread_time()
            for run, x in runs:
                run(x)
            totals.append((time.thread_time() - t0) * 1e3)
    measured = statistics.median(totals)
    print(f"tiny model at 128x128: table {predicted:.3f} ms, deployed {measured:.3f} ms")
    assert abs(predicted / measured - 1) <= 0.35, (predicted, measured)


def test_tables_from_the_old_graph_builder_are_another_device(tmp_path, monkeypatch):
    """A table whose identity lacks the graph builder (timed on the former generic QDQ graphs)
    is not used for this backend: find_table names `graph` as the difference."""
    import json

    from dqsearch_ort.backend import OrtBackend

    from dqsearch.backends.identity import differences, identity_of

    backend = OrtBackend("ort-cpu", **FAST)
    old = {k: v for k, v in backend.identity().items() if k != "graph"}
    diffs = differences(identity_of({"identity": old}), backend.identity())
    assert diffs and all(k.startswith("graph.") for k, _a, _b in diffs)
    assert ("graph.builder", None, "deployment") in diffs
    other = OrtBackend("ort-cpu", int8_weights="symmetric", **FAST)
    assert [k for k, _a, _b in differences(backend.identity(), other.identity())] == ["graph.int8_weights"]
    json.dumps(backend.metadata())  # JSON-serialisable, it goes into every table
