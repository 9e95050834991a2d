"""Exact wide-integer products from int8 ones: balanced base-256 digits ("limbs") and `torch._int_mm`.

A fixed-point weight of up to ~50 bits is a sum of balanced base-256 digits w = Σ_l d_l 256^l with
every d_l in [-128, 127]; so is an activation. Σ_k a_k w_k is then Σ_{j,l} 256^(j+l) Σ_k a_jk d_lk,
and each inner sum is an int8 × int8 product accumulated in int32, which oneDNN's VNNI kernels
compute ~20× faster per multiply-add than float64 BLAS — exactly, as long as K · 128 · 128 < 2^31
(`MAX_K`). Where `torch._int_mm` is missing or wrong (`int8_matmul_works`), callers keep their
float64 path, which gives the same integers.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

MAX_K = (2**31 - 1) // (128 * 128)  # |Σ_k a_k d_k| ≤ K · 2^14 stays inside int32


def digits(values: np.ndarray) -> np.ndarray:
    """Balanced base-256 digits of int64 `values` (|v| < 2^62): int8 [L, *values.shape] with
    Σ_l d_l 256^l = values, L the fewest digits that represent every value (at least one)."""
    rest = np.array(values, dtype=np.int64)  # a copy: shifted in place below
    count = 1
    if rest.size:
        lo, hi = int(rest.min()), int(rest.max())
        while not (-128 * (256**count - 1) // 255 <= lo and hi <= 127 * (256**count - 1) // 255):
            count += 1
    out = np.empty((count, *rest.shape), np.int8)
    for i in range(count):
        rest += 128  # d = ((v + 128) mod 256) - 128 ∈ [-128, 127]; (v - d) / 256 = (v + 128) >> 8
        np.subtract(rest & 255, 128, out=out[i], casting="unsafe")
        rest >>= 8
    return out


def digit_count(lo: int, hi: int) -> int:
    """How many balanced base-256 digits every integer in [lo, hi] needs (the range holds 0)."""
    return len(digits(np.array([min(lo, 0), max(hi, 0)])))


def int8_matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """int8 [m, k] × int8 [k, n] → exact int32 [m, n] (`torch._int_mm`), into `out` if given; pads m
    to ≥ 17 rows, the smallest some versions accept (k and n are the caller's to pad to multiples of 8)."""
    m = a.shape[0]
    if m <= 16:
        a = torch.cat([a, a.new_zeros(17 - m, a.shape[1])])
        got = torch._int_mm(a, b)[:m]
        return got if out is None else out.copy_(got)
    return torch._int_mm(a, b) if out is None else torch._int_mm(a, b, out=out)


@functools.cache
def int8_matmul_works() -> bool:
    """Whether this torch has `_int_mm` on CPU and it multiplies exactly (checked on one small product
    with extreme and random values; any error means no)."""
    if not hasattr(torch, "_int_mm"):
        return False
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (24, 64), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (64, 16), generator=gen, dtype=torch.int8)
    a[0], b[:, 0] = -128, -128
    try:
        got = int8_matmul(a, b)
    except (RuntimeError, NotImplementedError):
        return False
    exact = a.to(torch.int64) @ b.to(torch.int64)
    return got.dtype == torch.int32 and torch.equal(got.to(torch.int64), exact)
