"""Comparison tables (Markdown, CSV, JSON) and figures (RD curves, per-layer bit heatmaps)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from .evaluate import bd_overlap, bd_rate  # noqa: E402

LOW_OVERLAP = 0.75  # bjontegaard's own warning threshold


def curve(results: dict[str, Any], metric: str = "psnr-rgb") -> tuple[list[float], list[float]]:
    return list(results["results"]["bpp"]), list(results["results"][metric])


def summary_rows(methods: dict[str, dict[str, Any]], anchor: str, bd_method: str = "pchip") -> list[dict]:
    """One row per method: BD-rate vs the anchor, bits, nominal speedup 32/b̄, sizes."""
    if anchor not in methods:
        raise ValueError(f"anchor method {anchor!r} has no results; methods are {sorted(methods)}")
    rows = _rows(methods, anchor, bd_method)
    ref_row = next(r for r in rows if r["method"] == anchor)
    for r in rows:  # measured speedup against the anchor, same run and threads
        for k in [k for k in r if k.startswith("measured_ms:")]:
            if ref_row.get(k) and r.get(k):
                r["measured_speedup:" + k.split(":", 1)[1]] = ref_row[k] / r[k]
    return rows


def _rows(methods: dict[str, dict[str, Any]], anchor: str, bd_method: str) -> list[dict]:
    ref = curve(methods[anchor])
    rows = []
    for name, res in methods.items():
        pts = res["points"]
        bits = [p["mean"]["avg_bits"] for p in pts]
        wbits = [p["mean"]["avg_bits_weighted"] for p in pts]
        b = _mean(bits)
        bd, note, overlap = (0.0, 0.0), "", 1.0
        if name != anchor:
            # Every point as it falls on this dataset, sorted by rate: a study's front is chosen on
            # validation images, and dropping the points the test set shows dominated would be
            # choosing on the test set. A curve that is not monotonic here gets n/a and the reason.
            test = curve(res)
            try:
                bd = bd_rate(ref, test, bd_method)
                overlap = bd_overlap(ref, test)
                if overlap < LOW_OVERLAP:
                    note = (f"the curves share only {overlap:.0%} of their PSNR range "
                            f"(bjontegaard warns below {LOW_OVERLAP:.0%})")
            except ValueError as e:  # e.g. a single point, or not monotonic: n/a, and say why
                bd, note, overlap = (math.nan, math.nan), str(e), math.nan
        row = {
            "method": name,
            "bd_rate_pct": bd[0],
            "bd_psnr_db": bd[1],
            "bd_overlap_pct": 100 * overlap,
            "avg_bits": b if b is not None else 32.0,
            "avg_bits_weighted": _mean(wbits) if _mean(wbits) is not None else 32.0,
            "bpp_range": f"{min(p['mean']['bpp'] for p in pts):.3f}-{max(p['mean']['bpp'] for p in pts):.3f}",
            "size_fp32_kb": _mean([p.get("size", {}).get("fp32") for p in pts]) / 1024,
            "size_packed_kb": _mean([p.get("size", {}).get("packed") for p in pts]) / 1024,
        }
        row["nominal_speedup"] = 32.0 / row["avg_bits"]
        for kind in ("predicted_ms", "measured_ms"):
            backends = {b for p in pts for b in p.get("latency", {}).get(kind, {})}
            for b in sorted(backends):
                row[f"{kind}:{b}"] = _mean([p["latency"][kind].get(b) for p in pts])
        if note:
            row["note"] = note
        rows.append(row)
    return rows


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return sum(v) / len(v) if v else None


COLUMNS = [
    ("method", "Method", "{}"),
    ("bd_rate_pct", "BD-rate vs anchor (%)", "{:+.2f}"),
    ("bd_psnr_db", "BD-PSNR (dB)", "{:+.3f}"),
    ("bd_overlap_pct", "BD overlap (%)", "{:.0f}"),
    ("avg_bits", "avg bits (layer mean)", "{:.2f}"),
    ("avg_bits_weighted", "avg bits (param-weighted)", "{:.2f}"),
    ("nominal_speedup", "nominal speedup 32/b̄", "{:.2f}x"),
    ("size_packed_kb", "size packed (KiB)", "{:.0f}"),
    ("size_fp32_kb", "size FP32 (KiB)", "{:.0f}"),
    ("bpp_range", "bpp range", "{}"),
    ("note", "note", "{}"),
]


def _fmt(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


def _latency_columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    keys = list(dict.fromkeys(k for r in rows for k in r if ":" in k))
    label = {"predicted_ms": "predicted ms", "measured_ms": "measured ms",
             "measured_speedup": "measured speedup"}
    return [(k, f"{label[k.split(':')[0]]} ({k.split(':', 1)[1]})",
             "{:.2f}x" if k.startswith("measured_speedup") else "{:.2f}") for k in keys]


def markdown_table(rows: Sequence[dict], columns=None) -> str:
    columns = columns or [*COLUMNS[:-2], *_latency_columns(rows), *COLUMNS[-2:]]
    cols = [c for c in columns if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c[2], r.get(c[0])) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot_rd(methods: dict[str, dict[str, Any]], path: str | Path, title: str,
            metric: str = "psnr-rgb") -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, res in methods.items():
        x, y = curve(res, metric)
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel("bits per pixel (from file bytes)")
    ax.set_ylabel("PSNR (dB)" if metric == "psnr-rgb" else metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bits_heatmap(point: dict[str, Any], path: str | Path, title: str) -> None:
    """DynaQuant's Figure 6: the bits chosen per layer (columns) for each image (rows)."""
    images = point["images"]
    layers = list(images[0]["profile"])
    data = [[img["profile"][n] for n in layers] for img in images]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers)), max(3, 0.28 * len(images))))
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
    ax.set_yticks(range(len(images)), [i["image"] for i in images], fontsize=7)
    fig.colorbar(im, ax=ax, label="bits")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(trials: Sequence[dict], fp32: tuple[list[float], list[float]] | None, path: str | Path,
                title: str) -> None:
    """All trials in the (bpp, PSNR) plane: feasible vs infeasible, the feasible front, FP32."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for ok, style in ((True, dict(c="tab:blue", label="feasible")),
                      (False, dict(c="tab:gray", marker="x", label="over the latency budget"))):
        pts = [(t["bpp"], t["psnr"]) for t in trials if t["feasible"] == ok and t["bpp"] is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=22, **style)
    front = sorted((t["bpp"], t["psnr"]) for t in trials if t["front"] and t["feasible"])
    if front:
        ax.plot(*zip(*front, strict=True), c="tab:red", marker="o", label="feasible Pareto front")
    if fp32:
        ax.plot(fp32[0], fp32[1], c="black", ls="--", marker="s", label="FP32 family")
    ax.set_xlabel("bits per pixel (validation split, from file bytes)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_profiles(profiles: dict[str, dict[str, int]], path: str | Path, title: str) -> None:
    """Per-layer bits of chosen models (rows) — which layers each model keeps wide."""
    names = list(profiles)
    layers = list(next(iter(profiles.values())))
    data = [[profiles[n][layer] for layer in layers] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers)), max(2.5, 0.35 * len(names) + 1.2)))
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="bits")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_search_progress(progress: Sequence[dict], startup: int, lmbda: float, path: str | Path,
                         title: str) -> None:
    """Best feasible RD cost and feasible hypervolume after each trial, with the random start-up
    trials shaded: the search earns its keep where the curves improve after the shading."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    xs = [p["trial"] for p in progress]
    a.step(xs, [p["best_feasible_rd_cost"] if p["best_feasible_rd_cost"] is not None else math.nan
                for p in progress], where="post", marker="o")
    b.step(xs, [p["hypervolume"] for p in progress], where="post", marker="o", c="tab:green")
    a.set_ylabel(f"best feasible RD cost (λ = {lmbda:.4g})")
    b.set_ylabel("feasible front hypervolume")
    for ax in (a, b):
        ax.axvspan(-0.5, startup - 0.5, color="0.9", label=f"random start ({startup} trials)")
        ax.set_xlabel("trial number")
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
