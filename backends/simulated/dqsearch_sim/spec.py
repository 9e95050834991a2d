"""Device specs: TOML files describing an analytical accelerator, validated with clear errors.

Common keys: `name`, `description`, `kind` (bit-serial | bitfusion | roofline), `clock_mhz`,
`bits` (executable bit-widths, 32 = FP32), tables `[memory]` (bandwidth_gb_s), `[float]`
(where FP32 layers and the non-quantized ops run: macs_per_cycle, vector_ops_per_cycle,
bytes_per_element) and `[overhead]` (layer_us). Then one table named after the kind — see the
shipped files in `devices/` for every key with a comment.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dqsearch.units import FP32

KINDS = ("bit-serial", "bitfusion", "roofline")


class SpecError(ValueError):
    """A device file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Datapath:
    """One integer/float unit of a roofline NPU: it runs bit-widths up to `max_bits`."""

    name: str
    max_bits: int
    macs_per_cycle: float
    storage_bits: int  # bits per element in memory when packed at this datapath's width


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str
    clock_mhz: float
    bits: tuple[int, ...]
    bandwidth_gb_s: float
    float_macs_per_cycle: float
    vector_ops_per_cycle: float
    float_bytes: int
    layer_us: float
    float_name: str = "fp32"  # the container FP32 layers run in (an NPU may run them as fp16)
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # the kind's own table
    datapaths: tuple[Datapath, ...] = ()
    path: str | None = None


def _num(table: dict, key: str, where: str, positive: bool = True, default: float | None = None) -> float:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0) or v < 0:
        need = "a positive number" if positive else "a non-negative number"
        raise SpecError(f"{where}: key {key!r} must be {need}, got {v!r}")
    return float(v)


def _table(raw: dict, key: str, where: str) -> dict:
    t = raw.get(key)
    if not isinstance(t, dict):
        raise SpecError(f"{where}: table [{key}] is missing (see the shipped devices/*.toml)")
    return t


def parse_spec(raw: dict[str, Any], where: str = "device spec") -> DeviceSpec:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: key 'name' must be a non-empty string")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SpecError(f"{where}: key 'kind' must be one of {KINDS}, got {kind!r}")
    bits = raw.get("bits")
    if not isinstance(bits, list) or not bits or not all(isinstance(b, int) and (2 <= b <= 16 or b == FP32)
                                                         for b in bits):
        raise SpecError(f"{where}: key 'bits' must list bit-widths in 2..16 or 32, got {bits!r}")
    mem, flt = _table(raw, "memory", where), _table(raw, "float", where)
    params = _table(raw, kind, where)
    datapaths: tuple[Datapath, ...] = ()
    if kind in ("bit-serial", "bitfusion"):
        _num(params, "macs_per_cycle" if kind == "bit-serial" else "bricks_per_cycle", f"{where} [{kind}]")
        max_bits = int(_num(params, "max_bits", f"{where} [{kind}]"))
        too_wide = [b for b in bits if b != FP32 and b > max_bits]
        if too_wide:
            raise SpecError(f"{where}: bits {too_wide} exceed [{kind}] max_bits = {max_bits}")
    else:
        dps = params.get("datapath")
        if not isinstance(dps, list) or not dps:
            raise SpecError(f"{where}: [roofline] needs at least one [[roofline.datapath]] table")
        datapaths = tuple(sorted((Datapath(str(d.get("name", f"dp{i}")),
                                           int(_num(d, "max_bits", f"{where} [[roofline.datapath]] #{i}")),
                                           _num(d, "macs_per_cycle", f"{where} [[roofline.datapath]] #{i}"),
                                           int(_num(d, "storage_bits", f"{where} [[roofline.datapath]] #{i}",
                                                    default=d.get("max_bits"))))
                                  for i, d in enumerate(dps)), key=lambda d: d.max_bits))
        uncovered = [b for b in bits if b != FP32 and b > datapaths[-1].max_bits]
        if uncovered:
            raise SpecError(f"{where}: no [[roofline.datapath]] runs bits {uncovered}")
    return DeviceSpec(
        name=name, kind=kind, clock_mhz=_num(raw, "clock_mhz", where), bits=tuple(sorted(set(bits))),
        bandwidth_gb_s=_num(mem, "bandwidth_gb_s", f"{where} [memory]"),
        float_macs_per_cycle=_num(flt, "macs_per_cycle", f"{where} [float]"),
        vector_ops_per_cycle=_num(flt, "vector_ops_per_cycle", f"{where} [float]"),
        float_bytes=int(_num(flt, "bytes_per_element", f"{where} [float]", default=4)),
        float_name=str(flt.get("name", "fp32")),
        layer_us=_num(raw.get("overhead", {}), "layer_us", f"{where} [overhead]", positive=False,
                      default=0.0),
        description=str(raw.get("description", "")), params=dict(params), datapaths=datapaths,
        path=None)


def load_spec(path: str | Path) -> DeviceSpec:
    """Read and validate a device TOML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"device spec {path} does not exist; copy one of {sorted(shipped_specs())} "
                        f"from {devices_dir()} and edit it")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"device spec {path} is not valid TOML: {e}") from None
    spec = parse_spec(raw, str(path))
    return DeviceSpec(**{**spec.__dict__, "path": str(path)})


def devices_dir() -> Path:
    return Path(str(resources.files("dqsearch_sim") / "devices"))


def shipped_specs() -> dict[str, Path]:
    """Shipped device files by stem: bitfusion, npu, stripes."""
    return {p.stem: p for p in sorted(devices_dir().glob("*.toml"))}
