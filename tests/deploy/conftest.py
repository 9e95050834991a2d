"""Tiny real quantized ScaleHyperprior checkpoints and their exports (no training: calibrated only)."""

from __future__ import annotations

import pytest
import torch

from dqsearch.data import load_image, pad_to_multiple

pytest.importorskip("onnxruntime")
pytest.importorskip("dqsearch_ort")


def _save(tmp_path_factory, sample_paths, policy, name):
    from dqsearch.models import build_model, save_checkpoint
    from dqsearch.quant.wrap import calibrate, wrap

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), policy)
    calibrate(model, [pad_to_multiple(load_image(p).unsqueeze(0)[..., :128, :128], 64)[0]
                      for p in sample_paths[:2]])
    model.update(force=True)
    path = tmp_path_factory.mktemp("deploy-ck") / name
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24}, policy)
    return path


@pytest.fixture(scope="session")
def mixed_checkpoint(tmp_path_factory, sample_paths):
    """Fixed precision, mostly 8 bits, one 6-bit (int8 container) and one 12-bit (int16) layer."""
    from dqsearch.quant.wrap import LayerPolicy, QuantPolicy

    policy = QuantPolicy.fixed(8, overrides={"g_a.2": LayerPolicy("fixed", (6,)),
                                             "g_s.2": LayerPolicy("fixed", (12,))})
    return _save(tmp_path_factory, sample_paths, policy, "mixed.pt")


@pytest.fixture(scope="session")
def dynamic_checkpoint(tmp_path_factory, sample_paths):
    from dqsearch.quant.wrap import QuantPolicy

    return _save(tmp_path_factory, sample_paths, QuantPolicy.dynamic((6, 8)), "dynamic.pt")


@pytest.fixture(scope="session")
def image():
    """A real 64×96 photo crop."""
    from dqsearch.data import list_images, sample_images_dir

    return load_image(list_images(sample_images_dir())[1])[:, :64, :96].unsqueeze(0).contiguous()


def export(checkpoint, folder, backend="ort-cpu", **options):
    from dqsearch.deploy.artifact import Options, export_model

    opts = dict(subpixel="on", decide_input=(64, 64))
    opts.update(options)
    return export_model(checkpoint, folder, backend, options=Options(**opts), force=True)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, mixed_checkpoint):
    """The mixed checkpoint exported three ways: int8 and exact with the float h_s (they read
    `dqsearch compress` streams), and int8 with the integer h_s (the default)."""
    base = tmp_path_factory.mktemp("exports")
    return {name: export(mixed_checkpoint, base / name, **opts).folder for name, opts in (
        ("int8", {"hyper": "float"}), ("exact", {"arithmetic": "exact", "hyper": "float"}),
        ("integer", {}))}
