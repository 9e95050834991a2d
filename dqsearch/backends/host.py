"""The machine a measurement ran on, for table metadata and benchmark records."""

from __future__ import annotations

import functools
import platform


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what `platform` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: SIMD extensions that decide int8/fp32 kernel speed (and which kernels a runtime picks)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "asimd",
             "asimddp", "sve", "i8mm")


@functools.cache
def cpu_signature() -> str:
    """Vendor, family and model numbers and the relevant SIMD extensions, e.g. "AuthenticAMD
    family 26 model 2 [avx2 avx512_vnni …]": hypervisors often show only "AMD EPYC" as the model
    name, for Zen 4 and Zen 5 alike, whose int8 kernels run at different speeds."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.machine()} {platform.processor()}".strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    vendor = fields.get("vendor_id") or fields.get("CPU implementer", platform.machine())
    family = fields.get("cpu family") or fields.get("CPU architecture", "?")
    model = fields.get("model") or fields.get("CPU part", "?")
    return f"{vendor} family {family} model {model} [{' '.join(f for f in ISA_FLAGS if f in flags)}]"
