import json

import pytest
import torch

from dqsearch.atomic import write_json
from dqsearch.codec import decode
from dqsearch.evaluate import (
    bd_rate,
    evaluate_checkpoint,
    evaluate_image,
    read_curve,
    results_json,
)
from dqsearch.models import load_checkpoint


def test_bd_rate_identical_curves_is_zero():
    curve = ([0.2, 0.4, 0.7, 1.1], [28.0, 30.5, 33.0, 35.2])
    for method in ("pchip", "akima"):
        rate, dpsnr = bd_rate(curve, curve, method)
        assert rate == pytest.approx(0.0, abs=1e-9) and dpsnr == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_10_percent_more_rate_is_10_percent():
    anchor = ([0.2, 0.4, 0.7, 1.1], [28.0, 30.5, 33.0, 35.2])
    test = ([r * 1.1 for r in anchor[0]], anchor[1])
    rate, dpsnr = bd_rate(anchor, test, "pchip")
    assert rate == pytest.approx(10.0, abs=0.01)
    assert dpsnr < 0


def test_bd_rate_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        bd_rate(([0.1], [30.0]), ([0.1, 0.2], [30.0, 31.0]))
    with pytest.raises(ValueError, match="method"):
        bd_rate(([0.1, 0.2], [30.0, 31.0]), ([0.1, 0.2], [30.0, 31.0]), "cubicz")
    with pytest.raises(ValueError, match="not monotonic"):
        bd_rate(([0.1, 0.2, 0.3], [30.0, 29.0, 31.0]), ([0.1, 0.2], [30.0, 31.0]))
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="CompressAI format"):
        read_curve(bad)


def test_eval_measures_real_bytes_and_decoded_image(tiny_quant_checkpoint, sample_paths):
    ck = load_checkpoint(tiny_quant_checkpoint)
    res, x_hat = evaluate_image(ck, sample_paths[0])
    assert res.bpp == pytest.approx(8 * res.bytes / (res.width * res.height))
    assert res.bpp_likelihood > 0 and res.ms_ssim is not None and 0 < res.ms_ssim <= 1
    assert set(res.profile.values()) <= {4, 8}
    assert 4 <= res.avg_bits <= 8 and 4 <= res.avg_bits_weighted <= 8
    # decoding the same bytes again reproduces the measured reconstruction bit for bit
    from dqsearch.codec import encode
    from dqsearch.data import load_image

    enc = encode(ck.model, ck.model_id, load_image(sample_paths[0]))
    again, _ = decode(ck.model, ck.model_id, enc.data)
    assert torch.equal(again, x_hat)


def test_results_json_is_compressai_format(tiny_quant_checkpoint, sample_paths, tmp_path):
    ck = load_checkpoint(tiny_quant_checkpoint)
    point = evaluate_checkpoint(ck, sample_paths[:2], progress=False)
    assert len(point["images"]) == 2 and point["mean_layer_bits"]["g_a.0"] == 8
    out = results_json("tiny", [point, point], "test")
    path = tmp_path / "r.json"
    write_json(path, out)
    data = json.loads(path.read_text())
    assert data["name"] == "tiny"
    for key in ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"):
        assert len(data["results"][key]) == 2
    bpp, psnr = read_curve(path)
    assert bpp == data["results"]["bpp"] and psnr == data["results"]["psnr-rgb"]
