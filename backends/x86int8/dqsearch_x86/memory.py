"""glibc malloc policy for the x86-int8 runtime: keep freed memory instead of returning it.

Each layer's output is a fresh tensor (oneDNN's `qconv_pointwise` has no `out=`); at 768×512 the
first layers' are several MB each. By default glibc trims the heap when they are freed together,
so every call page-faults its buffers back in (1536 faults per 6 MB, ~1 ms a buffer: measured 4.5
ms of a 15 ms encoder). ONNX Runtime reuses its own arena for the same reason. This changes a
process-wide setting, so it is done explicitly, once, when a deployment loads a transform or the
backend is made (`apply`), said in the docs, and `DQSEARCH_X86_MALLOC=default` leaves glibc as is.
"""

from __future__ import annotations

import ctypes
import os

_APPLIED: list[bool] = []


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds (process-wide); False where there is no `mallopt`."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def wanted() -> bool:
    """Whether the runtime should set the policy (`DQSEARCH_X86_MALLOC` is not "default")."""
    return os.environ.get("DQSEARCH_X86_MALLOC", "keep").strip().lower() != "default"


def apply() -> bool:
    """`keep_freed_memory` once per process unless `DQSEARCH_X86_MALLOC=default`; whether it is set."""
    if not _APPLIED:
        _APPLIED.append(wanted() and keep_freed_memory())
    return _APPLIED[0]
