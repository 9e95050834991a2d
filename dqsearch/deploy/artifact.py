"""Export folders: a manifest, the entropy tables, the source checkpoint, calibration crops, and one
sub-folder of artifacts per precision profile (built on demand, cached on disk by profile).

    DIR/manifest.json           model id, architecture, layers and candidates, options, versions,
                                and the backend whose deployment part builds and runs the transforms
    DIR/entropy.pt              entropy-model tables (CDFs, offsets, medians, scale table)
    DIR/source.pt               the checkpoint (learned parameters for every candidate bit-width)
    DIR/calibration.pt          uint8 crops for the int8 output requantization ranges
    DIR/profiles/<key>/         the backend's executable transforms (ort-cpu: g_a.onnx h_a.onnx
                                h_s.onnx g_s.onnx), h_s_int.npz (integer h_s), weights.bin/.json
                                (packed at bit-width), profile.json (sizes, decisions)

Everything here is backend-neutral; the transforms are built and run by the deployment part of
the backend named in the manifest (`Backend.deployment()`, found through the plugin registry).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..atomic import write_json
from ..backends.base import Deployment
from ..codec import _profile_for
from ..integer.int_hyper import IntegerHyperSynthesis
from ..integer.packing import write_packed
from ..integer.params import model_layers
from ..models import LoadedCheckpoint, atomic_torch_save, load_checkpoint
from ..quant.wrap import FP32, dynamic_layers, quantized_layers, weight_bytes
from ..units import INT8_TRANSFORMS, container_of
from . import entropy
from .calibrate import calibration_images, output_ranges
from .targets import deployment_for

FORMAT = "dqsearch-deploy"
VERSION = 1
ENCODER, DECODER = ("g_a", "h_a"), ("h_s", "g_s")
TRANSFORMS = ENCODER + DECODER
CODECS = {  # architecture → how its hyperprior is wired
    "bmshj2018-hyperprior": {"abs_h_a": True, "means": False},
    "mbt2018-mean": {"abs_h_a": False, "means": True},
}
SUBPIXEL = ("auto", "timed", "on", "off")
HYPER = ("float", "integer")
ARITHMETICS = ("int8", "exact")
WEIGHT_MODES = ("exact", "symmetric")


def profile_key(bits: tuple[int, ...]) -> str:
    text = ",".join(str(b) for b in bits)
    return "p" + hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class Options:
    """How a profile's artifacts are built (stored in the manifest, reused on cache misses)."""

    arithmetic: str = "int8"  # g_a and g_s: "int8" (QLinearConv) or "exact" (learned QDQ, float conv)
    hyper: str = "integer"  # h_s: "integer" (bit-exact everywhere) or "float" (exact QDQ in ORT)
    subpixel: str = "auto"  # deconvs as Conv + PixelShuffle: auto (where one runs in int8), timed, on, off
    int8_weights: str = "exact"  # "symmetric": zero-point 0, 8-bit outliers clipped (faster kernel)
    decide_input: tuple[int, int] = (512, 768)  # image size (H, W) the timed decision is timed at
    threads: int = 1

    def __post_init__(self) -> None:
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"arithmetic must be int8 or exact, got {self.arithmetic!r}")
        if self.hyper not in HYPER:
            raise ValueError(f"hyper must be one of {HYPER}, got {self.hyper!r}")
        if self.subpixel not in SUBPIXEL:
            raise ValueError(f"subpixel must be one of {SUBPIXEL}, got {self.subpixel!r}")
        if self.int8_weights not in WEIGHT_MODES:
            raise ValueError(f"int8_weights must be one of {WEIGHT_MODES}, got {self.int8_weights!r}")
        self.decide_input = tuple(int(v) for v in self.decide_input)

    def arithmetic_of(self, transform: str) -> str:
        """The hyper transforms are small and decide the entropy parameters: always exact."""
        return self.arithmetic if transform in INT8_TRANSFORMS else "exact"


@dataclass
class ProfileArtifact:
    folder: Path
    info: dict[str, Any]
    _hyper: IntegerHyperSynthesis | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.info["key"]

    def path(self, name: str) -> Path:
        """A file of this profile (e.g. ort-cpu's `g_a.onnx`); missing: a one-line error."""
        path = self.folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: re-export this profile (delete its folder)")
        return path

    def integer_hyper(self) -> IntegerHyperSynthesis:
        if self._hyper is None:
            self._hyper = IntegerHyperSynthesis.load(self.folder / "h_s_int.npz")
        return self._hyper


class Store:
    """An export folder."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder, self.manifest = folder, manifest
        self.options = Options(**{**manifest["options"],
                                  "decide_input": tuple(manifest["options"]["decide_input"])})
        self._source: LoadedCheckpoint | None = None
        self._deployment: Deployment | None = None

    @property
    def deployment(self) -> Deployment:
        """The deployment part of the backend this folder was exported for."""
        if self._deployment is None:
            self._deployment = deployment_for(self.manifest["backend"])
        return self._deployment

    @classmethod
    def open(cls, folder: str | Path) -> Store:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no deployment (no manifest.json): create it with "
                                    "dqsearch export --checkpoint CKPT -o DIR")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"{path} is not a version-{VERSION} dqsearch deployment: re-export it")
        return cls(folder, manifest)

    @property
    def layer_names(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["layers"]]

    def entropy_models(self):
        return entropy.load_tables(self.folder / "entropy.pt")

    def source(self) -> LoadedCheckpoint:
        if self._source is None:
            self._source = load_checkpoint(self.folder / "source.pt")
            if self._source.model_id != self.manifest["model_id"]:
                raise ValueError(f"{self.folder}/source.pt is not the exported model: re-export")
            self._source.model.eval()
        return self._source

    def calibration(self) -> list[torch.Tensor]:
        crops = torch.load(self.folder / "calibration.pt", weights_only=True)
        return [c.float().div(255).unsqueeze(0) for c in crops]

    def choose_profile(self, x: torch.Tensor) -> tuple[int, ...]:
        """The precision profile for a padded image: fixed, or the selectors' choice."""
        if self.manifest["default_bits"] is not None:
            return tuple(self.manifest["default_bits"])
        model = self.source().model
        with torch.no_grad():
            profile = _profile_for(model, x)
        return tuple(profile[n] for n in self.layer_names)

    def profile(self, bits: tuple[int, ...], build: bool = True) -> tuple[ProfileArtifact, bool]:
        """The artifacts of a profile, and whether they had to be built now (a cache miss)."""
        if len(bits) != len(self.layer_names):
            raise ValueError(f"profile has {len(bits)} bit-widths, the model {len(self.layer_names)} layers")
        for entry, b in zip(self.manifest["layers"], bits, strict=True):
            if b not in entry["bits"]:
                raise ValueError(f"layer {entry['name']} was trained for {entry['bits']} bits, not {b}")
        folder = self.folder / "profiles" / profile_key(bits)
        if (folder / "profile.json").is_file():
            return ProfileArtifact(folder, json.loads((folder / "profile.json").read_text())), False
        if not build:
            raise FileNotFoundError(f"profile {list(bits)} is not exported in {self.folder}")
        build_profile(self, bits)
        return ProfileArtifact(folder, json.loads((folder / "profile.json").read_text())), True


def build_profile(store: Store, bits: tuple[int, ...]) -> Path:
    """Write one profile's artifacts (atomically: a temporary folder renamed into place)."""
    t0 = time.perf_counter()
    ck = store.source()
    model = ck.model
    profile = dict(zip(store.layer_names, bits, strict=True))
    layers = model_layers(model, profile)
    opts = store.options
    needs_ranges = opts.arithmetic == "int8" and any(
        lq.container == "int8" for n, lq in layers.items() if n.split(".")[0] in INT8_TRANSFORMS)
    ranges = output_ranges(model, profile, store.calibration()) if needs_ranges else None
    final = store.folder / "profiles" / profile_key(bits)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        decisions, sizes = store.deployment.build(store, model, layers, ranges, tmp)
        if opts.hyper == "integer":
            hs = [lq for n, lq in layers.items() if n.startswith("h_s.")]
            scale_table = model.gaussian_conditional.scale_table.tolist()
            IntegerHyperSynthesis.build(hs, scale_table).save(tmp / "h_s_int.npz")
            sizes["h_s_int.npz"] = (tmp / "h_s_int.npz").stat().st_size
        packed = write_packed(layers, tmp)
        total_fp32 = sum(p.numel() for p in model.parameters()) * 4.0
        wb = weight_bytes(model, profile) if quantized_layers(model) else {
            "fp32": total_fp32, "paper": total_fp32}  # an FP32 model: b̄ = 32
        nonconv = sum(p.numel() for n, p in model.named_parameters()
                      if not any(n.startswith(lname + ".") for lname in layers)) * 4
        info = {
            "key": final.name, "bits": list(bits), "profile": profile,
            "containers": {n: container_of(lq.bits) for n, lq in layers.items()},
            "decisions": decisions,
            "size_bytes": {
                "files": sizes, "files_total": sum(sizes.values()),
                "packed_conv_weights": packed["weights"], "packed_side_data": packed["side"],
                "weights_bin": packed["file"],
                "other_parameters_fp32": nonconv,
                "packed_model": packed["file"] + nonconv,
                "fp32_model": wb["fp32"],
                "paper_fp32_x_bbar_over_32": wb.get("paper"),
            },
            "build_seconds": time.perf_counter() - t0,
        }
        write_json(tmp / "profile.json", info)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:  # another process built it first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _layer_entries(model: torch.nn.Module) -> list[dict[str, Any]]:
    out = []
    for name, m in quantized_layers(model).items():
        allowed = [FP32] if m.mode == "fp32" else list(m.candidates)
        out.append({"name": name, "mode": m.mode, "bits": allowed})
    return out


def export_model(checkpoint: str | Path, folder: str | Path, backend: str = "ort-cpu",
                 options: Options | None = None, profiles: list[tuple[int, ...]] | None = None,
                 images: list[torch.Tensor] | None = None, calibration: str | Path | None = None,
                 force: bool = False) -> Store:
    """Export a checkpoint: manifest, tables, source, and the artifacts of the given profiles (by
    default: the fixed model's profile, or the profiles the selectors pick for `images`)."""
    deployment = deployment_for(backend)
    options = options or Options()
    folder = Path(folder)
    if (folder / "manifest.json").exists() and not force:
        raise FileExistsError(f"{folder} already holds an export: pass --force to replace it")
    if force and (folder / "manifest.json").exists():
        shutil.rmtree(folder / "profiles", ignore_errors=True)
    ck = load_checkpoint(checkpoint)
    if ck.architecture not in CODECS:
        raise ValueError(f"deployment supports {sorted(CODECS)}, not {ck.architecture} (its entropy "
                         "parameters come from a context model that is not exported yet)")
    if options.hyper == "integer" and CODECS[ck.architecture]["means"]:
        raise ValueError("the integer hyper-synthesis predicts scales only; mbt2018-mean also predicts "
                         "means: use --hyper float")
    if options.hyper == "integer" and not quantized_layers(ck.model):
        raise ValueError("the integer hyper-synthesis needs a quantized h_s; this checkpoint is FP32: "
                         "use --hyper float (or export a QAT checkpoint)")
    model = ck.model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ck.path, folder / "source.pt")
    entropy.save_tables(model, folder / "entropy.pt")
    crops = [(c[0] * 255).round().to(torch.uint8) for c in calibration_images(calibration)]
    atomic_torch_save(crops, folder / "calibration.pt")
    layers = _layer_entries(model)
    fixed = not dynamic_layers(model)
    default_bits = [e["bits"][0] for e in layers] if fixed else None
    manifest = {
        "format": FORMAT, "version": VERSION, "backend": backend,
        "model_id": ck.model_id, "architecture": ck.architecture, "arch_args": ck.arch_args,
        "codec": CODECS[ck.architecture], "layers": layers, "default_bits": default_bits,
        "options": {**options.__dict__, "decide_input": list(options.decide_input)},
        "gdn": deployment.gdn,
        "versions": {"dqsearch": __version__, **deployment.versions(), "torch": torch.__version__},
        "machine": {"cpu": platform.processor() or platform.machine(), "exported": time.strftime("%Y-%m-%d")},
    }
    write_json(folder / "manifest.json", manifest)
    store = Store.open(folder)
    store._deployment = deployment
    todo = list(profiles or [])
    if not todo and fixed:
        todo.append(tuple(default_bits))
    for img in images or []:
        todo.append(store.choose_profile(img))
    if not todo:  # a dynamic model and no images: every layer at its largest candidate
        todo.append(tuple(max(e["bits"]) for e in layers))
    for bits in dict.fromkeys(tuple(b) for b in todo):
        store.profile(bits)
    return store
