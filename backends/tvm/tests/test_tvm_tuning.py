"""Meta-schedule tuning: records land in an on-disk database keyed by target, later runs and
layers of the same shape reuse them, tuned int8 kernels (VNNI on x86) stay exact."""

import json
from dataclasses import replace

import numpy as np
import tvm
from dqsearch_tvm import TvmBackend, kernels
from dqsearch_tvm.layer import layer_module, random_weight
from tvm import relax

from dqsearch.backends.testing import conv_spec

FAST = {"repeats": 3, "min_repeats": 2, "budget_seconds": 0.2, "min_repeat_ms": 2, "population": 16}


def test_database_is_reused_across_runs_and_layers(tmp_path) -> None:
    spec = conv_spec("g_a.2", 16, 12)
    first = TvmBackend(tune_trials=2, tuning_db=str(tmp_path), **FAST)
    first.profile_layer(spec, 8)
    assert first.tuner.tuned_seconds > 0
    trials = json.loads((first.tuner.dir / "trials.json").read_text())
    assert sorted(v["trials"] for v in trials.values()) == [2, 2], "quantize and conv workloads"
    assert (first.tuner.dir / "target.json").is_file()
    meta = first.metadata()
    assert meta["tuned"] and meta["tune_trials"] == 2 and meta["tuning_database"] == str(first.tuner.dir)

    second = TvmBackend(tune_trials=2, tuning_db=str(tmp_path), **FAST)  # a later run
    other = replace(spec, name="g_a.4")  # another layer of the same shape
    second.profile_layer(other, 6)
    assert second.tuner.tuned_seconds == 0, "the database already held these workloads"
    assert not second.untuned_kernels

    weight = random_weight(spec, 3)
    x = np.random.default_rng(4).standard_normal(spec.input_shape).astype(np.float32)
    built = second._compile(layer_module(spec, "int8", weight, 2.5))
    assert built.untuned == [] and len(built.tuned) == 2
    got = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    q = kernels.quantize_weights(spec, weight, "int8", 2.5)
    np.testing.assert_array_equal(got, kernels.layer_numpy(spec, x, "int8", q))


def test_untuned_is_marked(tmp_path) -> None:
    b = TvmBackend(tune_trials=0, tuning_db=str(tmp_path), **FAST)
    b.profile_layer(conv_spec("l", 8, 8), 32)
    meta = b.metadata()
    assert meta["tuned"] is False and meta["tuning_database"] is None and "untuned" in meta["build"]
    assert b.untuned_kernels and not any(tmp_path.iterdir())
