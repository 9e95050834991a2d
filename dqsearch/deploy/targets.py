"""Which backends can be deployed to: every installed backend whose `deployment()` returns a
`Deployment` (the optional deployment part of the backend contract, see docs/plugins.md). There
is no list here: a plugin that implements the part is a deployment target, one that does not is
refused with one line naming those that are."""

from __future__ import annotations

from ..backends.base import Deployment
from ..backends.registry import BackendError, available_backends, load_backend


def deployment_for(name: str) -> Deployment:
    """The deployment part of backend `name`; a one-line ValueError when it has none."""
    try:
        backend = load_backend(name)
    except BackendError as e:
        raise ValueError(f"cannot deploy to {name}: {e} (pip install the plugin that provides it, e.g. "
                         "pip install -e backends/onnxruntime for ort-cpu)") from None
    deployment = backend.deployment()
    if deployment is None:
        others = [t for t in deploy_targets() if t != name]
        raise ValueError(f"backend {name} profiles latency but cannot deploy (it implements no "
                         f"deployment part); backends that deploy: {', '.join(others) or 'none installed'}")
    return deployment


def deploy_targets() -> list[str]:
    """Installed backends that implement the deployment part (each loaded with default options)."""
    out = []
    for name in available_backends():
        try:
            if load_backend(name).deployment() is not None:
                out.append(name)
        except Exception:  # noqa: BLE001  (a backend that cannot start deploys nowhere)
            continue
    return out
