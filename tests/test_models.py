import urllib.error

import pytest
import torch

from dqsearch.models import (
    CheckpointError,
    build_model,
    load_checkpoint,
    pretrained_model,
    save_checkpoint,
)
from dqsearch.quant.wrap import QuantPolicy, quantized_layers, wrap


def test_save_load_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), QuantPolicy.fixed(6))
    model.update(force=True)
    path = tmp_path / "m.pt"
    mid = save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24},
                          QuantPolicy.fixed(6), {"lmbda": 0.01})
    raw = torch.load(path, weights_only=True)  # nothing but tensors and plain types
    assert raw["meta"]["model_id"] == mid
    ck = load_checkpoint(path)
    assert ck.model_id == mid and ck.policy == QuantPolicy.fixed(6)
    assert all(m.candidates == (6,) for m in quantized_layers(ck.model).values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k]), k


def test_half_precision_save_keeps_model_usable(tmp_path):
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    path = tmp_path / "h.pt"
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24}, half=True)
    ck = load_checkpoint(path)
    w, w16 = model.g_a[0].weight, ck.model.g_a[0].weight
    assert w16.dtype == torch.float32 and torch.allclose(w, w16, rtol=1e-3, atol=1e-4)
    # fp16 flushes the likelihood bound (1e-9) to zero; the loader restores the constructor's
    # constants, so a far-off latent costs ~30 bits instead of an infinite rate.
    assert ck.model.gaussian_conditional.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    assert ck.model.entropy_bottleneck.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    y = torch.full((1, 24, 2, 2), 1e4)
    _, lk = ck.model.gaussian_conditional(y, torch.full_like(y, 0.2), training=False)
    assert torch.isfinite(torch.log2(lk)).all()


def test_constants_come_from_the_architecture_even_if_the_file_zeroed_them(tmp_path):
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    model.gaussian_conditional.likelihood_lower_bound.bound.zero_()  # as older compact files held
    path = tmp_path / "z.pt"
    mid = save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24})
    ck = load_checkpoint(path)
    assert ck.model_id == mid  # ids of existing files do not change
    assert ck.model.gaussian_conditional.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)


@pytest.mark.parametrize("content, msg", [
    (b"", "cannot be read"),
    (b"garbage" * 10, "cannot be read"),
])
def test_malformed_checkpoints_are_refused(tmp_path, content, msg):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(p)


def test_foreign_and_mismatched_checkpoints(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointError, match="not a dqsearch checkpoint"):
        load_checkpoint(p)
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    save_checkpoint(p, model, "bmshj2018-hyperprior", {"N": 32, "M": 24})  # wrong arguments
    with pytest.raises(CheckpointError, match="does not fit its declared model"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unknown_model_and_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("bmshj2099")
    with pytest.raises(ValueError, match="takes"):
        build_model("cheng2020-anchor", N=16, M=8)


def test_pretrained_offline_names_the_fix(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    import compressai.zoo.image as zi
    import compressai.zoo.pretrained as zp

    monkeypatch.setattr(zi, "load_state_dict_from_url", offline, raising=False)
    monkeypatch.setattr(zp, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(RuntimeError, match="--checkpoint PATH"):
        pretrained_model("bmshj2018-hyperprior", 3)


def test_embedded_family_is_complete_and_usable():
    from dqsearch.models import embedded_checkpoint, embedded_dir, embedded_manifest

    entries = embedded_manifest()["models"]
    assert [e["quality"] for e in entries] == sorted(e["quality"] for e in entries)
    lambdas = [e["lmbda"] for e in entries]
    assert lambdas == sorted(lambdas), "quality rises with λ"
    for e in entries:
        path = embedded_checkpoint(e["quality"])
        assert path.parent == embedded_dir() and path.stat().st_size <= 3 * 2**20
        ck = load_checkpoint(path)
        assert ck.policy is None and ck.model_id == e["model_id"] and ck.meta["lmbda"] == e["lmbda"]
        assert e["commands"] and all(c.startswith("dqsearch train") for c in e["commands"])
