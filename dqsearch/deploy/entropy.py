"""The entropy models' tables (CDFs, offsets, medians, scale table) stored beside the exported
transforms, and CompressAI entropy coders rebuilt from them: decoding needs no checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from ..models import atomic_torch_save

FORMAT = "dqsearch-entropy-tables"


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_tables(model: nn.Module, path: str | Path) -> None:
    """The hyperprior's EntropyBottleneck and GaussianConditional, as plain tensors."""
    for name in ("entropy_bottleneck", "gaussian_conditional"):
        if not hasattr(model, name):
            raise ValueError(f"the model has no {name}: only hyperprior models deploy")
    atomic_torch_save({"format": FORMAT, "channels": int(model.entropy_bottleneck.channels),
                       "entropy_bottleneck": _state(model.entropy_bottleneck),
                       "gaussian_conditional": _state(model.gaussian_conditional)}, path)


def _load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    for name, t in state.items():  # buffers created by update() have data-dependent sizes
        if name in module._buffers:
            module._buffers[name] = torch.empty_like(t)
    module.load_state_dict(state)
    return module.eval()


def load_tables(path: str | Path) -> tuple[EntropyBottleneck, GaussianConditional]:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dqsearch entropy-table file; re-run dqsearch export")
    eb = _load_into(EntropyBottleneck(raw["channels"]), raw["entropy_bottleneck"])
    gc = _load_into(GaussianConditional(None), raw["gaussian_conditional"])
    return eb, gc
