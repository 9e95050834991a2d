"""Every engine decodes every engine's stream to the same latents or refuses it by name (Kodak)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dqsearch.data import list_images, load_image

KODAK = Path(os.environ.get("DQSEARCH_KODAK", Path(__file__).resolve().parents[3] / "shared/data/kodak"))


@pytest.fixture(scope="module")
def engines_8bit(tmp_path_factory):
    """The embedded N=64 model, PTQ to 8 bits, exported with the integer and with the float h_s."""
    from dqsearch.deploy.crosscheck import ptq_checkpoint
    from dqsearch.deploy.runtime import Runtime
    from dqsearch.models import load_checkpoint

    from .conftest import export

    work = tmp_path_factory.mktemp("cross")
    ckpt = ptq_checkpoint(work / "ptq8.pt")
    ck = load_checkpoint(ckpt)
    return (ck.model.eval(), ck.model_id, Runtime(export(ckpt, work / "int").folder),
            Runtime(export(ckpt, work / "float", hyper="float").folder))


@pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak images not found at {KODAK} (set DQSEARCH_KODAK)")
def test_every_engine_decodes_every_stream_or_refuses_by_name(engines_8bit):
    """All 24 Kodak images (~20 s on one core): integer streams give identical latents both ways;
    float streams are refused by the other engine with a line naming the one that decodes them."""
    from dqsearch.deploy.crosscheck import cross_check

    model, model_id, runtime, float_runtime = engines_8bit
    images = list_images(KODAK)
    assert len(images) == 24
    for path in images:
        row = cross_check(model, model_id, runtime, load_image(path).unsqueeze(0), float_runtime)
        assert row["torch"]["ort-cpu"] == "same", path.name
        assert row["ort-cpu"]["torch"] == "same", path.name
        assert row["torch-float"]["ort-cpu"].startswith("refused") and \
            "PyTorch: dqsearch decompress without --runtime" in row["torch-float"]["ort-cpu"]
        assert row["ort-cpu-float"]["torch"].startswith("refused") and \
            "ONNX Runtime: dqsearch decompress --runtime DIR" in row["ort-cpu-float"]["torch"]
        assert "\n" not in row["torch-float"]["ort-cpu"]
