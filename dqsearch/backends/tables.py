"""Where latency tables are found for a study, and which one fits the backend it would measure with.

Search order: the user cache (tables this user profiled, `$DQSEARCH_CACHE`, default
`~/.cache/dqsearch/latency_models/<backend>/`), tables that plugins ship (entry-point group
`dqsearch.latency_tables`), then the project's own `latency_models/` (measured on its build VM).
A table is used only when its model layers, input size, completeness and device identity match;
a table that differs only in identity is reported with the differing field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from .base import Backend
from .identity import describe, differences, identity_of

TABLES_GROUP = "dqsearch.latency_tables"
SOURCE_TREE = Path(__file__).resolve().parents[2] / "latency_models"


def cache_dir() -> Path:
    """dqsearch's user cache: $DQSEARCH_CACHE, else $XDG_CACHE_HOME/dqsearch, else ~/.cache/dqsearch."""
    if os.environ.get("DQSEARCH_CACHE"):
        return Path(os.environ["DQSEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dqsearch"


def plugin_table_roots() -> list[tuple[str, Path]]:
    """(distribution, folder) of every `dqsearch.latency_tables` entry point. The value names a
    package (its folder is used), or a callable / attribute giving a folder; the folder holds
    `<backend>/*.json` like latency_models/. A broken entry point is skipped, never fatal."""
    roots = []
    for ep in entry_points(group=TABLES_GROUP):
        try:
            obj: Any = ep.load()
            if isinstance(obj, ModuleType):
                obj = resources.files(obj)
            elif callable(obj):
                obj = obj()
            roots.append((ep.dist.name if ep.dist else ep.name, Path(str(obj))))
        except Exception:  # a plugin's broken table hook must not stop a study
            continue
    return roots


def search_roots() -> list[tuple[str, Path]]:
    """(where, folder) in search order."""
    return [("user cache", cache_dir() / "latency_models"), *plugin_table_roots(),
            ("project tables", SOURCE_TREE)]


def identity_slug(identity: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cache_path(backend: Backend, model_slug: str, shape: tuple[int, ...]) -> Path:
    """Where a table profiled for this backend instance goes (one file per device identity)."""
    return (cache_dir() / "latency_models" / backend.name /
            f"{model_slug}-{shape[2]}x{shape[3]}-{identity_slug(backend.identity())}.json")


@dataclass
class TableSearch:
    """The outcome: the table to use (or None) and the tables passed over because of their device."""

    path: Path | None = None
    where: str | None = None
    other_device: list[tuple[Path, str]] = field(default_factory=list)

    def report(self) -> list[str]:
        return [f"{p} was measured on another device or setting ({why})" for p, why in self.other_device]


def find_table(backend: Backend, model: nn.Module, shape: tuple[int, ...]) -> TableSearch:
    """The first complete table for `backend`'s name, `model`'s layers and `shape` whose device
    identity equals `backend.identity()`."""
    from ..latency import LatencyTable, LatencyTableError
    from ..latency_term import check_table_matches

    want = backend.identity()
    found = TableSearch()
    for where, root in search_roots():
        folder = root / backend.name
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if ".validation" in path.name:
                continue
            try:
                table = LatencyTable.load(path)
                if (table.metadata.get("backend") != backend.name or not table.complete
                        or tuple(table.metadata.get("input_shape", ())) != tuple(shape)):
                    continue
                check_table_matches(table, model)
            except (LatencyTableError, ValueError, OSError):
                continue
            diffs = differences(identity_of(table.metadata), want)
            if diffs:
                found.other_device.append((path, describe(diffs)))
                continue
            found.path, found.where = path, where
            return found
    return found
