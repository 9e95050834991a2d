"""Helpers of the x86-int8 tests: tiny real quantized checkpoints (calibrated on bundled photos, no
training), exports and photo crops (a module of its own: the tests import it by name)."""

from __future__ import annotations

import torch

from dqsearch.data import list_images, load_image, pad_to_multiple, sample_images_dir


def save_checkpoint_of(folder, policy, name):
    from dqsearch.models import build_model, save_checkpoint
    from dqsearch.quant.wrap import calibrate, wrap

    torch.manual_seed(0)
    model = wrap(build_model("bmshj2018-hyperprior", N=16, M=24), policy)
    crops = [pad_to_multiple(load_image(p).unsqueeze(0)[..., :128, :128], 64)[0]
             for p in list_images(sample_images_dir())[:2]]
    with torch.no_grad():
        calibrate(model, crops)
    model.update(force=True)
    path = folder / name
    save_checkpoint(path, model, "bmshj2018-hyperprior", {"N": 16, "M": 24}, policy)
    return path


def export(checkpoint, folder, backend="x86-int8", profiles=None, **options):
    from dqsearch.deploy.artifact import Options, export_model

    return export_model(checkpoint, folder, backend, Options(decide_input=(64, 64), **options), profiles,
                        force=True)


def photo(w: int, h: int, index: int = 1) -> torch.Tensor:
    """A real photo crop, w wide and h high, as [1, 3, h, w]."""
    img = load_image(list_images(sample_images_dir())[index])
    return img[:, :h, :w].unsqueeze(0).contiguous()
