import json

import pytest
import torch

from dqsearch.data import CropSampler
from dqsearch.models import build_model, load_checkpoint
from dqsearch.quant.wrap import QuantPolicy, wrap
from dqsearch.train import RunSpec, TrainConfig, rate_distortion, train


def small_config(**kw):
    base = dict(lmbda=0.01, steps=4, batch_size=2, crop=64, lr=1e-3, checkpoint_every=2,
                log_every=1, calibration_batches=1)
    return TrainConfig(**{**base, **kw})


def fresh(policy=None):
    torch.manual_seed(0)
    model = build_model("bmshj2018-hyperprior", N=16, M=24)
    if policy:
        wrap(model, policy)
    return model, RunSpec("bmshj2018-hyperprior", {"N": 16, "M": 24}, policy)


def test_rate_distortion_terms():
    x = torch.rand(1, 3, 8, 8)
    out = {"x_hat": x + 0.1, "likelihoods": {"y": torch.full((1, 4, 2, 2), 0.5)}}
    rd = rate_distortion(out, x, lmbda=0.01)
    assert rd["bpp"].item() == pytest.approx(16 / 64)
    assert rd["mse"].item() == pytest.approx(0.01, rel=1e-4)
    assert rd["loss"].item() == pytest.approx(16 / 64 + 0.01 * 255**2 * 0.01, rel=1e-4)
    assert rd["psnr"].item() == pytest.approx(20.0, rel=1e-4)


def test_resume_continues_the_same_run(tmp_path, sample_paths):
    """Killed after step 2 and resumed == uninterrupted: optimizer, RNG and step all restored."""
    sampler = CropSampler(sample_paths, 64)
    policy = QuantPolicy.dynamic((4, 8))
    model, spec = fresh(policy)
    train(model, spec, sampler, small_config(), tmp_path / "straight.pt", progress=False)
    model, spec = fresh(policy)
    train(model, spec, sampler, small_config(), tmp_path / "split.pt", progress=False, pause_at=2)
    ck = load_checkpoint(tmp_path / "split.pt", with_train_state=True)
    assert ck.train_state["step"] == 2
    train(ck.model, RunSpec(ck.architecture, ck.arch_args, ck.policy), sampler, small_config(),
          tmp_path / "split.pt", train_state=ck.train_state, progress=False)
    a = load_checkpoint(tmp_path / "straight.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "split.pt").model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    log = [json.loads(line) for line in (tmp_path / "split.pt.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_training_lowers_the_loss(tmp_path, sample_paths):
    sampler = CropSampler(sample_paths, 64)
    model, spec = fresh()
    cfg = small_config(steps=30, batch_size=4, checkpoint_every=100, log_every=1, lr=2e-3)
    train(model, spec, sampler, cfg, tmp_path / "fp.pt", progress=False)
    log = [json.loads(line) for line in (tmp_path / "fp.pt.log.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.7 * first


def test_gamma_pushes_bits_down(tmp_path, sample_paths):
    """With a large γ the selectors learn to prefer the smaller bit-width."""
    sampler = CropSampler(sample_paths, 64)
    model, spec = fresh(QuantPolicy.dynamic((4, 8), selector="global"))
    cfg = small_config(steps=15, gamma=1.0, selector_lr=0.05, temperature_start=1.0,
                       temperature_end=0.5, checkpoint_every=100)
    last = train(model, spec, sampler, cfg, tmp_path / "dq.pt", progress=False)
    log = [json.loads(line) for line in (tmp_path / "dq.pt.log.jsonl").read_text().splitlines()]
    assert log[0]["avg_bits"] > 5.5 and last["avg_bits"] < 5.0


def test_config_validation():
    with pytest.raises(ValueError, match="metric"):
        TrainConfig(metric="psnr")
    with pytest.raises(ValueError, match="lmbda"):
        TrainConfig(lmbda=0)


def test_calibration_does_not_depend_on_batch_size(sample_paths):
    """Activation ranges come from whole photos, so batch 2 and batch 8 calibrate identically."""
    from dqsearch.quant.wrap import calibrate, quantized_layers
    from dqsearch.train import calibration_inputs

    sampler = CropSampler(sample_paths, 64)
    ranges = []
    for batch in (2, 8):
        model, _ = fresh(QuantPolicy.fixed(8))
        cfg = small_config(batch_size=batch, calibration_images=4)
        calibrate(model, calibration_inputs(sampler, cfg, torch.Generator().manual_seed(batch)))
        ranges.append({n: (m.input_quantizer.range_low.clone(), m.input_quantizer.range_high.clone())
                       for n, m in quantized_layers(model).items()})
    for name, (lo, hi) in ranges[0].items():
        assert torch.equal(lo, ranges[1][name][0]) and torch.equal(hi, ranges[1][name][1]), name
    whole = next(calibration_inputs(sampler, small_config(calibration_images=1), torch.Generator()))
    assert whole.shape[-2:] == (256, 256)  # a whole photo, not a crop


def test_diversity_term_is_logged(tmp_path, sample_paths):
    sampler = CropSampler(sample_paths, 64)
    model, spec = fresh(QuantPolicy.dynamic((4, 8), selector="global"))
    last = train(model, spec, sampler, small_config(steps=2, diversity=0.1), tmp_path / "d.pt",
                 progress=False)
    assert 0.0 <= last["mutual_info"] <= 0.7


def test_distortion_weighted_bits_prices_clean_images_lower():
    """γ_i ∝ MSE_i: an image reconstructed twice as well pays half as much per bit."""
    from dqsearch.train import distortion_weighted_bits

    model, _ = fresh(QuantPolicy.dynamic((4, 8), selector="global"))
    model.train()
    x = torch.rand(2, 3, 64, 64)
    model(x)
    x_hat = x.clone()
    x_hat[0] += 0.1
    x_hat[1] += 0.1 * 2**-0.5  # MSE half that of image 0
    from dqsearch.quant.wrap import model_bits_per_image

    per_image = model_bits_per_image(model).detach()
    want = ((4 / 3) * per_image[0] + (2 / 3) * per_image[1]) / 2
    assert distortion_weighted_bits(model, x_hat, x).item() == pytest.approx(want.item(), rel=1e-4)
