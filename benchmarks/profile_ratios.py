"""Per-layer int8 / fp32 (and int16 / fp32) latency ratios from latency tables, as Markdown.

    python benchmarks/profile_ratios.py latency_models/ort-cpu/*.json [--json out.json]

For in-context tables both the in-graph times (what predictions use) and the isolated per-layer
times are shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dqsearch.latency import LatencyTable

RANGES = {"int8": (2, 8), "int16": (9, 16), "fp32": (32, 32)}


def representative(table: LatencyTable, container: str) -> int | None:
    """The widest bit-width of the container (or of its bit range, on devices naming it otherwise)."""
    bits = [int(b) for b, c in table.containers.items() if c == container]
    lo, hi = RANGES[container]
    bits = bits or [int(b) for b in table.containers if lo <= int(b) <= hi]
    return max(bits) if bits else None


def rows(table: LatencyTable) -> list[dict]:
    b8, b16, b32 = (representative(table, c) for c in ("int8", "int16", "fp32"))
    out = []
    for name, spec in table.specs.items():
        row = {"layer": name, "op": spec.op, "gmac": spec.macs / 1e9}
        for label, store in (("ctx", table.layers), ("iso", table.isolated)):
            per = store.get(name, {})
            if b32 in per:
                f = per[b32].median
                row[f"{label}_fp32_ms"] = f
                if b8 in per:
                    row[f"{label}_int8_ratio"] = per[b8].median / f
                if b16 in per:
                    row[f"{label}_int16_ratio"] = per[b16].median / f
        out.append(row)
    return out


def markdown(path: Path, table: LatencyTable) -> str:
    iso = bool(table.isolated)
    head = "| layer | op | GMAC | fp32 ms | int8/fp32 | int16/fp32 |" + (
        " isolated fp32 ms | isolated int8/fp32 |" if iso else "")
    lines = [f"### {path}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows(table):
        nan = float("nan")
        cells = [r["layer"], r["op"], f"{r['gmac']:.3f}", f"{r.get('ctx_fp32_ms', 0):.2f}",
                 f"{r.get('ctx_int8_ratio', nan):.2f}", f"{r.get('ctx_int16_ratio', nan):.2f}"]
        if iso:
            cells += [f"{r.get('iso_fp32_ms', 0):.2f}", f"{r.get('iso_int8_ratio', float('nan')):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    b8, b32 = representative(table, "int8"), representative(table, "fp32")
    if b8 and b32:
        names = table.layer_names
        p8, p32 = table.predict(dict.fromkeys(names, b8)), table.predict(dict.fromkeys(names, b32))
        by_group: dict[str, list[str]] = {}
        for n in names:
            by_group.setdefault(table.specs[n].group, []).append(n)
        lines += ["", f"Whole model: fp32 {p32:.1f} ms, int8 {p8:.1f} ms (ratio {p8 / p32:.2f}); "
                  f"fixed part {table.fixed.median:.1f} ms."]
        for g, ns in by_group.items():
            t8 = sum(table.time(n, b8) for n in ns)
            t32 = sum(table.time(n, b32) for n in ns)
            lines.append(f"- {g}: layers fp32 {t32:.1f} ms, int8 {t8:.1f} ms, ratio {t8 / t32:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args()
    everything = {}
    for p in map(Path, args.tables):
        t = LatencyTable.load(p)
        print(markdown(p, t))
        everything[str(p)] = rows(t)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1) + "\n")


if __name__ == "__main__":
    main()
