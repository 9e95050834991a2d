"""One construction path for backends, so `--threads` and `--option` reach every command's backend.

`profile`, `latency validate`, `study` (and its workers, through the study's stored options),
`compare` and `fmpq` all build their backend with `open_backend`. Options typed on the command
line (`--option KEY=VALUE`) become int when they parse as one, else float, else stay a string
(so `budget_seconds=5` arrives as the int 5, `clock=wall` as "wall", `context=false` as the
string "false"); dashes in keys become underscores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .base import Backend
from .registry import load_backend

#: threads a timed backend uses when the user gives none (what `--threads` help promises):
#: one thread gives reproducible tables on shared machines; the committed tables use one.
DEFAULT_BACKEND_THREADS = 1


def parse_value(text: str) -> int | float | str:
    """"8" → 8, "0.5" → 0.5, anything else (including "true", "llvm -mcpu=x") stays a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """`["repeats=30", "clock=wall"]` → {"repeats": 30, "clock": "wall"}."""
    opts: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        opts[key.strip().replace("-", "_")] = parse_value(value)
    return opts


def backend_options(threads: int | None = None, options: Mapping[str, Any] | None = None,
                    **flags: Any) -> dict[str, Any]:
    """Merge `--threads`, `--option` and dedicated flags (`--spec`, `--tune-trials`…; None = not
    given) into the keyword options of a backend factory. `--option threads=N` sets the backend's
    threads alone (it wins over `--threads`, which also sets torch's); a flag that contradicts the
    same `--option` is refused. Threads default to DEFAULT_BACKEND_THREADS."""
    opts = dict(options or {})
    if threads is not None and int(threads) < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    for key, value in flags.items():
        if value is None:
            continue
        if key in opts and opts[key] != value:
            raise ValueError(f"--{key.replace('_', '-')} {value} contradicts --option {key}={opts[key]}; "
                             "give one")
        opts[key] = value
    opts.setdefault("threads", threads if threads is not None else DEFAULT_BACKEND_THREADS)
    if isinstance(opts["threads"], bool) or not isinstance(opts["threads"], int) or opts["threads"] < 1:
        raise ValueError(f"threads must be a positive integer, got {opts['threads']!r}")
    return opts


def open_backend(name: str, threads: int | None = None, options: Mapping[str, Any] | None = None,
                 **flags: Any) -> Backend:
    """The backend `name` built with the user's options (see `backend_options`)."""
    return load_backend(name, **backend_options(threads, options, **flags))
