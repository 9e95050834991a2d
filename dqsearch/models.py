"""CompressAI architectures by registry name, dqsearch checkpoints, and the bundled tiny model family.

A checkpoint is a plain dict (tensors, numbers, strings) so it loads with
`torch.load(weights_only=True)`: architecture name and arguments, the quantization policy (or None
for FP32), the state dict, metadata, and optionally the training state for `--resume`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    Elic2022Official,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.models.base import CompressionModel

from .atomic import atomic_write
from .quant.wrap import QuantPolicy, wrap
from .schemas import CheckpointSchema, SchemaError, validate

ARCHITECTURES: dict[str, type[CompressionModel]] = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018": JointAutoregressiveHierarchicalPriors,
    "cheng2020-anchor": Cheng2020Anchor,
    "cheng2020-attn": Cheng2020Attention,
    "elic2022-official": Elic2022Official,
}
# Channel counts CompressAI uses at its middle qualities; override with N/M.
DEFAULT_ARGS: dict[str, dict[str, int]] = {
    "bmshj2018-factorized": {"N": 128, "M": 192},
    "bmshj2018-hyperprior": {"N": 128, "M": 192},
    "mbt2018-mean": {"N": 128, "M": 192},
    "mbt2018": {"N": 192, "M": 192},
    "cheng2020-anchor": {"N": 128},
    "cheng2020-attn": {"N": 128},
    "elic2022-official": {"N": 192, "M": 320},
}
CHECKPOINT_FORMAT = 1
# Entropy-coder tables that `update()` derives from the weights; compact checkpoints omit them.
DERIVED_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")
# Constants the architecture's constructor fixes (CompressAI's LowerBound bounds, GDN's pedestal).
# Loading always takes them from the constructed model: fp16 flushes the likelihood bound 1e-9 to
# 0, and a zero bound lets a likelihood reach 0 and the rate term become infinite in training.
CONSTANT_BUFFERS = (".bound", ".pedestal")
EMBEDDED_QUALITIES = (1, 2, 3, 4)
DEFAULT_EMBEDDED_QUALITY = 3


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def build_model(name: str, **arch_args: int) -> CompressionModel:
    """A fresh (untrained) CompressAI model by registry name, e.g. ("bmshj2018-hyperprior", N=64, M=96)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(ARCHITECTURES)}")
    args = {**DEFAULT_ARGS[name], **{k: int(v) for k, v in arch_args.items() if v is not None}}
    allowed = set(DEFAULT_ARGS[name])
    if set(args) - allowed:
        raise ValueError(f"model {name} takes {sorted(allowed)}, not {sorted(set(args) - allowed)}")
    return ARCHITECTURES[name](**args)


def pretrained_model(name: str, quality: int, metric: str = "mse") -> CompressionModel:
    """CompressAI zoo weights; works offline only when the file is already in torch's hub cache."""
    from compressai import zoo

    fn = getattr(zoo, name.replace("-", "_"), None)
    if fn is None:
        raise ValueError(f"CompressAI has no pretrained {name!r}; train one with `dqsearch train`")
    try:
        return fn(quality=quality, metric=metric, pretrained=True, progress=False)
    except OSError as e:  # URLError is an OSError
        raise RuntimeError(
            f"cannot download CompressAI's pretrained {name} (quality {quality}): {e}. This machine "
            "has no access to CompressAI's weight server; train a model with `dqsearch train` and "
            "pass it with --checkpoint PATH (or put the weight file in torch's hub cache)."
        ) from None


@dataclass
class LoadedCheckpoint:
    """What a checkpoint file holds, with the model already built (and wrapped if quantized)."""

    model: CompressionModel
    architecture: str
    arch_args: dict[str, int]
    policy: QuantPolicy | None
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]


def state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """16 hex digits identifying a model's weights (the bitstream header's model id)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if key.endswith(DERIVED_BUFFERS):
            continue  # derived by update(); identical weights must give identical ids
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through an atomic write: a killed process never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    path: str | Path,
    model: CompressionModel,
    architecture: str,
    arch_args: dict[str, int],
    policy: QuantPolicy | None = None,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    half: bool = False,
) -> str:
    """Save atomically; returns the model id. `half` makes a compact file (bundled models): float
    weights in fp16 and without the entropy-coder tables, which loading recomputes."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()
              if not k.endswith(DERIVED_BUFFERS)}
    model_id = state_dict_digest(sd)
    atomic_torch_save(
        {
            "format": "dqsearch-checkpoint",
            "version": CHECKPOINT_FORMAT,
            "architecture": architecture,
            "arch_args": dict(arch_args),
            "policy": policy.to_dict() if policy is not None else None,
            "state_dict": sd,
            "meta": {**(meta or {}), "model_id": model_id},
            "train_state": train_state,
        },
        path,
    )
    return model_id


def load_checkpoint(path: str | Path, with_train_state: bool = False) -> LoadedCheckpoint:
    """Load and validate a dqsearch checkpoint; every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint {path} is {path.stat().st_size / 2**30:.1f} GiB, more than any "
                              f"model this tool builds ({MAX_CHECKPOINT_BYTES // 2**30} GiB at most)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, zip errors, unsafe globals
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or raw.get("format") != "dqsearch-checkpoint":
        raise CheckpointError(f"{path} is not a dqsearch checkpoint (write one with `dqsearch train`)")
    if raw.get("version") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {raw.get('version')}, this dqsearch "
                              f"reads format {CHECKPOINT_FORMAT}")
    try:
        validate(CheckpointSchema, raw, f"checkpoint {path}")
    except SchemaError as e:
        raise CheckpointError(str(e)) from None
    if raw["architecture"] not in ARCHITECTURES:
        raise CheckpointError(f"checkpoint {path}: architecture {raw['architecture']!r} is not one of "
                              f"{', '.join(ARCHITECTURES)}")
    try:  # every size is bounded by the schema before anything is built from it
        model = build_model(raw["architecture"], **raw["arch_args"])
        policy = QuantPolicy.from_dict(raw["policy"]) if raw.get("policy") else None
        if policy is not None:
            wrap(model, policy)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: its model or quantization policy is invalid: "
                              f"{str(e)[:300]}") from None
    check_state_dict(raw["state_dict"], model, path)
    try:
        sd = {k: v.float() if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
        constants = {k: v for k, v in model.state_dict().items() if k.endswith(CONSTANT_BUFFERS)}
        sd.update({k: v for k, v in constants.items() if k in sd})
        if any(k.endswith(DERIVED_BUFFERS) for k in sd):
            model.load_state_dict(sd)
        else:  # a compact checkpoint: everything but the derived tables must be there
            for name, buf in model.named_buffers():  # CompressAI sizes entropy buffers lazily
                if name in sd and buf.numel() == 0 and sd[name].numel() > 0:
                    buf.resize_(sd[name].shape)
            missing, unexpected = torch.nn.Module.load_state_dict(model, sd, strict=False)
            missing = [k for k in missing if not k.endswith(DERIVED_BUFFERS)]
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit its declared model: {str(e)[:300]}") from None
    try:  # entropy-coder tables; recomputed so fp16 files give valid CDFs
        model.update(force=True)
    except (ValueError, RuntimeError, MemoryError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {path}: its entropy models do not give usable coding "
                              f"tables ({type(e).__name__}: {str(e)[:200]})") from None
    meta = dict(raw["meta"])
    meta["model_id"] = meta.get("model_id") or state_dict_digest(raw["state_dict"])
    if with_train_state and raw.get("train_state") is not None:
        ts = raw["train_state"]
        if not isinstance(ts.get("config"), dict) or isinstance(ts.get("step"), bool) \
                or not isinstance(ts.get("step"), int) or ts["step"] < 0:
            raise CheckpointError(f"checkpoint {path}: train_state needs a 'config' object and a "
                                  "non-negative integer 'step'")
    return LoadedCheckpoint(model, raw["architecture"], dict(raw["arch_args"]), policy, meta,
                            raw.get("train_state") if with_train_state else None, path)


# Bounds on what a checkpoint may declare for the lazily sized entropy buffers, checked before
# `update()` turns them into coding tables (a quantile spread of 1e9 would ask for terabytes).
MAX_CHECKPOINT_BYTES = 4 * 2**30  # N = M = 512 with training state is far below this
MAX_LAZY_NUMEL = 1 << 22
MAX_QUANTILE_SPREAD = 1 << 14  # symbols per channel; CompressAI's 16-bit CDFs cannot use more
MAX_SCALE = 1 << 12


def check_state_dict(sd: dict[str, Any], model: torch.nn.Module, path: Path) -> None:
    """Every entry a finite tensor with the model's shape (or, for buffers CompressAI sizes lazily,
    a bounded size), and entropy parameters that give coding tables of a sane size; before any
    tensor is converted, expanded or used."""
    def fail(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} does not fit its declared model: state_dict[{key!r}] "
                               f"{problem}")

    expected = model.state_dict()
    for key, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise fail(key, f"is a {type(t).__name__}, not a tensor")
        if key not in expected:
            close = difflib.get_close_matches(key, list(expected), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise fail(key, f"is not a parameter of the declared model{hint}")
        if t.dtype.is_complex or t.dtype == torch.bool:
            raise fail(key, f"has dtype {t.dtype}")
        want = expected[key]
        if want.numel() > 0 and tuple(t.shape) != tuple(want.shape):
            raise fail(key, f"has shape {list(t.shape)}, the model needs {list(want.shape)}")
        if want.numel() == 0 and (t.dim() > 3 or t.numel() > MAX_LAZY_NUMEL):
            raise fail(key, f"has shape {list(t.shape)}, far beyond an entropy-coder table")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise fail(key, "holds NaN or infinite values")
    for key, t in sd.items():
        if key.endswith("quantiles") and t.dim() == 3 and t.shape[-1] == 3:
            q = t.double()
            lo, med, hi = q[..., 0], q[..., 1], q[..., 2]
            if bool((lo > med).any() or (med > hi).any()):
                raise fail(key, "is not ordered (lower ≤ median ≤ upper for every channel)")
            if float((hi - lo).max()) > MAX_QUANTILE_SPREAD:
                raise fail(key, f"spans {float((hi - lo).max()):.3g} symbols in a channel; coding tables "
                           f"hold at most {MAX_QUANTILE_SPREAD}")
        if key.endswith("scale_table") and t.numel() and (float(t.min()) <= 0 or float(t.max()) > MAX_SCALE):
            raise fail(key, f"must hold positive scales up to {MAX_SCALE}")


# --- the bundled family -------------------------------------------------------------------------
def embedded_dir() -> Path:
    return Path(str(resources.files("dqsearch") / "embedded"))


def embedded_manifest() -> dict[str, Any]:
    path = embedded_dir() / "manifest.json"
    if not path.is_file():
        raise CheckpointError(f"the embedded model manifest {path} is missing; reinstall dqsearch")
    return json.loads(path.read_text())


def embedded_checkpoint(quality: int = DEFAULT_EMBEDDED_QUALITY) -> Path:
    """Path of the bundled FP32 model at `quality` (1 = lowest rate … 4 = highest)."""
    entries = {int(e["quality"]): e for e in embedded_manifest()["models"]}
    if quality not in entries:
        raise ValueError(f"embedded qualities are {sorted(entries)}, not {quality}")
    return embedded_dir() / entries[quality]["file"]


def resolve_checkpoint(spec: str | Path | None) -> Path:
    """A checkpoint argument: a path, `embedded:Q`, or None for the default embedded model."""
    if spec is None:
        return embedded_checkpoint()
    s = str(spec)
    if s.startswith("embedded:"):
        try:
            q = int(s.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"{s!r}: write embedded:Q with Q in {EMBEDDED_QUALITIES}") from None
        return embedded_checkpoint(q)
    return Path(s)


def find_embedded_by_id(model_id: str) -> Path | None:
    """The bundled checkpoint with this model id, if any (lets `decompress` work without --checkpoint)."""
    for entry in embedded_manifest()["models"]:
        if entry.get("model_id") == model_id:
            return embedded_dir() / entry["file"]
    return None
