"""Latency tables: per-layer, per-bit-width latencies of one model on one device, and predictions.

A table (JSON, written by `dqsearch profile`) holds metadata, per layer the spec and a
`Measurement` per bit-width, the time of everything not quantized (`fixed`), and transition
costs: the extra time when a layer whose container is `a` feeds a layer whose container is `b`
(a dequantize, a layout change…). It predicts

    L(profile) = fixed + Σ_l T_l(b_l) + Σ_(l→l') X_ll'(c(b_l), c(b_l'))

and the same as a differentiable expectation over per-layer bit-width probabilities p_lk:

    E[L] = fixed + Σ_l Σ_k p_lk·T_l(b_k) + Σ_(l→l') p_lᵀ X_ll' p_l'

(the pairwise term is exact for independent per-layer choices, as the selectors make them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import write_json
from .schemas import LatencyTableSchema, SchemaError, read_text, validate
from .units import LayerSpec, Measurement, parse_input_shape

FORMAT = "dqsearch-latency-table"
VERSION = 1
STATISTICS = ("median", "mean", "min")


class LatencyTableError(ValueError):
    """A table that cannot be used; the message names the file, the field and the fix."""


def pair_key(a: str, b: str) -> str:
    return f"{a}>{b}"


@dataclass
class Transition:
    """Extra time (ms) when layer `src` in container a feeds layer `dst` in container b ≠ a."""

    src: str
    dst: str
    cost: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.src, "to": self.dst, "cost": {k: round(v, 6) for k, v in self.cost.items()}}


@dataclass
class LatencyTable:
    metadata: dict[str, Any]
    specs: dict[str, LayerSpec] = field(default_factory=dict)
    layers: dict[str, dict[int, Measurement]] = field(default_factory=dict)
    fixed: Measurement | None = None
    transitions: list[Transition] = field(default_factory=list)
    isolated: dict[str, dict[int, Measurement]] = field(default_factory=dict)
    context_runs: dict[str, Any] = field(default_factory=dict)  # a backend's raw in-graph runs
    path: Path | None = None

    # --- basic facts --------------------------------------------------------------------------
    @property
    def statistic(self) -> str:
        return self.metadata.get("statistic", "median")

    @property
    def containers(self) -> dict[int, str]:
        return {int(b): c for b, c in self.metadata.get("containers", {}).items()}

    @property
    def layer_names(self) -> list[str]:
        return list(self.specs)

    def bits(self, layer: str) -> list[int]:
        return sorted(self.layers.get(layer, {}))

    def has(self, layer: str, bits: int) -> bool:
        return bits in self.layers.get(layer, {})

    @property
    def complete(self) -> bool:
        wanted = [int(b) for b in self.metadata.get("bits", [])]
        return (self.fixed is not None and bool(self.specs)
                and all(self.has(n, b) for n in self.specs for b in wanted))

    def time(self, layer: str, bits: int) -> float:
        try:
            return self.layers[layer][self._measured_bits(layer, bits)].value(self.statistic)
        except KeyError:
            if layer not in self.layers:
                raise LatencyTableError(f"{self._where()}: no layer {layer!r}; it has "
                                        f"{self.layer_names}") from None
            raise LatencyTableError(f"{self._where()}: layer {layer} has no {bits}-bit entry; "
                                    f"measured bits are {self.bits(layer)}") from None

    def _measured_bits(self, layer: str, bits: int) -> int:
        """`bits` itself, or — on a backend where a container's bit-widths run the same program
        (`latency_by_container`) — a measured bit-width of the same container."""
        per = self.layers.get(layer, {})
        if bits in per or not self.metadata.get("latency_by_container"):
            return bits
        caps = self.metadata.get("capabilities", {})
        c = caps.get(str(bits))
        same = [b for b in per if c is not None and caps.get(str(b)) == c]
        return same[0] if same else bits

    def container(self, bits: int) -> str:
        c = {**{int(b): v for b, v in self.metadata.get("capabilities", {}).items()}, **self.containers}
        if bits not in c:
            raise LatencyTableError(f"{self._where()}: no container known for {bits} bits; "
                                    f"metadata.containers covers {sorted(c)}")
        return c[bits]

    def _where(self) -> str:
        return str(self.path) if self.path else "latency table"

    # --- predictions --------------------------------------------------------------------------
    def check_profile(self, profile: Mapping[str, int]) -> None:
        missing, extra = set(self.specs) - set(profile), set(profile) - set(self.specs)
        if missing or extra:
            raise LatencyTableError(f"bit profile does not match {self._where()}: missing "
                                    f"{sorted(missing)}, unknown {sorted(extra)}")

    def predict(self, profile: Mapping[str, int]) -> float:
        """End-to-end latency (ms) of a bit profile {layer: bits}, 32 meaning FP32."""
        return sum(self.breakdown(profile).values())

    def breakdown(self, profile: Mapping[str, int]) -> dict[str, float]:
        """The prediction split into fixed, layers and transitions (ms)."""
        self.check_profile(profile)
        if self.fixed is None:
            raise LatencyTableError(f"{self._where()}: field 'fixed' is not measured yet; finish "
                                    "profiling with `dqsearch profile --resume`")
        layers = sum(self.time(n, int(profile[n])) for n in self.specs)
        trans = 0.0
        for t in self.transitions:
            a, b = self.container(int(profile[t.src])), self.container(int(profile[t.dst]))
            if a != b:
                trans += t.cost.get(pair_key(a, b), 0.0)
        return {"fixed": self.fixed.value(self.statistic), "layers": layers, "transitions": trans}

    def expected_latency(
        self,
        probs: Mapping[str, Tensor],
        candidates: Mapping[str, Sequence[int]] | Sequence[int],
        fixed_bits: Mapping[str, int] | None = None,
    ) -> Tensor:
        """Differentiable E[latency] (ms) for per-layer probabilities over candidate bit-widths.

        `probs[name]` has shape [..., K] (e.g. [batch, K]); `candidates` gives each layer's K
        bit-widths (one list for all, or per layer); layers not in `probs` take their bit-width
        from `fixed_bits`. Returns a tensor of the batch shape (a scalar for [K] inputs).
        """
        fixed_bits = dict(fixed_bits or {})
        overlap = set(probs) & set(fixed_bits)
        if overlap:
            raise LatencyTableError(f"layers {sorted(overlap)} are given both probabilities and fixed bits")
        self.check_profile({**{n: 0 for n in probs}, **fixed_bits})
        if self.fixed is None:
            raise LatencyTableError(f"{self._where()}: field 'fixed' is not measured yet")
        ref = next(iter(probs.values()), None)
        kw = dict(dtype=ref.dtype if ref is not None else torch.float32,
                  device=ref.device if ref is not None else None)
        dist: dict[str, tuple[Tensor, list[int]]] = {}
        for name in self.specs:
            if name in probs:
                cands = list(candidates[name] if isinstance(candidates, Mapping) else candidates)
                p = probs[name]
                if p.shape[-1] != len(cands):
                    raise LatencyTableError(f"layer {name}: {p.shape[-1]} probabilities for "
                                            f"{len(cands)} candidates {cands}")
            else:
                cands, p = [int(fixed_bits[name])], torch.ones(1, **kw)
            dist[name] = (p, cands)
        total = torch.tensor(self.fixed.value(self.statistic), **kw)
        for name, (p, cands) in dist.items():
            t = torch.tensor([self.time(name, int(b)) for b in cands], **kw)
            total = total + (p * t).sum(-1)
        for tr in self.transitions:
            (pa, ca), (pb, cb) = dist[tr.src], dist[tr.dst]
            x = torch.tensor([[self._pair_cost(tr, a, b) for b in cb] for a in ca], **kw)
            if not x.any():
                continue
            total = total + torch.einsum("...i,ij,...j->...", pa, x, pb)
        return total

    def _pair_cost(self, tr: Transition, a_bits: int, b_bits: int) -> float:
        a, b = self.container(int(a_bits)), self.container(int(b_bits))
        return 0.0 if a == b else tr.cost.get(pair_key(a, b), 0.0)

    def expected_latency_of(self, model: torch.nn.Module) -> Tensor:
        """E[latency] of a wrapped model's last forward: dynamic layers' selector probabilities,
        fixed and FP32 layers at their bit-width."""
        from .quant.wrap import quantized_layers

        layers = quantized_layers(model)
        probs, cands, fixed = {}, {}, {}
        for name, m in layers.items():
            if m.mode == "dynamic":
                if m.last_probs is None:
                    raise RuntimeError(f"layer {name} has no probabilities: run a forward pass first")
                probs[name], cands[name] = m.last_probs, m.candidates
            else:
                fixed[name] = 32 if m.mode == "fp32" else m.candidates[0]
        return self.expected_latency(probs, cands, fixed)

    # --- building -----------------------------------------------------------------------------
    def set_layer(self, spec: LayerSpec, bits: int, m: Measurement, isolated: bool = False) -> None:
        self.specs.setdefault(spec.name, spec)
        (self.isolated if isolated else self.layers).setdefault(spec.name, {})[int(bits)] = m

    # --- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        layers = {}
        for name, spec in self.specs.items():
            latency = {str(b): m.to_dict() for b, m in sorted(self.layers.get(name, {}).items())}
            entry: dict[str, Any] = {"spec": spec.to_dict(), "latency": latency}
            if self.isolated.get(name):
                entry["isolated"] = {str(b): m.to_dict() for b, m in sorted(self.isolated[name].items())}
            layers[name] = entry
        return {"format": FORMAT, "version": VERSION, "metadata": self.metadata, "layers": layers,
                "fixed": self.fixed.to_dict() if self.fixed else None,
                "transitions": [t.to_dict() for t in self.transitions], "complete": self.complete,
                **({"context_runs": self.context_runs} if self.context_runs else {})}

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically (temporary file in the same folder, fsync, rename): never half a table."""
        self.path = write_json(path or self.path, self.to_dict(), indent=1)
        return self.path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency table {path} does not exist; create it with `dqsearch profile`")
        try:
            raw = json.loads(read_text(path, "latency table"))
        except SchemaError as e:
            raise LatencyTableError(str(e)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatencyTableError(f"{path} is not valid JSON ({e}); re-run `dqsearch profile`") from None
        table = cls.from_dict(raw, str(path))
        table.path = path
        return table

    @classmethod
    def from_dict(cls, raw: Any, where: str = "latency table") -> LatencyTable:
        """Validate every field; errors name it (`layers.g_a.0.latency.8.median: …`)."""
        try:
            return cls._from_dict(raw, where)
        except LatencyTableError:
            raise
        except ValueError as e:  # from Measurement / LayerSpec, already naming the field
            raise LatencyTableError(str(e)) from None

    @classmethod
    def _from_dict(cls, raw: Any, where: str) -> LatencyTable:
        def fail(field_: str, problem: str) -> LatencyTableError:
            return LatencyTableError(f"{where}: field {field_!r} {problem}")

        if not isinstance(raw, dict):
            raise LatencyTableError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise fail("format", f"must be {FORMAT!r}, got {raw.get('format')!r} (not a latency table?)")
        if raw.get("version") != VERSION:
            raise fail("version", f"must be {VERSION}, got {raw.get('version')!r}; re-profile with "
                       "this dqsearch")
        try:
            validate(LatencyTableSchema, raw, where)
        except SchemaError as e:
            raise LatencyTableError(str(e)) from None
        meta = raw.get("metadata")
        if not isinstance(meta, dict):
            raise fail("metadata", "is missing or not an object")
        try:
            parse_input_shape(meta["input_shape"])
        except ValueError as e:
            raise fail("metadata.input_shape", str(e).split(": ", 1)[-1]) from None
        for key, typ in (("backend", str), ("input_shape", list), ("containers", dict), ("bits", list)):
            if not isinstance(meta.get(key), typ):
                raise fail(f"metadata.{key}", f"is missing or not a {typ.__name__}")
        for b, c in meta["containers"].items():
            if not str(b).isdigit() or not isinstance(c, str):
                raise fail(f"metadata.containers.{b}", "must map a bit-width to a container name")
        if meta.get("statistic", "median") not in STATISTICS:
            raise fail("metadata.statistic", f"must be one of {STATISTICS}, got {meta.get('statistic')!r}")
        layers = raw.get("layers")
        if not isinstance(layers, dict):
            raise fail("layers", "is missing or not an object")
        table = cls(metadata=meta)
        for name, entry in layers.items():
            if not isinstance(entry, dict):
                raise fail(f"layers.{name}", "is not an object")
            spec = LayerSpec.from_dict(entry.get("spec"), f"{where}: layers.{name}.spec")
            if spec.name != name:
                raise fail(f"layers.{name}.spec.name", f"is {spec.name!r}, not {name!r}")
            table.specs[name] = spec
            for part, store in (("latency", table.layers), ("isolated", table.isolated)):
                values = entry.get(part, {} if part == "isolated" else None)
                if not isinstance(values, dict):
                    raise fail(f"layers.{name}.{part}", "is missing or not an object")
                for b, m in values.items():
                    if not str(b).isdigit():
                        raise fail(f"layers.{name}.{part}.{b}", "is not a bit-width")
                    store.setdefault(name, {})[int(b)] = Measurement.from_dict(
                        m, f"{where}: layers.{name}.{part}.{b}")
        if raw.get("fixed") is not None:
            table.fixed = Measurement.from_dict(raw["fixed"], f"{where}: fixed")
        runs = raw.get("context_runs", {})
        if not isinstance(runs, dict):
            raise fail("context_runs", "is not an object")
        table.context_runs = runs
        trs = raw.get("transitions", [])
        if not isinstance(trs, list):
            raise fail("transitions", "is not a list")
        for i, t in enumerate(trs):
            if not isinstance(t, dict) or not {"from", "to", "cost"} <= set(t):
                raise fail(f"transitions[{i}]", "needs from, to and cost")
            for end in ("from", "to"):
                if t[end] not in table.specs:
                    raise fail(f"transitions[{i}].{end}", f"names unknown layer {t[end]!r}")
            if not isinstance(t["cost"], dict) or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in t["cost"].values()):
                raise fail(f"transitions[{i}].cost", "must map 'a>b' container pairs to numbers (ms)")
            cost = {k: float(v) for k, v in t["cost"].items()}
            names = set(meta["containers"].values()) | set(meta.get("capabilities", {}).values())
            for k, v in cost.items():
                a, _, b = k.partition(">")
                if a not in names or b not in names or a == b:
                    raise fail(f"transitions[{i}].cost.{k}", f"must name two different containers of "
                               f"the table ({sorted(names)}) as 'a>b'")
                if v < 0 and meta.get("method") != "in-context":
                    raise fail(f"transitions[{i}].cost.{k}", f"is {v} ms: a measured transition cannot "
                               "save time (only in-context tables, whose costs are fitted, may be < 0)")
            table.transitions.append(Transition(t["from"], t["to"], cost))
        return table
