"""glibc malloc policy for the x86-int8 runtime: keep freed memory instead of returning it (opt-in).

Each layer's output is a fresh tensor (oneDNN's `qconv_pointwise` has no `out=`); at 768×512 the
first layers' are several MB each. If glibc trims the heap when they are freed together, every
call page-faults its buffers back in (the encoder prototype once measured 4.5 ms of a 15 ms encoder lost so).
Measured through the plugin (torch_int8_{en,de}coder_x86_plugin*.json, deploy_pipeline_x86*.json)
glibc's own dynamic thresholds already keep them after the first calls: the same times within
noise both ways. So the runtime leaves this process-wide setting alone unless asked:
`DQSEARCH_X86_MALLOC=keep` makes `X86Deployment.load` set it once (`apply`).
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
    """Whether the runtime should set the policy (`DQSEARCH_X86_MALLOC=keep`)."""
    return os.environ.get("DQSEARCH_X86_MALLOC", "default").strip().lower() == "keep"


def apply() -> bool:
    """`keep_freed_memory` once per process if `DQSEARCH_X86_MALLOC=keep`; whether it is set."""
    if not _APPLIED:
        _APPLIED.append(wanted() and keep_freed_memory())
    return _APPLIED[0]
