"""glibc malloc policy for the x86-int8 runtime: keep freed memory instead of returning it.

Each layer's output is a fresh tensor (oneDNN's `qconv_pointwise` has no `out=`); at 768×512 the
first layers' are several MB each. If glibc trims the heap or serves them by mmap, every call
page-faults its buffers back in. Whether that happens depends on the process's allocation history:
alone, the plugin's transforms ran the same both ways (torch_int8_{en,de}coder_x86_plugin*.json),
but next to ONNX Runtime sessions in one process (`benchmarks/deploy_speed.py`, idle) two of three
x86 decoders took 29.3–29.8 ms with glibc's default and 22.2–22.3 ms with this policy. So
`X86Deployment.load` sets it once per process (`apply`; process-wide: freed memory up to 1 GB stays
with the process); `DQSEARCH_X86_MALLOC=default` leaves glibc's policy alone.
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
    """Whether the runtime should set the policy (unless `DQSEARCH_X86_MALLOC=default`)."""
    return os.environ.get("DQSEARCH_X86_MALLOC", "keep").strip().lower() != "default"


def apply() -> bool:
    """`keep_freed_memory` once per process unless `DQSEARCH_X86_MALLOC=default`; whether it is set."""
    if not _APPLIED:
        _APPLIED.append(wanted() and keep_freed_memory())
    return _APPLIED[0]
