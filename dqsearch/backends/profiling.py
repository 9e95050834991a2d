"""Build a latency table from a backend: isolated layers, then the fixed part and graph context.

Everything is written to disk after every layer (atomically), so an interrupted run resumes
where it stopped (`resume=True`), measuring only what the file does not hold yet.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .. import __version__
from ..latency import LatencyTable, LatencyTableError, Transition
from .base import FP32, Backend, Measurement, ModelTrace, trace_model
from .identity import describe, differences, identity_of


def _bits_by_container(backend: Backend, bits: Sequence[int]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for b in sorted(bits):
        groups.setdefault(backend.container(b), []).append(b)
    return groups


def _check_resumable(table: LatencyTable, meta: Mapping[str, Any], trace: ModelTrace) -> None:
    where = table.path
    for key in ("backend", "input_shape", "model"):
        if key in meta and table.metadata.get(key) != meta[key]:
            raise LatencyTableError(
                f"{where} was measured with {key}={table.metadata.get(key)!r}, this run has "
                f"{meta[key]!r}: choose another output file or drop --resume")
    diffs = differences(identity_of(table.metadata), meta["identity"])
    if diffs:
        raise LatencyTableError(f"{where} was measured on another device or setting ({describe(diffs)}): "
                                "choose another output file or drop --resume")
    mismatched = [s.name for s in trace.layers if s.name in table.specs and table.specs[s.name] != s]
    if mismatched or (table.specs and set(table.specs) - set(trace.names)):
        raise LatencyTableError(f"{where} describes other layers ({mismatched or sorted(table.specs)}); "
                                "it belongs to another model or input size")


def profile_table(
    backend: Backend,
    model: nn.Module,
    input_shape: str | Sequence[int],
    bits: Sequence[int],
    output: str | Path,
    *,
    resume: bool = False,
    model_info: Mapping[str, Any] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> LatencyTable:
    """Measure every layer at every bit-width (and the fixed part, and transitions where the
    backend measures graph context), writing `output` after every layer."""
    from tqdm import tqdm

    output = Path(output)
    bits = sorted({int(b) for b in bits})
    groups = _bits_by_container(backend, bits)  # validates every bit-width against capabilities
    started = time.perf_counter()
    trace = trace_model(model, input_shape)
    meta: dict[str, Any] = {
        "backend": backend.name, **backend.metadata(), "identity": backend.identity(),
        "input_shape": list(trace.input_shape),
        "model": dict(model_info or {}), "bits": bits,
        "containers": {str(b): backend.container(b) for b in bits},
        "capabilities": {str(b): c for b, c in sorted(backend.capabilities().items())},
        "latency_by_container": backend.latency_by_container, "statistic": "median",
        "dqsearch": __version__, "host": platform.node(), "command": command,
    }
    if output.exists() and resume:
        table = LatencyTable.load(output)
        _check_resumable(table, meta, trace)
        old_bits = [int(b) for b in table.metadata.get("bits", [])]
        meta["bits"] = sorted(set(old_bits) | set(bits))
        meta["containers"] = {**table.metadata.get("containers", {}), **meta["containers"]}
        meta["profiling_seconds"] = table.metadata.get("profiling_seconds", 0.0)
        meta["date"] = table.metadata.get("date")
        meta["resumed_by"] = [*table.metadata.get("resumed_by", []), command]  # provenance
        meta["command"] = table.metadata.get("command")
        table.metadata.update(meta)
    elif output.exists():
        raise LatencyTableError(f"{output} exists: pass --resume to complete it or --force to start over")
    else:
        meta["date"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        table = LatencyTable(metadata=meta, path=output)
    missing = sorted(backend.required_bits() - set(int(b) for b in table.metadata["bits"]))
    if missing:  # before anything is measured
        raise LatencyTableError(f"{backend.name} builds its table from FP32 runs (the fixed part, or the "
                                f"anchors of in-context times): include {','.join(map(str, missing))} "
                                "in --bits")
    context_capable = backend.measures_context
    _switch_method(table, context_capable)
    table.metadata["method"] = "in-context" if context_capable else "isolated"
    for spec in trace.layers:
        table.specs.setdefault(spec.name, spec)
    elapsed_before = float(table.metadata.get("profiling_seconds") or 0.0)

    def save() -> None:
        table.metadata["profiling_seconds"] = round(elapsed_before + time.perf_counter() - started, 1)
        table.save(output)

    store = table.isolated if context_capable else table.layers
    todo = [(s, c, bs) for s in trace.layers for c, bs in groups.items()
            if not all(b in store.get(s.name, {}) for b in bs)]
    save()
    with tqdm(total=len(todo), desc=f"{backend.name} layers", unit="meas", disable=not progress) as bar:
        for spec, _container, bs in todo:
            known = next((store[spec.name][b] for b in bs if b in store.get(spec.name, {})), None)
            if backend.latency_by_container:
                m = known or backend.profile_layer(spec, bs[0])
                for b in bs:
                    table.set_layer(spec, b, m, isolated=context_capable)
            else:
                for b in bs:
                    if b not in store.get(spec.name, {}):
                        table.set_layer(spec, b, backend.profile_layer(spec, b), isolated=context_capable)
            bar.set_postfix_str(spec.name)
            bar.update()
            save()

    if context_capable:
        _profile_context(backend, model, trace, bits, table, save, progress)
    elif table.fixed is None:
        table.fixed = backend.profile_fixed(model, trace) or _fixed_from_model(backend, model, trace, table)
    save()
    return table


def _switch_method(table: LatencyTable, context_capable: bool) -> None:
    """Resuming a table in the other method keeps every layer timed alone: an isolated table's
    layer times become the in-context pass's isolated times, and an in-context table's isolated
    times become an isolated table's layers. What depended on the old method is dropped."""
    method = table.metadata.get("method")
    if context_capable and method == "isolated" and table.layers:
        table.isolated, table.layers = table.layers, {}
    elif not context_capable and method == "in-context":
        table.layers, table.isolated = table.isolated, {}
        table.transitions, table.context_runs = [], {}
    else:
        return
    table.fixed = None
    table.metadata.pop("context", None)


def _profile_context(backend: Backend, model: nn.Module, trace: ModelTrace, bits: Sequence[int],
                     table: LatencyTable, save, progress: bool) -> None:
    """Let the backend measure layers in their graph; its raw runs live in the table so a resumed
    run repeats none of them."""
    ctx = backend.profile_context(model, trace, bits, progress=progress, store=table.context_runs, save=save,
                                  isolated=table.isolated)
    for spec in trace.layers:
        for b in bits:
            c = backend.container(b)
            if c not in ctx.layers.get(spec.name, {}):
                raise RuntimeError(f"backend {backend.name} returned no in-context time for "
                                   f"{spec.name} in {c}")
            table.set_layer(spec, b, ctx.layers[spec.name][c])
    table.fixed = ctx.fixed
    table.transitions = [Transition(t["from"], t["to"], dict(t["cost"])) for t in ctx.transitions]
    table.metadata["context"] = ctx.info


def _fixed_from_model(backend: Backend, model: nn.Module, trace: ModelTrace,
                      table: LatencyTable) -> Measurement:
    """Whole model at FP32 minus the FP32 layers: what the layers alone do not account for."""
    fp32 = {s.name: FP32 for s in trace.layers}
    whole = backend.profile_model(model, fp32, trace.input_shape)
    if not all(table.has(n, FP32) for n in fp32):
        raise LatencyTableError("the fixed part needs FP32 layer times: include 32 in --bits")
    layers = sum(table.time(n, FP32) for n in fp32)
    return Measurement.from_samples([max(0.0, s - layers) for s in whole.samples])
