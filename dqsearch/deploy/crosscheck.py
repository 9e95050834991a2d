"""Every engine decodes every engine's stream to the same latents, or refuses it by name.

Used by `benchmarks/cross_engine.py` (all 24 Kodak images, JSON committed) and the test on a
subset. Engines: PyTorch (`dqsearch.codec`) and every export given (`deploy.runtime.Runtime` of
ort-cpu, x86-int8, …); a stream from the integer h_s must decode to identical y_hat on all, and a
float-h_s stream must be refused by every other engine with one line naming its own (never decoded
to garbage).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..codec import BitstreamError, encode, latents
from ..data import list_images, load_image, pad_to_multiple, sample_images_dir
from ..models import load_checkpoint, resolve_checkpoint, save_checkpoint
from ..quant.wrap import QuantPolicy, calibrate, wrap

if TYPE_CHECKING:  # onnxruntime is needed only by whoever passes a Runtime
    from .runtime import Runtime


def engines(model: nn.Module, model_id: str, runtimes: Mapping[str, Runtime],
            float_runtimes: Mapping[str, Runtime] | None = None
            ) -> tuple[dict[str, Callable], dict[str, Callable]]:
    """(encoders, latent decoders) by engine name; encoders return bytes, decoders y_hat.
    `runtimes`: integer-h_s exports by engine name (ort-cpu, x86-int8, …); `float_runtimes`:
    exports made with --hyper float (their streams are float:<engine>), encoders "<engine>-float"."""
    encoders: dict[str, Callable] = {
        "torch": lambda x: encode(model, model_id, x).data,
        "torch-float": lambda x: encode(model, model_id, x, hyper="float:torch").data,
    }
    decoders: dict[str, Callable] = {"torch": lambda data: latents(model, model_id, data)[0]}
    for name, rt in runtimes.items():
        encoders[name] = lambda x, rt=rt: rt.encode(x)[0].data
        decoders[name] = lambda data, rt=rt: rt.latents(data)[0]
    for name, rt in (float_runtimes or {}).items():
        encoders[f"{name}-float"] = lambda x, rt=rt: rt.encode(x)[0].data
    return encoders, decoders


def cross_check(model: nn.Module, model_id: str, runtimes: Mapping[str, Runtime], image: torch.Tensor,
                float_runtimes: Mapping[str, Runtime] | None = None) -> dict:
    """One image: for each encoder, each decoder's outcome ("same" latents as the encoder's own
    engine, "different", or "refused: <message>")."""
    encoders, decoders = engines(model, model_id, runtimes, float_runtimes)
    out: dict = {}
    for enc_name, enc in encoders.items():
        data = enc(image)
        own = enc_name.removesuffix("-float")
        results: dict[str, torch.Tensor | str] = {}
        for dec_name, dec in decoders.items():
            try:
                results[dec_name] = dec(data)
            except BitstreamError as e:
                results[dec_name] = f"refused: {e}"
        ref = results[own]
        if isinstance(ref, str):
            raise AssertionError(f"{enc_name}'s own engine refused its stream: {ref}")
        row = {"bytes": len(data)}
        for dec_name, got in results.items():
            if dec_name == own:
                continue
            if isinstance(got, str):
                row[dec_name] = got
            else:
                diff = int((got != ref).sum())
                row[dec_name] = "same" if diff == 0 else f"different ({diff} latents)"
        out[enc_name] = row
    return out


def ptq_checkpoint(path: Path, quality: int = 3, bits: int = 8,
                   candidates: tuple[int, ...] | None = None) -> Path:
    """The embedded model at `quality`, wrapped at `bits` (or dynamic over `candidates`) and
    calibrated (PTQ), saved to `path`."""
    ck = load_checkpoint(resolve_checkpoint(f"embedded:{quality}"))
    policy = QuantPolicy.dynamic(candidates) if candidates else QuantPolicy.fixed(bits)
    model = wrap(ck.model.eval(), policy)
    crops = [pad_to_multiple(load_image(p).unsqueeze(0)[..., :256, :256], 64)[0]
             for p in list_images(sample_images_dir())[:2]]
    with torch.no_grad():
        calibrate(model, crops)
    model.update(force=True)
    save_checkpoint(path, model, ck.architecture, ck.arch_args, policy, {"ptq_from": f"embedded:{quality}"})
    return path
