"""tvm-arm's cross-compilation: a layer built for aarch64 links into an aarch64 ELF library."""

import shutil
import struct

import pytest
import tvm
from dqsearch_tvm import build
from dqsearch_tvm.device import export_for
from dqsearch_tvm.layer import layer_module
from dqsearch_tvm.target import ARM_TARGET, parse_target

from dqsearch.backends.testing import conv_spec

CROSS = "aarch64-linux-gnu-g++"
EM_AARCH64 = 183


@pytest.mark.skipif(shutil.which(CROSS) is None,
                    reason=f"{CROSS} not installed (apt-get install g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("container", ["int8", "fp32"])
@pytest.mark.parametrize("op", ["conv", "deconv"])
def test_cross_compiled_library_is_aarch64(tmp_path, container: str, op: str) -> None:
    built = build.compile_module(layer_module(conv_spec("l", 8, 8, op), container),
                                 tvm.target.Target(ARM_TARGET))
    lib = export_for(built.executable, tmp_path / "layer.so", CROSS)
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", "not an ELF file"
    assert head[4] == 2 and head[5] == 1, "expected a 64-bit little-endian ELF"
    assert struct.unpack("<H", head[18:20])[0] == EM_AARCH64, "ELF machine is not aarch64"
    assert struct.unpack("<H", head[16:18])[0] == 3, "expected a shared object (ET_DYN)"


def test_target_forms() -> None:
    assert parse_target("llvm -mtriple=aarch64-linux-gnu -mattr=+neon,+dotprod") == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
    assert parse_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(ValueError, match="-key=value"):
        parse_target("llvm mcpu")
