"""Targets: the host's (`-mcpu` detected) and configurable cross targets, always in the dict form.

TVM 0.27 rejects option strings like "llvm -mcpu=znver4"; `parse_target` accepts the dict form,
a JSON string of it, or the old string form (converted), so a user can pass either on the CLI.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

import tvm
from tvm.target import Target

#: the default tvm-arm target: 64-bit ARM with NEON (add "+dotprod" where the board has it)
ARM_TARGET: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def host_target(threads: int = 1) -> dict[str, Any]:
    """The local CPU as TVM's LLVM sees it (e.g. znver4 → AVX-512 VNNI kernels)."""
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return {"kind": "llvm", "mcpu": cpu, "num-cores": int(threads)}


def parse_target(value: str | dict[str, Any]) -> dict[str, Any]:
    """A target dict from a dict, its JSON text, or "llvm -mtriple=... -mattr=+neon,+dotprod"."""
    if isinstance(value, dict):
        spec = dict(value)
    else:
        text = value.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"target {value!r} is not valid JSON ({e})") from None
        else:
            parts = shlex.split(text)
            if not parts:
                raise ValueError("empty target: pass e.g. 'llvm -mtriple=aarch64-linux-gnu -mattr=+neon'")
            spec = {"kind": parts[0]}
            for p in parts[1:]:
                if not p.startswith("-") or "=" not in p:
                    raise ValueError(f"target option {p!r} in {value!r}: write -key=value")
                k, v = p.lstrip("-").split("=", 1)
                spec[k] = v.split(",") if k == "mattr" else v
    if isinstance(spec.get("mattr"), str):
        spec["mattr"] = spec["mattr"].split(",")
    try:
        Target(spec)
    except Exception as e:
        raise ValueError(f"TVM rejects target {spec}: {e}") from None
    return spec


def target_key(spec: dict[str, Any]) -> str:
    """A short stable name for a target: the tuning database folder and cache keys."""
    canon = json.dumps(spec, sort_keys=True)
    slug = "-".join(str(spec.get(k)) for k in ("mcpu", "mtriple") if spec.get(k)) or spec["kind"]
    return f"{slug}-{hashlib.sha1(canon.encode()).hexdigest()[:8]}"


def has_feature(spec: dict[str, Any], feature: str) -> bool:
    try:
        return bool(tvm.target.codegen.target_has_features(feature, Target(spec)))
    except Exception:
        return False
