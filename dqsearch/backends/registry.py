"""Find backends through the `dqsearch.backends` entry-point group and remember why one fails.

An entry point names a factory: a `Backend` subclass or a function returning one, called with
the options the user gave (`threads=`, `spec=`, …). Loading is lazy, so one broken plugin (a
missing CUDA provider, an import error) never hides the others: `dqsearch backends` shows why.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .base import Backend

GROUP = "dqsearch.backends"


class BackendError(RuntimeError):
    """A backend that is unknown or cannot be loaded; the message says why and what to do."""


class OptionRequired(BackendError):
    """Raised by a backend factory that cannot start without an option (e.g. `--spec PATH`):
    listed as usable-with-options, not as broken."""


@dataclass
class BackendInfo:
    """One registered backend as `dqsearch backends` shows it."""

    name: str
    distribution: str | None
    target: str
    backend: Backend | None = None
    error: str | None = None
    needs_options: bool = False

    @property
    def ok(self) -> bool:
        return self.backend is not None


def _entry_points() -> dict[str, EntryPoint]:
    eps = {}
    for ep in entry_points(group=GROUP):
        eps.setdefault(ep.name, ep)
    return eps


def available_backends() -> list[str]:
    """Registered backend names (installed distributions), loaded or not."""
    return sorted(_entry_points())


def _describe(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, BackendError) else f"{type(e).__name__}: {text}"


def load_backend(name: str, **options: Any) -> Backend:
    """Instantiate backend `name` with the given options (None values are dropped)."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none — install a plugin, e.g. pip install -e backends/simulated"
        raise BackendError(f"unknown backend {name!r}; installed backends: {known}")
    options = {k: v for k, v in options.items() if v is not None}
    try:
        factory = eps[name].load()
    except Exception as e:  # an import error inside the plugin
        raise BackendError(f"backend {name!r} ({eps[name].value}) cannot be imported: {_describe(e)}") from e
    try:
        backend = factory(**options)
    except TypeError as e:
        raise BackendError(f"backend {name!r} does not accept options {_unaccepted(factory, options)}: "
                           f"{e}") from e
    except BackendError:
        raise
    except OptionRequired:
        raise
    except Exception as e:
        raise BackendError(f"backend {name!r} cannot start: {_describe(e)}") from e
    if not isinstance(backend, Backend):
        raise BackendError(f"backend {name!r}: {eps[name].value} returned {type(backend).__name__}, "
                           "not a dqsearch.backends.Backend")
    return backend


def _unaccepted(factory: Any, options: dict[str, Any]) -> list[str]:
    """The options a factory's signature does not take (all of them when it cannot tell)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return sorted(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return sorted(options)
    return sorted(k for k in options if k not in params) or sorted(options)


def inspect_backends() -> list[BackendInfo]:
    """Try to load every registered backend with default options; record failures, never raise."""
    infos = []
    for name, ep in sorted(_entry_points().items()):
        dist = ep.dist.name if getattr(ep, "dist", None) is not None else None
        info = BackendInfo(name, dist, ep.value)
        try:
            info.backend = load_backend(name)
            info.backend.capabilities()
        except OptionRequired as e:
            info.error, info.needs_options = str(e), True
        except Exception as e:
            info.backend, info.error = None, _describe(e)
            info.needs_options = isinstance(e.__cause__, OptionRequired)
        infos.append(info)
    return infos
