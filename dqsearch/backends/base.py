"""The backend plugin contract: what a backend measures, what it is given, and what it returns.

A backend turns one quantized convolution (a `LayerSpec`) at one bit-width into a latency
`Measurement`, and can time a whole model at a bit profile. Layer specs are read from a real
forward pass (hooks, `tracing`), so they hold the exact shapes a layer sees at a given input size,
wrapped (quantized) or not. Bit profiles map layer names to bit-widths, 32 meaning FP32. The
vocabulary lives in `dqsearch.units` and the tracing in `tracing`; both are re-exported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..units import (  # noqa: F401  (re-exported: plugins import the vocabulary from here)
    CONV,
    DECONV,
    FP32,
    MAX_INPUT_BATCH,
    MAX_INPUT_PIXELS,
    LayerSpec,
    Measurement,
    container_of,
    parse_input_shape,
)
from .tracing import (  # noqa: F401  (re-exported)
    ModelTrace,
    OpSpec,
    extract_layer_specs,
    float_model,
    trace_model,
    uniform_profile,
)


# --- the backend contract ---------------------------------------------------------------------
class Backend(ABC):
    """A device that runs quantized convolutions. Subclass it and register under the entry-point
    group `dqsearch.backends` (see docs/plugins.md); `dqsearch.backends.testing` checks the result.

    Subclasses set `name` (the registry name, e.g. "ort-cpu") and implement `capabilities`,
    `profile_layer` and `profile_model`. Optional hooks refine latency tables: `profile_fixed` (the
    time of everything not quantized) and `profile_context` (layer times measured inside the graph,
    plus transition costs between neighbouring layers of different containers). The optional
    deployment part, `deployment()`, builds and runs the transforms of an exported model.
    """

    name: str = "backend"
    #: True when bit-widths sharing a container run the very same program (only scales differ),
    #: so a table measures one bit-width per container and records it for the others.
    latency_by_container: bool = False

    @abstractmethod
    def capabilities(self) -> dict[int, str]:
        """Bit-widths this backend executes → the container each runs in, e.g. {6: "int8", 32: "fp32"}."""

    @abstractmethod
    def profile_layer(self, spec: LayerSpec, bits: int) -> Measurement:
        """Latency of one layer at `bits` (weights and input activations at that precision)."""

    @abstractmethod
    def profile_model(self, model: nn.Module, bit_profile: Mapping[str, int],
                      input_shape: str | Sequence[int]) -> Measurement:
        """End-to-end latency of the model's transforms with each layer at its profile bit-width."""

    def metadata(self) -> dict[str, Any]:
        """Device, versions, threads… recorded in every latency table this backend writes. Use the
        keys in `identity.IDENTITY_KEYS` (cpu, board, target, threads, versions, tuned…) for the
        facts that change latencies: they decide whether a study may reuse a table."""
        return {}

    def identity(self) -> dict[str, Any]:
        """What must match for a table measured by another instance to predict this one: by default
        the identity fields of `metadata()`. Override to add a fact metadata does not hold."""
        from .identity import identity_of

        return identity_of(self.metadata())

    def required_bits(self) -> set[int]:
        """Bit-widths a table must include. By default 32 when the fixed part is derived as
        profile_model(FP32) − Σ FP32 layers (no `profile_fixed`, no graph context); checked before
        anything is measured."""
        if not self.measures_context and type(self).profile_fixed is Backend.profile_fixed:
            return {FP32}
        return set()

    def profile_fixed(self, model: nn.Module, trace: ModelTrace) -> Measurement | None:
        """Time of everything that is not a quantized layer (GDN, activations, glue). None: unknown."""
        return None

    def profile_context(self, model: nn.Module, trace: ModelTrace, bits: Sequence[int], *,
                        progress: bool = False, store: dict | None = None,
                        save: Callable[[], None] | None = None,
                        isolated: Mapping[str, Mapping[int, Measurement]] | None = None
                        ) -> ContextProfile | None:
        """Layer times measured in their graph, fixed time and transition costs.

        Not overriding it means layers are independent (an isolated time is also the in-model
        time). `store` is a JSON-able dict kept in the table file: put raw runs there and call
        `save()` after each, so a resumed profile repeats none of them. `isolated` holds the
        table's layers timed alone (layer → bits → Measurement), for backends that anchor on them.
        """
        return None

    def deployment(self) -> Deployment | None:
        """The deployment part (`dqsearch export --backend NAME`), or None: this backend only
        profiles. A backend that deploys should time the very graphs it deploys."""
        return None

    # helpers shared by every backend
    @property
    def measures_context(self) -> bool:
        """Whether this backend overrides `profile_context` (layer times depend on neighbours)."""
        return type(self).profile_context is not Backend.profile_context

    def container(self, bits: int) -> str:
        caps = self.capabilities()
        if bits not in caps:
            raise ValueError(f"backend {self.name} cannot run {bits}-bit layers; it supports "
                             f"{sorted(caps)} (32 = FP32)")
        return caps[bits]

    def check_profile(self, names: Iterable[str], bit_profile: Mapping[str, int]) -> None:
        names = list(names)
        missing, extra = set(names) - set(bit_profile), set(bit_profile) - set(names)
        if missing or extra:
            raise ValueError(f"bit profile does not match the model: missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}")
        for n in names:
            self.container(int(bit_profile[n]))


@dataclass
class ContextProfile:
    """In-graph measurements: per layer per container latency, the fixed part, and the extra cost
    when a layer of container a feeds a layer of container b (a ≠ b), per connected layer pair."""

    layers: dict[str, dict[str, Measurement]]
    fixed: Measurement
    transitions: list[dict[str, Any]]  # {"from": l, "to": l2, "cost": {"int8>fp32": ms, …}}
    info: dict[str, Any] = field(default_factory=dict)


# --- the optional deployment part -------------------------------------------------------------
class Deployment(ABC):
    """How a backend builds and runs the transforms of an exported model (`dqsearch export`).

    dqsearch keeps the backend-neutral parts — the export folder and its manifest, the learned
    integer parameters (`dqsearch.integer.params.model_layers`), packed weights, the integer
    hyper-synthesis, entropy coding and the bitstream — and asks the deployment for two things:
    `build` writes one precision profile's executable transforms (g_a, h_a, h_s, g_s) into a
    folder, `load` turns one of them back into a function on numpy arrays. `min_psnr_db` is the
    tolerance it states: its decoder's image must be within that PSNR (dB) of the PyTorch codec's
    decode of the same stream; the conformance suite checks it (`testing.check_deployment`).
    """

    name: str = "backend"
    min_psnr_db: float = 30.0
    #: how the deployed transforms run GDN/IGDN, recorded in the export manifest ("gdn")
    gdn: str = "float, parametrisation folded to constants (no learned quantizer to run it in int8)"

    def versions(self) -> dict[str, Any]:
        """Library versions recorded in the export manifest."""
        return {}

    @abstractmethod
    def build(self, store: Any, model: nn.Module, layers: Mapping[str, Any], ranges: Mapping | None,
              folder: Path) -> tuple[dict[str, dict], dict[str, int]]:
        """Write the profile's transforms into `folder`. `store` is the export folder
        (`dqsearch.deploy.artifact.Store`: options, manifest), `model` the source model at the
        profile, `layers` its learned integer layers (name → `LayerQuant`), `ranges` the int8
        output ranges from calibration (or None). Returns (decision per transform, file sizes)."""

    @abstractmethod
    def load(self, folder: Path, transform: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        """One built transform as a function: float32 NCHW in, float32 NCHW out."""
