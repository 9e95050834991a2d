"""Workflows the CLI (and scripts) call: one function each, taking what a command line parsed.

`find_or_profile_table` is the table lookup-or-profile step that `dqsearch study`, `dqsearch fmpq`
and benchmark files share; `config_default` reads a config dataclass's own default, so a command
that exposes a field as a flag does not write the default a second time.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any


def config_default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (its default_factory called)."""
    f = cls.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is dataclasses.MISSING:
        raise ValueError(f"{cls.__name__}.{name} has no default")
    return f.default


def find_or_profile_table(backend_name: str, model, info: dict, shape: tuple[int, ...],
                          options: dict | None, progress: bool) -> Path:
    """A table measured on the device this backend instance would measure (same identity: CPU or
    board, threads, runtime versions, tuning), from the user cache, a plugin or latency_models/;
    else profile one into the user cache. Tables of another device are named, with the field that
    differs, before profiling."""
    from .backends.options import open_backend
    from .backends.profiling import profile_table
    from .backends.tables import cache_path, find_table

    backend = open_backend(backend_name, options=options)
    found = find_table(backend, model, shape)
    if found.path is not None:
        print(f"using {found.path} ({found.where}): measured on this device and setting")
        return found.path
    for line in found.report():
        print(f"dqsearch: warning: {line}", file=sys.stderr)
    slug = info["architecture"] + "".join(f"-{k}{v}" for k, v in sorted(info.get("arch_args", {}).items()))
    path = cache_path(backend, slug, shape)
    hint = " (pass --latency-table PATH to use another table anyway)" if found.other_device else ""
    print(f"no {backend_name} table for this model at {shape[2]}x{shape[3]} on this device: profiling into "
          f"{path}{hint}")
    bits = sorted(backend.capabilities())
    path.parent.mkdir(parents=True, exist_ok=True)
    profile_table(backend, model, shape, bits, path, resume=path.exists(), model_info=info, progress=progress)
    return path
