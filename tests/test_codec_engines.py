"""One round-trip suite over every codec engine: PyTorch (`codec.TorchCodec`) and, for every
installed backend with a deployment part, its export run by `deploy.runtime.RuntimeCodec`. Each
engine decodes its own streams and every other engine's (integer entropy parameters)."""

from __future__ import annotations

import pytest
import torch

from dqsearch.backends.testing import tiny_quantized_checkpoint
from dqsearch.codec import Codec, TorchCodec
from dqsearch.deploy.targets import deploy_targets
from dqsearch.evaluate import psnr
from dqsearch.models import load_checkpoint

ENGINES = ["torch", *deploy_targets()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_quantized_checkpoint(tmp_path_factory.mktemp("engines") / "tiny-8bit.pt")


@pytest.fixture(scope="module")
def engines(checkpoint, tmp_path_factory) -> dict[str, Codec]:
    from dqsearch.deploy.artifact import Options, export_model
    from dqsearch.deploy.runtime import RuntimeCodec

    ck = load_checkpoint(checkpoint)
    out: dict[str, Codec] = {"torch": TorchCodec(ck.model.eval(), ck.model_id)}
    for name in ENGINES[1:]:
        folder = tmp_path_factory.mktemp(f"export-{name}")
        export_model(checkpoint, folder, name, Options(subpixel="off", decide_input=(64, 64)), force=True)
        out[name] = RuntimeCodec(folder)
    return out


@pytest.fixture(scope="module")
def image():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 64, 96, generator=gen)  # not a multiple of 64 wide: padding and crop


@pytest.mark.parametrize("encoder", ENGINES)
@pytest.mark.parametrize("decoder", ENGINES)
def test_round_trip(engines, image, encoder, decoder):
    enc = engines[encoder].encode(image)
    assert enc.data[:4] and enc.width == 96 and enc.height == 64 and enc.bpp > 0
    x_hat, header = engines[decoder].decode(enc.data)
    assert header.hyper == "integer" and header.model_id == engines[encoder].model_id
    assert x_hat.shape == image.shape and 0 <= float(x_hat.min()) and float(x_hat.max()) <= 1
    ref, _ = engines[encoder].decode(enc.data)
    assert psnr(ref, x_hat) >= 30  # every engine's decode of one stream: the same picture


def test_every_engine_has_the_interface(engines):
    assert "torch" in engines
    for name, codec in engines.items():
        assert codec.engine == name and isinstance(codec.model_id, str)
