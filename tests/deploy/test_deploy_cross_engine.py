"""Every engine decodes every engine's stream to the same latents or refuses it by name (Kodak)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from dqsearch.data import list_images, load_image

#: x86-int8 joins where its plugin is installed (the README's test command installs it)
ENGINES = ("ort-cpu", "x86-int8") if importlib.util.find_spec("dqsearch_x86") else ("ort-cpu",)
KODAK = Path(os.environ.get("DQSEARCH_KODAK", Path(__file__).resolve().parents[3] / "shared/data/kodak"))


@pytest.fixture(scope="module")
def engines_8bit(tmp_path_factory):
    """The embedded N=64 model, PTQ to 8 bits, exported to each engine with the integer and with
    the float h_s."""
    from dqsearch.deploy.crosscheck import ptq_checkpoint
    from dqsearch.deploy.runtime import Runtime
    from dqsearch.models import load_checkpoint

    from .conftest import export

    work = tmp_path_factory.mktemp("cross")
    ckpt = ptq_checkpoint(work / "ptq8.pt")
    ck = load_checkpoint(ckpt)
    runtimes = {e: Runtime(export(ckpt, work / f"{e}-int", backend=e).folder) for e in ENGINES}
    floats = {e: Runtime(export(ckpt, work / f"{e}-float", backend=e, hyper="float").folder) for e in ENGINES}
    return ck.model.eval(), ck.model_id, runtimes, floats


@pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak images not found at {KODAK} (set DQSEARCH_KODAK)")
def test_every_engine_decodes_every_stream_or_refuses_by_name(engines_8bit):
    """All 24 Kodak images: integer streams give identical latents on every engine (PyTorch,
    ort-cpu, x86-int8); float streams are refused by every other engine with a line naming the one
    that decodes them."""
    from dqsearch.deploy.crosscheck import cross_check

    model, model_id, runtimes, floats = engines_8bit
    names = ("torch", *runtimes)
    hints = {"torch": "PyTorch: dqsearch decompress without --runtime",
             "ort-cpu": "ONNX Runtime: dqsearch decompress --runtime DIR", "x86-int8": "x86-int8"}
    images = list_images(KODAK)
    assert len(images) == 24
    for path in images:
        row = cross_check(model, model_id, runtimes, load_image(path).unsqueeze(0), floats)
        for enc in names:
            for dec in names:
                if dec != enc:
                    assert row[enc][dec] == "same", (path.name, enc, dec, row[enc][dec])
                    refusal = row[f"{enc}-float"][dec]
                    assert refusal.startswith("refused") and hints[enc] in refusal, (path.name, enc, dec)
                    assert "\n" not in refusal
