"""Re-register TVM's x86 VNNI dot-product intrinsic with the signature the bundled LLVM wants.

TVM 0.27 registers `dot_16x4_vnni` calling `llvm.x86.avx512.vpdpbusd.512` with int32x16
operands; LLVM ≥ 22 declares that intrinsic on <64 x i8> vectors, so every tensorized int8
build fails. Meta-schedule picks the intrinsic by name, so overriding the registration fixes
tuning without touching TVM. Importing `tvm.s_tir.tensor_intrin` is slow (tens of seconds on a
busy machine), so it happens once, in the tuning process only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys

import tvm

VNNI = "dot_16x4_vnni"


def _vnni_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            b_i8x64 = B.vload([0, 0], dtype="int8x64")
            c_i32x16 = C.vload([0], dtype="int32x16")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c_i32x16, a_u8x64, b_i8x64,
                dtype="int32x16")

    return impl


def _load_cpu_intrinsics() -> None:
    pkg = "tvm.s_tir.tensor_intrin"
    if pkg not in sys.modules:  # an unexecuted package object lets the submodules import alone
        spec = importlib.util.find_spec(pkg)
        sys.modules[pkg] = importlib.util.module_from_spec(spec)
    for name in ("x86", "arm_cpu"):
        importlib.import_module(f"{pkg}.{name}")


@functools.cache
def register_intrinsics() -> bool:
    """Register TVM's CPU tensor intrinsics and fix VNNI's for LLVM ≥ 22; True when overridden."""
    _load_cpu_intrinsics()
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc

    if tvm.target.codegen.llvm_version_major() < 22:
        return False
    TensorIntrin.register(VNNI, dot_product_16x4_u8i8i32_desc, _vnni_impl(), override=True)
    return True
