"""The codec through exported artifacts against the PyTorch fake-quantized codec."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from dqsearch_ort.deployment import session
from dqsearch_ort.onnx_graph import export, quantize_graph

from dqsearch.codec import BitstreamError, decode, encode
from dqsearch.deploy.artifact import Store
from dqsearch.deploy.modules import transform_module
from dqsearch.deploy.runtime import Runtime
from dqsearch.evaluate import psnr
from dqsearch.integer.packing import read_packed_ints
from dqsearch.integer.params import model_layers
from dqsearch.models import load_checkpoint
from dqsearch.quant.wrap import quantized_layers, set_profile

from .conftest import export as export_folder


@pytest.fixture(scope="module")
def torch_model(mixed_checkpoint):
    ck = load_checkpoint(mixed_checkpoint)
    return ck.model.eval(), ck.model_id


def test_exact_graphs_compute_the_fake_quantized_transforms(torch_model, image):
    model, _ = torch_model
    profile = {n: m.candidates[0] for n, m in quantized_layers(model).items()}
    layers = model_layers(model, profile)
    set_profile(model, profile)
    x = torch.nn.functional.pad(image, (16, 16, 0, 0), mode="replicate")  # 64×128
    with torch.no_grad():
        y = model.g_a(x)
        ins = {"g_a": x, "h_s": torch.round(model.h_a(y.abs())), "g_s": torch.round(y)}
        for t, inp in ins.items():
            ref = model.get_submodule(t)(inp).numpy()
            for sub in (False, True):
                mod, convs = transform_module(model, t, layers, use_subpixel=sub)
                out = session(quantize_graph(export(mod, inp.shape[1]), convs, "exact")).run(
                    None, {"x": inp.numpy()})[0]
                assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6, (t, sub)


def test_int8_graph_runs_integer_kernels(exported, tmp_path):
    """Sub-pixel g_s: every int8 layer becomes QLinearConv, no ConvTranspose remains."""
    from dqsearch_ort.session import SessionConfig

    store = Store.open(exported["int8"])
    art, built = store.profile(tuple(store.manifest["default_bits"]))
    assert not built
    ops = {}
    for t in ("g_a", "g_s"):
        opt = tmp_path / f"{t}.opt.onnx"
        SessionConfig().session(onnx.load(str(art.path(f"{t}.onnx"))), optimized_path=str(opt))
        ops[t] = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops["g_a"].count("QLinearConv") == 4  # g_a.2 is 6-bit: int8 container, integer too
    assert "ConvTranspose" not in ops["g_s"] and ops["g_s"].count("QLinearConv") == 3  # g_s.2 is 12-bit
    assert art.info["decisions"]["g_s"]["subpixel"] and art.info["containers"]["g_s.2"] == "int16"


@pytest.mark.parametrize("arithmetic,max_db", [("exact", 0.1), ("int8", 0.5)])
def test_decoding_a_pytorch_stream_through_artifacts(exported, torch_model, image, arithmetic, max_db):
    """bpp is identical (the same file) and the image within `max_db` of the PyTorch decoder."""
    model, model_id = torch_model
    enc = encode(model, model_id, image)
    ref, _ = decode(model, model_id, enc.data)
    x_hat, header, info = Runtime(exported[arithmetic]).decode(enc.data)
    assert header.profile_bits == tuple(enc.profile.values())
    assert x_hat.shape == ref.shape
    assert abs(psnr(image, x_hat) - psnr(image, ref)) <= max_db
    if arithmetic == "exact":
        assert psnr(ref, x_hat) > 60


def test_runtime_streams_decode_with_pytorch(exported, torch_model, image):
    """Integer streams cross; a float-h_s export's stream is refused by PyTorch, naming the engine."""
    model, model_id = torch_model
    enc, info = Runtime(exported["integer"]).encode(image)
    torch_enc = encode(model, model_id, image)
    assert abs(enc.bpp - torch_enc.bpp) <= 0.02 * torch_enc.bpp
    x_hat, header = decode(model, model_id, enc.data)
    assert header.hyper == "integer" and psnr(image, x_hat) > 5
    assert set(info["times"]) == {"g_a", "h_a", "h_s", "entropy", "write"}
    float_enc, _ = Runtime(exported["exact"]).encode(image)
    with pytest.raises(BitstreamError, match="float:ort-cpu.*ONNX Runtime: dqsearch decompress --runtime"):
        decode(model, model_id, float_enc.data)
    x_float, header, _ = Runtime(exported["int8"]).decode(float_enc.data)  # same engine: decodes
    assert header.hyper == "float:ort-cpu" and psnr(image, x_float) > 5


def test_packed_weights_hold_the_learned_integers(exported, torch_model):
    model, _ = torch_model
    store = Store.open(exported["int8"])
    art, _ = store.profile(tuple(store.manifest["default_bits"]))
    bits = dict(zip(store.layer_names, art.info["bits"], strict=True))
    layers = model_layers(model, bits)
    for name in ("g_a.2", "g_s.2", "h_s.4"):
        np.testing.assert_array_equal(read_packed_ints(art.folder, name), layers[name].w_int)
    size = art.info["size_bytes"]
    n_conv = sum(lq.w_int.size for lq in layers.values())
    assert size["packed_conv_weights"] == sum(-(-lq.w_int.size * lq.bits // 8) for lq in layers.values())
    assert size["packed_conv_weights"] < n_conv * 4 / 3
    assert size["paper_fp32_x_bbar_over_32"] < size["fp32_model"] / 3


def test_decoder_builds_a_missing_profile_once(tmp_path, dynamic_checkpoint, image):
    """A dynamic model: the export holds the all-8-bit profile; a 6-bit stream is a cache miss."""
    ck = load_checkpoint(dynamic_checkpoint)
    folder = export_folder(dynamic_checkpoint, tmp_path / "dyn", hyper="float").folder
    assert len(list((folder / "profiles").iterdir())) == 1
    six = dict.fromkeys(quantized_layers(ck.model), 6)
    set_profile(ck.model, six)
    from dqsearch.codec import Header, _compress_integer, pack

    x = torch.nn.functional.pad(image, (16, 16, 0, 0), mode="replicate")
    with torch.no_grad():
        strings, shape = _compress_integer(ck.model.eval(), six, x)
    data = pack(Header(ck.model_id, 64, 128, tuple(six.values()), "integer"), strings, shape)
    rt = Runtime(folder)
    _, _, info = rt.decode(data)
    miss = [e for e in info["events"] if e.get("cache") == "miss"]
    assert len(miss) == 1 and miss[0]["build_seconds"] > 0
    _, _, info = Runtime(folder).decode(data)
    assert [e["cache"] for e in info["events"] if "cache" in e] == ["hit"]
    assert len(list((folder / "profiles").iterdir())) == 2


def test_clear_errors(exported, torch_model, image, tmp_path):
    model, model_id = torch_model
    enc = encode(model, model_id, image)
    x_int, header, _ = Runtime(exported["integer"]).decode(enc.data)  # PyTorch's default: integer
    assert header.hyper == "integer" and psnr(image, x_int) > 5
    float_data = encode(model, model_id, image, hyper="float:torch").data
    for folder in exported.values():  # one line naming the engine that can, never garbage
        with pytest.raises(BitstreamError, match="float:torch.*PyTorch: dqsearch decompress without"):
            Runtime(folder).decode(float_data)
    forged = bytearray(enc.data)
    manifest = json.loads((exported["exact"] / "manifest.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in ("entropy.pt", "calibration.pt", "source.pt"):
        (other / f).write_bytes((exported["exact"] / f).read_bytes())
    (other / "manifest.json").write_text(json.dumps({**manifest, "model_id": "0" * 16}))
    with pytest.raises(BitstreamError, match="written by model"):
        Runtime(other).decode(bytes(forged))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        Runtime(tmp_path)


@pytest.mark.parametrize("arch", ["mbt2018-mean", "bmshj2018-hyperprior-fp32"])
def test_mean_scale_and_fp32_models_round_trip(tmp_path, sample_paths, image, arch):
    """MeanScaleHyperprior (means from h_s) and an FP32 checkpoint keep the float h_s: PyTorch's
    streams are float:torch (refused by the export), the export's float:ort-cpu (refused by PyTorch)."""
    from dqsearch.models import build_model, save_checkpoint
    from dqsearch.quant.wrap import QuantPolicy, wrap

    torch.manual_seed(0)
    name = arch.removesuffix("-fp32")
    model = build_model(name, N=16, M=24)
    policy = None if arch.endswith("-fp32") else QuantPolicy.fixed(8)
    if policy:
        wrap(model, policy)
        with torch.no_grad():
            model(torch.nn.functional.pad(image, (16, 16, 0, 0)))  # first call calibrates
    model.update(force=True)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, name, {"N": 16, "M": 24}, policy)
    ck = load_checkpoint(path)
    folder = export_folder(path, tmp_path / "dep", hyper="float", arithmetic="exact").folder
    enc = encode(ck.model.eval(), ck.model_id, image)
    ref, header = decode(ck.model, ck.model_id, enc.data)
    assert header.hyper == "float:torch"
    rt = Runtime(folder)
    with pytest.raises(BitstreamError, match="PyTorch"):
        rt.decode(enc.data)
    own, _ = rt.encode(image)
    x_hat, header, _ = rt.decode(own.data)
    assert header.hyper == "float:ort-cpu" and psnr(ref, x_hat) > 30
    with pytest.raises(BitstreamError, match="ONNX Runtime"):
        decode(ck.model, ck.model_id, own.data)
    with pytest.raises(ValueError, match="--hyper float"):
        export_folder(path, tmp_path / "dep2")


def test_runtime_refuses_crafted_streams_and_decodes_short_ones_deterministically(exported, torch_model,
                                                                                  image):
    """The export's decoder gets the same stream checks and zero padding as `codec.decode`."""
    from dqsearch.codec import Header, pack, unpack
    from dqsearch.fuzzing import run_forked

    model, model_id = torch_model
    header = unpack(encode(model, model_id, image).data)[0]
    runtime = Runtime(exported["exact"])
    big = Header(header.model_id, 1024, 1024, header.profile_bits, header.hyper)
    with pytest.raises(BitstreamError, match="0 bytes"):
        runtime.decode(pack(big, [[b""], [b""]], [16, 16]))
    with pytest.raises(BitstreamError, match="latent shape"):
        runtime.decode(pack(big, [[b"\0" * 8], [b"\0" * 8]], [4096, 4096, 1, 1]))
    short = pack(Header(header.model_id, 256, 256, header.profile_bits, header.hyper),
                 [[b"\x5a" * 8], [b"\xa5" * 8]], [4, 4])
    dec = lambda b: runtime.decode(b)[0]  # noqa: E731
    digests = {run_forked(dec, short, 120, (BitstreamError,), dirty=s).digest for s in range(2)}
    assert len(digests) == 1 and "" not in digests


@pytest.mark.parametrize("size", [(64, 96), (37, 53), (77, 131), (1, 1)])
def test_same_bytes_same_image_at_any_size(exported, torch_model, sample_paths, size):
    """PyTorch's default (integer) stream through the exports, odd sizes included: identical
    latents; the exact export's image equals PyTorch's (> 60 dB), the int8 one within 0.5 dB."""
    from dqsearch.codec import latents
    from dqsearch.data import load_image

    model, model_id = torch_model
    h, w = size
    x = load_image(sample_paths[3])[:, :h, :w].unsqueeze(0).contiguous()
    enc = encode(model, model_id, x)
    ref, _ = decode(model, model_id, enc.data)
    y_ref = latents(model, model_id, enc.data)[0]
    for name in ("exact", "int8", "integer"):
        rt = Runtime(exported[name])
        assert torch.equal(rt.latents(enc.data)[0], y_ref), name
        x_hat, header, _ = rt.decode(enc.data)
        assert x_hat.shape == ref.shape == x.shape and header.hyper == "integer"
        if name == "exact":
            assert psnr(ref, x_hat) > 60
        elif h > 1:
            assert abs(psnr(x, x_hat) - psnr(x, ref)) <= 0.5, name
