"""The codec through exported artifacts: transforms run by the deployment part of the export's
backend (ort-cpu: ONNX Runtime sessions, see dqsearch_ort.deployment), entropy coding in CompressAI.

The bitstream is dqsearch's own (`dqsearch.codec`). Streams with integer entropy parameters (the
default of `dqsearch compress` for quantized ScaleHyperprior models, and of exports) decode here
and with `dqsearch decompress` to the same latents; a stream from one engine's float h_s is refused
by the other engine with a line naming the one that decodes it (its header says which). The
decoder picks the artifact of the header's precision profile; a profile not exported yet is built
from the stored source checkpoint on first use (a cache miss, timed and reported) and kept on disk
for the next file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..backends.base import Deployment
from ..codec import (
    PAD_MULTIPLE,
    BitstreamError,
    Encoded,
    Header,
    check_memory,
    pack,
    refuse_arithmetic,
    unpack,
)
from ..data import crop_padding, pad_to_multiple
from ..integer.int_entropy import integer_hyper, integer_unsupported
from ..streamcheck import Layout, LayoutError, check_stream, padded
from .artifact import ProfileArtifact, Store
from .stages import Stages


@dataclass
class Loaded:
    """One profile's transforms, loaded by the deployment on first use of each."""

    artifact: ProfileArtifact
    threads: int
    deployment: Deployment
    sessions: dict = field(default_factory=dict)

    def prepare(self, transforms: tuple[str, ...]) -> float:
        """Load the transforms (and the integer h_s) before anything is timed; returns seconds."""
        t0 = time.perf_counter()
        for t in transforms:  # "h_s_int" is the integer hyper-synthesis, the others the backend's
            if t == "h_s_int":
                self.artifact.integer_hyper()
            elif t not in self.sessions:
                self.sessions[t] = self.deployment.load(self.artifact.folder, t, self.threads)
        return time.perf_counter() - t0

    def run(self, transform: str, x: np.ndarray) -> np.ndarray:
        if transform not in self.sessions:
            self.prepare((transform,))
        return self.sessions[transform](np.ascontiguousarray(x, np.float32))


class Runtime:
    """Encode and decode with the artifacts in one export folder."""

    def __init__(self, folder: str | Path, threads: int = 1, build_missing: bool = True):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.store = Store.open(folder)
        self.threads = threads
        self.build_missing = build_missing
        self.entropy_bottleneck, self.gaussian_conditional = self.store.entropy_models()
        self._loaded: dict[tuple[int, ...], Loaded] = {}
        self.events: list[dict] = []  # cache misses and loads, for reporting

    @property
    def manifest(self) -> dict:
        return self.store.manifest

    @property
    def engine(self) -> str:
        """The backend running the transforms; a float-h_s stream is tagged `float:<engine>`."""
        return self.manifest["backend"]

    # --- artifacts ------------------------------------------------------------------------------
    def loaded(self, bits: tuple[int, ...], transforms: tuple[str, ...]) -> Loaded:
        """The profile's artifacts with sessions for `transforms`; a profile not on disk yet is
        built (a cache miss: its build and session-creation seconds go into `events`)."""
        bits = tuple(int(b) for b in bits)
        if bits not in self._loaded:
            t0 = time.perf_counter()
            art, built = self.store.profile(bits, build=self.build_missing)
            self._loaded[bits] = Loaded(art, self.threads, self.store.deployment)
            self.events.append({"profile": art.key, "cache": "miss" if built else "hit",
                                "seconds": time.perf_counter() - t0,
                                **({"build_seconds": art.info["build_seconds"]} if built else {})})
        lo = self._loaded[bits]
        missing = tuple(t for t in transforms if t not in lo.sessions and t != "h_s_int")
        if "h_s_int" in transforms:
            lo.prepare(("h_s_int",))
        if missing:
            self.events.append({"profile": lo.artifact.key, "sessions": list(missing),
                                "session_seconds": lo.prepare(missing)})
        return lo

    def _width(self) -> SimpleNamespace:
        """The exported model's N, for the memory estimate of `codec.check_memory`."""
        return SimpleNamespace(N=int(self.manifest.get("arch_args", {}).get("N", 192)))

    # --- hyperprior -----------------------------------------------------------------------------
    def _entropy_parameters(self, lo: Loaded, z_hat: torch.Tensor, hyper: str
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale-table indexes (and means, for mean-scale models) from z_hat."""
        if hyper == "integer":
            idx = self._integer_hyper(lo).indexes(z_hat.numpy())
            return torch.from_numpy(idx), None
        params = torch.from_numpy(lo.run("h_s", z_hat.numpy()))
        means = None
        if self.manifest["codec"]["means"]:
            params, means = params.chunk(2, 1)
        return self.gaussian_conditional.build_indexes(params), means

    def _integer_hyper(self, lo: Loaded):
        """The profile's integer h_s; an export made with --hyper float builds it from source.pt
        (so it still decodes integer streams, the portable default)."""
        if (lo.artifact.folder / "h_s_int.npz").is_file():
            return lo.artifact.integer_hyper()
        if lo.artifact._hyper is None:
            model = self.store.source().model
            profile = dict(zip(self.store.layer_names, lo.artifact.info["bits"], strict=True))
            why = integer_unsupported(model, profile)
            if why:
                raise BitstreamError(f"file uses integer entropy parameters, which this model cannot "
                                     f"compute: {why}")
            lo.artifact._hyper = integer_hyper(model, profile)
        return lo.artifact._hyper

    # --- codec ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image: torch.Tensor, bits: tuple[int, ...] | None = None) -> tuple[Encoded, dict]:
        """[1, 3, H, W] (or [3, H, W]) in [0, 1] → dqsearch bytes; `bits` defaults to the export's
        profile (fixed models) or the selector's choice for this image (dynamic models)."""
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"expected one RGB image, got a tensor of shape {tuple(image.shape)}")
        _, _, h, w = image.shape
        check_memory(self._width(), h, w, "image")
        t0 = time.perf_counter()
        st = Stages(self.threads)
        x, _ = pad_to_multiple(image, PAD_MULTIPLE)
        if bits is None and self.manifest["default_bits"] is None:
            with st("select"):  # a dynamic model: the selectors run in PyTorch
                bits = self.store.choose_profile(x)
        bits = tuple(bits) if bits is not None else self.store.choose_profile(x)
        hyper = "h_s_int" if self.manifest["options"]["hyper"] == "integer" else "h_s"
        lo = self.loaded(bits, ("g_a", "h_a", hyper))
        with st("g_a"):
            y = lo.run("g_a", x.numpy())
        with st("h_a"):
            z = torch.from_numpy(lo.run("h_a", y))
        with st("entropy"):
            z_strings = self.entropy_bottleneck.compress(z)
            z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        with st("h_s"):
            indexes, means = self._entropy_parameters(lo, z_hat, self.manifest["options"]["hyper"])
        with st("entropy"):
            y_strings = self.gaussian_conditional.compress(torch.from_numpy(y), indexes, means=means)
        arithmetic = "integer" if self.manifest["options"]["hyper"] == "integer" else f"float:{self.engine}"
        with st("write"):
            header = Header(self.manifest["model_id"], h, w, bits, arithmetic)
            data = pack(header, [y_strings, z_strings], z.shape[-2:])
        enc = Encoded(data, dict(zip(self.store.layer_names, bits, strict=True)),
                      time.perf_counter() - t0, h, w)
        return enc, {"profile": lo.artifact.key, "times": st.primary, "stages": st}

    @torch.no_grad()
    def latents(self, data: bytes) -> tuple[torch.Tensor, Header, dict]:
        """Entropy-decode bytes: (y_hat, header, {"loaded", "stages", "n_events"}) for `decode`."""
        st = Stages(self.threads)
        with st("read"):
            header, strings, shape = unpack(data)
        refuse_arithmetic(header.hyper, self.engine)
        if header.model_id != self.manifest["model_id"]:
            raise BitstreamError(f"file was written by model {header.model_id}, but this export is "
                                 f"model {self.manifest['model_id']}: use the export of that checkpoint")
        if len(header.profile_bits) != len(self.store.layer_names):
            raise BitstreamError(f"file has {len(header.profile_bits)} layer bit-widths, the model has "
                                 f"{len(self.store.layer_names)} quantized layers")
        hp = -(-header.height // PAD_MULTIPLE) * PAD_MULTIPLE
        wp = -(-header.width // PAD_MULTIPLE) * PAD_MULTIPLE
        z_symbols = int(self.entropy_bottleneck.channels) * (hp // 64) * (wp // 64)
        try:  # y's symbol count is only known from the indexes, so its length is checked first
            y_string, z_string = check_stream(Layout([hp // 64, wp // 64], (0, z_symbols)), wp, hp,
                                              strings, shape)
        except LayoutError as e:
            raise BitstreamError(str(e)) from None
        check_memory(self._width(), header.height, header.width, "bitstream")
        n_events = len(self.events)
        integer = header.hyper == "integer"
        lo = self.loaded(header.profile_bits, ("g_s",) if integer else ("h_s", "g_s"))
        if integer:  # loaded (or built from source.pt) before anything is timed
            self._integer_hyper(lo)
        try:
            with st("entropy"):
                z_hat = self.entropy_bottleneck.decompress([padded(z_string, z_symbols)], shape)
            with st("h_s"):
                indexes, means = self._entropy_parameters(lo, z_hat, "integer" if integer else "float")
            with st("entropy"):
                y_hat = self.gaussian_conditional.decompress([padded(y_string, indexes.numel())],
                                                             indexes, z_hat.dtype, means=means)
        except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError) as e:
            raise BitstreamError(f"entropy-coded payload does not decode ({type(e).__name__}: "
                                 f"{str(e)[:200]})") from None
        return y_hat, header, {"loaded": lo, "stages": st, "n_events": n_events}

    @torch.no_grad()
    def decode(self, data: bytes) -> tuple[torch.Tensor, Header, dict]:
        """Bytes → ([1, 3, H, W] in [0, 1], header, timings and cache events)."""
        y_hat, header, state = self.latents(data)
        lo, st = state["loaded"], state["stages"]
        with st("g_s"):
            x_hat = torch.from_numpy(lo.run("g_s", y_hat.numpy()))
        hp = -(-header.height // PAD_MULTIPLE) * PAD_MULTIPLE
        wp = -(-header.width // PAD_MULTIPLE) * PAD_MULTIPLE
        if tuple(x_hat.shape[-2:]) != (hp, wp):
            raise BitstreamError(f"decoded size {tuple(x_hat.shape[-2:])} does not match the header")
        _, pad = pad_to_multiple(torch.empty(1, 1, header.height, header.width), PAD_MULTIPLE)
        info = {"profile": lo.artifact.key, "times": st.primary, "stages": st,
                "events": self.events[state["n_events"]:]}
        return crop_padding(x_hat, pad).clamp(0, 1), header, info


class RuntimeCodec:
    """The runtime engine behind the one `dqsearch.codec.Codec` interface: an export folder run
    by its backend's deployment part. `last_info` keeps the timings of the last call."""

    def __init__(self, folder: str | Path, threads: int = 1, build_missing: bool = True):
        self.runtime = Runtime(folder, threads, build_missing)
        self.engine = self.runtime.engine
        self.model_id = self.runtime.manifest["model_id"]
        self.last_info: dict = {}

    def encode(self, image: torch.Tensor) -> Encoded:
        enc, self.last_info = self.runtime.encode(image)
        return enc

    def decode(self, data: bytes) -> tuple[torch.Tensor, Header]:
        x_hat, header, self.last_info = self.runtime.decode(data)
        return x_hat, header


def profile_of(runtime: Runtime, profile: Mapping[str, int]) -> tuple[int, ...]:
    """A {layer: bits} profile as the header's bit tuple, in the model's layer order."""
    return tuple(int(profile[n]) for n in runtime.store.layer_names)
