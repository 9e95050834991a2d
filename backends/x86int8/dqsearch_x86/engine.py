"""PyTorch's x86 quantized engine: whether it is there, and running under it without changing
process-wide state (torch's quantized engine and threads are restored after every call, as the
backend contract asks)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dqsearch.threads import torch_threads

ENGINE = "x86"


def unavailable() -> str | None:
    """Why this torch cannot run the x86 int8 engine, or None when it can."""
    engines = list(torch.backends.quantized.supported_engines)
    if ENGINE not in engines:
        return (f"x86-int8 needs PyTorch's x86 quantized engine, which torch {torch.__version__} here does "
                f"not have (it has {', '.join(engines) or 'none'}): deploy with --backend ort-cpu instead")
    return None


@contextmanager
def quiet() -> Iterator[None]:
    """torch ≥ 2.10 warns that quantized tensors are deprecated; they still run its int8 kernels."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


@contextmanager
def x86(threads: int | None = None) -> Iterator[None]:
    """The x86 engine (and `threads` torch threads, when given) for a block; the caller's restored."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    try:
        with quiet(), torch.no_grad():
            if threads is None:
                yield
            else:
                with torch_threads(threads):
                    yield
    finally:
        torch.backends.quantized.engine = before
