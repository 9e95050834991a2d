"""Which device a latency table describes, and whether a backend instance would measure the same.

A table is only valid for the device, thread count, runtime versions and tuning it was measured
with (the committed ort-cpu table, made on an AMD EPYC, predicts 35% of random profiles within
±10% on an Intel Xeon). Backends report these facts in `metadata()`; the identity is the subset
of fields that change latencies, recorded in every table as `metadata.identity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: metadata fields that identify the measuring device; timing options (repeats…) are not in it
#: `graph` names the graph builder that timed a table (ort-cpu: {"builder": "deployment", "version":
#: 1, ...}); tables timed on another builder (or before the key existed) then differ in `graph`
IDENTITY_KEYS = ("device", "cpu", "cpu_id", "board", "target", "provider", "threads", "versions", "tuned",
                 "tune_trials", "spec_sha256", "graph")


def identity_of(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The identity a table or a backend's metadata carries (None-valued fields left out). Tables
    written before identities were recorded get theirs from the same metadata fields."""
    if isinstance(metadata.get("identity"), Mapping):
        return dict(metadata["identity"])
    return {k: metadata[k] for k in IDENTITY_KEYS if metadata.get(k) is not None}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "target":  # a target is one value, shown whole
            out.update(_flat(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    def norm(v: Any) -> Any:  # JSON turns tuples into lists
        return list(v) if isinstance(v, tuple) else v

    return norm(a) == norm(b)


def differences(table: Mapping[str, Any], backend: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, table's value, backend's value) for every identity field that differs."""
    t, b = _flat(table), _flat(backend)
    return [(k, t.get(k), b.get(k)) for k in sorted(set(t) | set(b)) if not _same(t.get(k), b.get(k))]


def describe(diffs: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    """`cpu: table 'AMD EPYC', this backend 'Intel Xeon'; threads: …`."""
    parts = [f"{k}: table {a!r}, this backend {b!r}" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more")
    return "; ".join(parts)
