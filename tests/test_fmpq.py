import random

import pytest
import torch

from dqsearch.cli import main
from dqsearch.data import CropSampler, sample_images_dir
from dqsearch.fmpq import (
    FMPQTarget,
    Sensitivity,
    _rd_loss,
    allocate,
    search_beta,
    sensitivities,
    size_ratio,
)
from dqsearch.models import build_model, load_checkpoint, save_checkpoint
from dqsearch.quant.quantizer import fake_quantize, leaky_clamp
from dqsearch.quant.wrap import FP32, QuantPolicy, calibrate, quantized_layers, set_profile, wrap


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, sample_paths):
    torch.manual_seed(0)
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    path = tmp_path_factory.mktemp("fmpq") / "fp.pt"
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24}, meta={"lmbda": 0.01})
    gen = torch.Generator().manual_seed(0)
    batches = [CropSampler(sample_paths, 64).sample(2, gen) for _ in range(2)]
    return load_checkpoint(path), batches


def test_sensitivity_zero_at_full_precision_and_grows_as_bits_fall(tiny, tmp_path):
    ck, batches = tiny
    sens = sensitivities(ck, [2, 4, 8, 16], batches, 0.01, cache=tmp_path)
    layers = list(sens.zeta)
    assert all(sens.of(n, FP32) == 0 for n in layers)
    mean = {b: sum(sens.of(n, b) for n in layers) / len(layers) for b in (2, 4, 8, 16)}
    assert mean[2] > mean[4] > mean[8] and abs(mean[16]) < 1e-3
    again = sensitivities(ck, [2, 4, 8, 16], batches, 0.01, cache=tmp_path)  # from the cache
    assert again == sens and len(list(tmp_path.glob("*.json"))) == 1


def test_all_layers_at_fp32_reproduce_the_float_loss(tiny):
    ck, batches = tiny
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    model.load_state_dict(ck.model.state_dict())
    model.eval()
    base = _rd_loss(model, batches, 0.01)
    wrap(model, QuantPolicy.dynamic((4, 8), quantizer="minmax"))
    calibrate(model, batches)
    model.eval()
    set_profile(model, {n: FP32 for n in quantized_layers(model)}, allow_fp32=True)
    assert _rd_loss(model, batches, 0.01) == base


def _synthetic(n_layers=24, seed=0):
    rnd = random.Random(seed)
    bits = [4, 6, 8, 10, 16]
    zeta = {}
    for i in range(n_layers):
        k = rnd.uniform(0.2, 5)
        zeta[f"l{i}"] = {str(b): k * 2.0 ** (-b / 2) for b in bits}
    weights = {f"l{i}": rnd.randint(1_000, 400_000) for i in range(n_layers)}
    return Sensitivity("x", bits, 1.0, zeta), weights


@pytest.mark.parametrize("target", [0.2, 0.25, 0.3])
def test_beta_search_meets_size_target_in_few_iterations(target):
    sens, weights = _synthetic()
    res = search_beta(sens, lambda a: size_ratio(weights, a), target, 0.01)
    assert res.met and abs(res.score - target) <= 0.01
    assert res.iterations <= 20  # exhaustive search over 5^24 allocations is out of the question
    assert res.allocation == allocate(sens, res.beta)


def test_beta_search_reports_unreachable_targets():
    sens, weights = _synthetic()
    res = search_beta(sens, lambda a: size_ratio(weights, a), 0.05, 0.01)  # below 4 bits everywhere
    assert not res.met and res.score == pytest.approx(4 / 32)


def test_leaky_clip_passes_gradient_outside_the_range():
    v = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    out = leaky_clamp(v, 0.0, 1.0, 0.01)
    assert torch.equal(out.detach(), torch.tensor([0.0, 0.5, 1.0]))
    out.sum().backward()
    assert torch.allclose(v.grad, torch.tensor([0.01, 1.0, 0.01]))
    x = torch.tensor([-5.0, 0.3, 50.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.1), torch.tensor(0.0), 4, leak=0.01).sum().backward()
    assert (x.grad[[0, 2]] > 0).all(), "clipped values keep a small slope"


def test_fmpq_targets_validated():
    with pytest.raises(ValueError, match="exactly one"):
        FMPQTarget()
    with pytest.raises(ValueError, match="latency table"):
        FMPQTarget(latency_ms=10)


def test_fmpq_cli_end_to_end(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ck, _ = tiny
    out = tmp_path / "fmpq.pt"
    assert main(["fmpq", "--checkpoint", str(ck.path), "--bits", "4,8,16", "--target-size", "0.25",
                 "--steps", "2", "--batch-size", "2", "--crop", "64", "--calibration-batches", "1",
                 "--data", str(sample_images_dir()), "--threads", "1", "--no-progress", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "iterations" in text and "size ratio" in text
    q = load_checkpoint(out)
    assert q.meta["method"] == "fmpq" and q.policy.leaky_clip > 0 and q.policy.rounding == "ste"
    assert {m.candidates[0] for m in quantized_layers(q.model).values()} <= {4, 8, 16}
