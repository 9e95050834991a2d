"""One transform (g_a, h_a, h_s, g_s) at one precision profile as plain arrays: what `build`
writes into `<transform>.npz` and `load` reads back (numpy, `allow_pickle=False`, size-bounded).

A transform is a chain of layers, each followed by an activation (GDN, IGDN, ReLU or none). Each
layer runs one of three ways:

* ``int8`` — ≤ 8 bits in g_a/h_a/g_s under the int8 arithmetic: an x86 int8 convolution (stride-2
  deconvolutions as sub-pixel convolutions with phase-major outputs), per-tensor uint8 input,
  int8 weights without zero-points; its output uint8 at the next int8 layer's input quantizer
  (ReLU fused), or at the learned output quantizer or the range calibrated for the export where
  an int8 GDN reads it, else the float accumulators;
* ``exact`` — > 8 bits, h_s, or `--arithmetic exact`: the fake-quantized layer
  operation for operation (the learned per-channel input quantizer, clipped to 2^b − 1, and a
  float convolution on the fake-quantized weights);
* ``fp32`` — a float convolution.

A GDN/IGDN between two int8 layers runs in int8 (Γx² as an int8 1×1 convolution on a uint8 x²),
for which the export calibrates two ranges per GDN on its calibration photos: max x² and max
Γx² + β (the fake-quantized model at the profile, `calibrate_gdn`). Elsewhere GDN runs in float.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dqsearch.integer import subpixel
from dqsearch.integer.params import LayerQuant, input_params, u8_params
from dqsearch.quant.wrap import quantized_layers, set_profile
from dqsearch.units import FP32

from .quantize import phase_major, symmetric_int8

FORMAT, VERSION = "dqsearch-x86-int8", 2  # 2: optional out_q, learned_out; h_a int8
KINDS = ("int8", "exact", "fp32")
ACTS = ("none", "relu", "gdn", "igdn")
MAX_FILE_BYTES = 256 * 2**20  # our largest transform is ~1 MB; anything near this is not ours
MAX_META_BYTES = 2**20
MAX_LAYERS = 64


class ArtifactError(ValueError):
    """A transform file that is missing, corrupt or of another version: one line, re-export."""


# --- building ----------------------------------------------------------------------------------
def _act_of(m: nn.Module) -> str | None:
    if m.__class__.__name__ == "GDN":
        return "igdn" if m.inverse else "gdn"
    if isinstance(m, nn.ReLU):
        return "relu"
    return None


def layer_kind(transform: str, lq: LayerQuant, arithmetic: str) -> str:
    """int8, exact or fp32 for one layer (see the module docstring)."""
    if lq.bits == FP32:
        return "fp32"
    if arithmetic != "int8" or lq.container != "int8":
        return "exact"
    if lq.transposed:  # the x86 path runs deconvolutions as sub-pixel convs with symmetric padding
        if subpixel.plan(lq) is None or len(set(subpixel.rewrite(lq)[1])) != 1 or lq.stride[0] != 2:
            return "exact"
    return "int8"


@torch.no_grad()
def calibrate_gdn(model: nn.Module, profile: Mapping[str, int], images: Sequence[torch.Tensor]
                  ) -> dict[str, tuple[float, float]]:
    """(max x², max Γx² + β) at every GDN/IGDN's input over `images`, the model forced to `profile`
    (the fake-quantized model: what the int8 GDN's two uint8 quantizers must hold)."""
    seen: dict[str, list[float]] = {}

    def hook(name: str, gdn: nn.Module):
        c = gdn.beta.numel()
        gamma = gdn.gamma_reparam(gdn.gamma).reshape(c, c, 1, 1)
        beta = gdn.beta_reparam(gdn.beta)

        def record(_m, inputs):
            x2 = inputs[0] * inputs[0]
            norm = F.conv2d(x2, gamma, beta)
            r = seen.setdefault(name, [0.0, 0.0])
            r[0], r[1] = max(r[0], float(x2.max())), max(r[1], float(norm.max()))
        return record

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in model.named_modules()
               if m.__class__.__name__ == "GDN"]
    was_training = model.training
    model.eval()
    quantized = bool(quantized_layers(model))
    try:
        if quantized:
            set_profile(model, dict(profile), allow_fp32=True)
        for x in images:
            model(x)
    finally:
        for h in handles:
            h.remove()
        if quantized:
            set_profile(model, None)
        model.train(was_training)
    return {n: (v[0], v[1]) for n, v in seen.items()}


def _conv_entry(lq: LayerQuant) -> dict[str, Any]:
    return {"transposed": lq.transposed, "stride": list(lq.stride), "padding": list(lq.padding),
            "output_padding": list(lq.output_padding)}


def _int8_layer(lq: LayerQuant, out_range: tuple[float, float] | None, arrays: dict, key: str
                ) -> dict[str, Any]:
    conv, pads = subpixel.rewrite(lq) if lq.transposed else (lq, None)
    wq, w_scale = symmetric_int8(conv)
    bias = None if conv.bias is None else conv.bias.astype(np.float32)
    if lq.transposed:
        order = phase_major(len(wq))
        wq, w_scale = wq[order], w_scale[order]
        bias = None if bias is None else bias[order]
    out_q: list | None = None  # needed only where an int8 GDN reads the output (X86Transform)
    if lq.y_scale is not None:  # a learned output quantizer (--quantize-outputs)
        out_q = [float(lq.y_scale), int(lq.y_zero)]
    elif out_range is not None:
        out_q = [float(v) for v in u8_params(*out_range)]
        out_q[1] = int(out_q[1])
    sx, zx = input_params(lq)
    arrays[f"{key}.w"] = np.ascontiguousarray(wq)
    arrays[f"{key}.w_scale"] = w_scale
    if bias is not None:
        arrays[f"{key}.bias"] = np.ascontiguousarray(bias)
    return {"padding": [pads[0], pads[0]] if pads else list(lq.padding), "stride": list(conv.stride),
            "subpixel": bool(lq.transposed), "conv_kernel": list(wq.shape[2:]), "in_q": [float(sx), int(zx)],
            "in_max": int(lq.qmax) if lq.x_per_tensor else 255, "out_q": out_q,
            "learned_out": lq.y_scale is not None}


def _float_layer(lq: LayerQuant, arrays: dict, key: str) -> dict[str, Any]:
    """An exact layer as its learned integers (uint8/uint16) and (s_w, z_w): `Layer` recomputes
    W~ = s_w (q − z_w) with the same float32 operations as `params.layer_quant` (bit-identical, a
    quarter or half the bytes of float weights); an FP32 layer as its float weights."""
    if lq.bias is not None:
        arrays[f"{key}.bias"] = lq.bias.astype(np.float32)
    entry: dict[str, Any] = _conv_entry(lq)
    if not lq.quantized:
        arrays[f"{key}.weight"] = lq.weight.astype(np.float32)
        return entry
    arrays[f"{key}.w_int"] = lq.w_int.astype(np.uint8 if lq.qmax <= 255 else np.uint16)
    arrays[f"{key}.w_scale"] = lq.w_scale.astype(np.float32)
    arrays[f"{key}.w_zero"] = lq.w_zero.astype(np.float32)
    arrays[f"{key}.x_scale"] = lq.x_scale.astype(np.float32)
    arrays[f"{key}.x_zero"] = lq.x_zero.astype(np.float32)
    entry["qmax"] = int(lq.qmax)
    entry["y_q"] = None if lq.y_scale is None else [float(lq.y_scale), int(lq.y_zero)]
    return entry


def build_program(model: nn.Module, transform: str, layers: Mapping[str, LayerQuant], arithmetic: str,
                  ranges: Mapping[str, tuple[float, float]] | None,
                  gdn_ranges: Mapping[str, tuple[float, float]], abs_input: bool = False
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of one transform: the chain of `model.<transform>`'s children."""
    seq = model.get_submodule(transform)
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "transform": transform,
                            "abs_input": bool(abs_input), "layers": []}
    arrays: dict[str, np.ndarray] = {}
    for child, m in seq.named_children():
        name = f"{transform}.{child}"
        if name in layers:
            lq = layers[name]
            key = f"L{len(meta['layers'])}"
            kind = layer_kind(transform, lq, arithmetic)
            out_ch = lq.weight.shape[1] if lq.transposed else lq.weight.shape[0]
            in_ch = lq.weight.shape[0] if lq.transposed else lq.weight.shape[1]
            entry = {"name": name, "kind": kind, "bits": int(lq.bits), "in_channels": int(in_ch),
                     "out_channels": int(out_ch), "kernel": list(lq.weight.shape[2:]), "act": "none",
                     **(_int8_layer(lq, (ranges or {}).get(name), arrays, key) if kind == "int8"
                        else _float_layer(lq, arrays, key))}
            meta["layers"].append(entry)
            continue
        act = _act_of(m)
        if act is None or not meta["layers"] or meta["layers"][-1]["act"] != "none":
            raise ValueError(f"x86-int8 cannot deploy {name} ({type(m).__name__}): it runs chains of "
                             "convolutions each followed by at most one GDN, IGDN or ReLU")
        entry = meta["layers"][-1]
        entry["act"] = act
        if act in ("gdn", "igdn"):
            c = m.beta.numel()
            key = f"L{len(meta['layers']) - 1}"
            with torch.no_grad():
                arrays[f"{key}.gamma"] = m.gamma_reparam(m.gamma).reshape(c, c).float().numpy().copy()
                arrays[f"{key}.beta"] = m.beta_reparam(m.beta).float().numpy().copy()
            x2_max, norm_max = gdn_ranges.get(name, (0.0, 0.0))
            entry["gdn_ranges"] = [float(x2_max), float(norm_max)]
    if not meta["layers"]:
        raise ValueError(f"{transform} has no convolution to deploy")
    return meta, arrays


def save_program(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> int:
    """Write one transform as an uncompressed npz (the metadata as UTF-8 JSON bytes); returns its size."""
    blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, meta=blob, **arrays)
    return path.stat().st_size


# --- loading -----------------------------------------------------------------------------------
def _bad(path: Path, why: str) -> ArtifactError:
    return ArtifactError(f"{path} is corrupt or from another version ({why}): re-export this profile "
                         "(delete its folder)")


def _check(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Every array the chain needs, with the dtype and shape its metadata implies."""
    layers = meta.get("layers")
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise _bad(path, "no layer list")

    def want(key: str, dtype: str, shape: tuple[int, ...]) -> None:
        a = arrays.get(key)
        if a is None:
            raise _bad(path, f"array {key} is missing")
        if a.dtype.kind != dtype or a.shape != shape:
            raise _bad(path, f"array {key} is {a.dtype}{list(a.shape)}, expected kind {dtype} {list(shape)}")

    prev = None
    for i, e in enumerate(layers):
        try:
            kind, act, c_in, c_out = e["kind"], e["act"], int(e["in_channels"]), int(e["out_channels"])
            kh, kw = (int(k) for k in e["kernel"])
        except (KeyError, TypeError, ValueError) as err:
            raise _bad(path, f"layer {i}: {err!r}") from None
        if kind not in KINDS or act not in ACTS or min(c_in, c_out, kh, kw) < 1:
            raise _bad(path, f"layer {i}: kind {kind!r}, act {act!r}")
        if prev is not None and prev != c_in:
            raise _bad(path, f"layer {i} reads {c_in} channels, the layer before writes {prev}")
        k = f"L{i}"
        if kind == "int8":
            o = 4 * c_out if e.get("subpixel") else c_out
            try:
                ck = tuple(int(v) for v in e["conv_kernel"])
                sx, zx = float(e["in_q"][0]), int(e["in_q"][1])
                so, zo = (1.0, 0) if e["out_q"] is None else (float(e["out_q"][0]), int(e["out_q"][1]))
                bool(e["learned_out"])
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise _bad(path, f"layer {i}: {err!r}") from None
            if len(ck) != 2 or not (sx > 0 and so > 0 and 0 <= zx <= 255 and 0 <= zo <= 255):
                raise _bad(path, f"layer {i}: bad int8 quantizers")
            want(f"{k}.w", "i", (o, c_in, *ck))
            want(f"{k}.w_scale", "f", (o,))
            if f"{k}.bias" in arrays:
                want(f"{k}.bias", "f", (o,))
        else:
            shape = (c_in, c_out, kh, kw) if e.get("transposed") else (c_out, c_in, kh, kw)
            want(f"{k}.weight" if kind == "fp32" else f"{k}.w_int", "f" if kind == "fp32" else "u", shape)
            if f"{k}.bias" in arrays:
                want(f"{k}.bias", "f", (c_out,))
            if kind == "exact":
                for name, n in (("w_scale", c_out), ("w_zero", c_out), ("x_scale", c_in), ("x_zero", c_in)):
                    want(f"{k}.{name}", "f", (n,))
        if act in ("gdn", "igdn"):
            want(f"{k}.gamma", "f", (c_out, c_out))
            want(f"{k}.beta", "f", (c_out,))
        prev = c_out


def load_program(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a transform file, checked; a missing or bad file is one ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: re-export this profile (delete its folder)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _bad(path, f"{size} bytes, more than the {MAX_FILE_BYTES} a transform can take")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files or len(z.files) > 16 * MAX_LAYERS:
                raise _bad(path, "no metadata" if "meta" not in z.files else "too many arrays")
            blob = z["meta"]
            if blob.dtype != np.uint8 or blob.size > MAX_META_BYTES:
                raise _bad(path, "metadata is not UTF-8 JSON bytes")
            meta = json.loads(blob.tobytes().decode())
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise _bad(path, f"{type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise _bad(path, f"not a version-{VERSION} {FORMAT} transform")
    _check(path, meta, arrays)
    return meta, arrays
