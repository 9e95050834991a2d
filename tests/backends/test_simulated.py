"""dqsearch-sim: the three cost models behave as their hardware does; device files are checked."""

from __future__ import annotations

import pytest

from dqsearch.backends.testing import conv_spec

sim = pytest.importorskip("dqsearch_sim")

BIG = conv_spec("big", 256, 128)  # 1.2 GMAC: compute-bound on every shipped device


def device(stem: str):
    return sim.SimulatedBackend(sim.shipped_specs()[stem])


def test_bit_serial_latency_is_proportional_to_activation_bits():
    d = device("stripes")
    t = {b: d.profile_layer(BIG, b).median for b in (2, 4, 8, 16)}
    assert t[4] / t[2] == pytest.approx(2, rel=0.01) and t[16] / t[8] == pytest.approx(2, rel=0.01)


def test_bitfusion_latency_follows_bricks():
    d = device("bitfusion")
    t = {b: d.profile_layer(BIG, b).median for b in (2, 4, 6, 8)}
    for b in (4, 6, 8):  # ⌈b/2⌉² bricks per product
        assert t[b] / t[2] == pytest.approx((b // 2) ** 2, rel=0.01)
    assert d.capabilities()[6] == "int6"


def test_roofline_npu_uses_datapaths_and_memory():
    d = device("npu")
    caps = d.capabilities()
    assert caps[6] == caps[8] == "int8" and caps[10] == "int16" and caps[32] == "fp16"
    assert d.profile_layer(BIG, 6).median == d.profile_layer(BIG, 8).median  # same datapath
    assert d.profile_layer(BIG, 4).median < d.profile_layer(BIG, 8).median < d.profile_layer(BIG, 16).median
    # a 1x1 layer on a big map moves more bytes than it computes: memory-bound, bytes at b bits
    from dqsearch.backends import LayerSpec

    shape = (1, 16, 512, 512)
    pw = LayerSpec("pw", "conv", 16, 16, (1, 1), input_shape=shape, output_shape=shape)
    t8, t16 = d.profile_layer(pw, 8).median, d.profile_layer(pw, 16).median
    assert t16 / t8 == pytest.approx(2, rel=0.05)


def test_fixed_part_counts_gdn_and_activations():
    from dqsearch.backends import trace_model
    from dqsearch.backends.testing import tiny_model

    d = device("npu")
    trace = trace_model(tiny_model(), (64, 64))
    assert d.profile_fixed(None, trace).median > 0


def test_a_user_device_file(tmp_path):
    text = (sim.shipped_specs()["npu"]).read_text().replace('name = "sim-npu"', 'name = "my-npu"')
    path = tmp_path / "my.toml"
    path.write_text(text)
    d = sim.from_spec(str(path))
    assert d.name == "my-npu" and d.metadata()["spec_file"] == "my.toml"


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.replace('kind = "roofline"', 'kind = "magic"'), "'kind'"),
    (lambda s: s.replace("bandwidth_gb_s = 34", "bandwidth_gb_s = -1"), "'bandwidth_gb_s'"),
    (lambda s: s.replace("bits = [4, 6, 8, 10, 12, 16, 32]", "bits = [4, 24]"), "'bits'"),
    (lambda s: s.replace("[memory]", "[memo]"), "[memory]"),
    (lambda s: s + "\n[[[broken", "not valid TOML"),
])
def test_bad_device_files_name_the_key(tmp_path, edit, key):
    path = tmp_path / "bad.toml"
    path.write_text(edit(sim.shipped_specs()["npu"].read_text()))
    with pytest.raises(sim.SpecError) as e:
        sim.load_spec(path)
    assert key in str(e.value) and str(path) in str(e.value)


def test_missing_spec_option_is_explained():
    from dqsearch.backends import OptionRequired

    with pytest.raises(OptionRequired, match="--spec"):
        sim.from_spec()
    with pytest.raises(sim.SpecError, match="does not exist"):
        sim.from_spec("/no/such/device.toml")
