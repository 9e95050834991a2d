"""Weights stored at their bit-widths: a b-bit layer's learned integers take b bits each.

The ONNX artifacts hold weights in their execution containers (int8, uint16, float32); this file is
the compact form whose size answers "how big is the model on disk", next to the paper's definition
FP32 size × b̄/32. Per-channel scales, zero-points and biases are stored as float32/int32 beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic import write_bytes, write_json
from .params import LayerQuant


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2^bits, `bits` bits each, little-endian bit order, padded to a byte."""
    v = values.astype(np.uint32).ravel()
    if v.size and int(v.max()) >= 2**bits:
        raise ValueError(f"value {int(v.max())} does not fit {bits} bits")
    planes = (v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits]
    return (planes.reshape(count, bits).astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(axis=1)


def write_packed(layers: Mapping[str, LayerQuant], folder: str | Path) -> dict[str, int]:
    """weights.bin (+ weights.json index); returns byte counts: packed weights, side data, total."""
    folder = Path(folder)
    blob, index, weight_bytes, side_bytes = bytearray(), {}, 0, 0
    for name, lq in layers.items():
        entry = {"bits": lq.bits, "shape": list(lq.weight.shape), "offset": len(blob)}
        if lq.quantized:
            data = pack_bits(lq.w_int, lq.bits)
            weight_bytes += len(data)
            blob += data
            side = [lq.w_scale.astype("<f4"), lq.w_zero.astype("<i4"), lq.x_scale.astype("<f4"),
                    lq.x_zero.astype("<i4")]
        else:
            data = lq.weight.astype("<f4").tobytes()
            weight_bytes += len(data)
            blob += data
            side = []
        if lq.bias is not None:
            side.append(lq.bias.astype("<f4"))
        entry["side_offset"] = len(blob)
        for a in side:
            blob += a.tobytes()
            side_bytes += a.nbytes
        index[name] = entry
    write_bytes(folder / "weights.bin", bytes(blob))
    write_json(folder / "weights.json", index)
    return {"weights": weight_bytes, "side": side_bytes, "file": len(blob)}


def read_packed_ints(folder: str | Path, name: str) -> np.ndarray:
    """One quantized layer's learned integers back from weights.bin (a check of the packing)."""
    folder = Path(folder)
    entry = json.loads((folder / "weights.json").read_text())[name]
    count = int(np.prod(entry["shape"]))
    data = (folder / "weights.bin").read_bytes()[entry["offset"]: entry["side_offset"]]
    return unpack_bits(data, entry["bits"], count).reshape(entry["shape"])
