"""Tensors kept between calls of the integer hyper-synthesis's fast path."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Workspace:
    """Tensors kept between calls, by name: a fresh multi-megabyte tensor per call comes from a new
    mmap whose page faults cost as much as the products (2.6 vs 3.7 ms at 768×512). One per thread."""

    def __init__(self) -> None:
        self._tensors: dict[object, torch.Tensor] = {}

    def get(self, key: object, shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
        """The tensor for `key` of this shape and dtype, and whether it is new (contents undefined)."""
        t = self._tensors.get(key)
        if t is not None and t.shape == tuple(shape) and t.dtype == dtype:
            return t, False
        t = self._tensors[key] = torch.empty(tuple(shape), dtype=dtype)
        return t, True
