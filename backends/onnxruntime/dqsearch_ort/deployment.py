"""The ort-cpu deployment part: each transform of an exported profile as an ONNX graph with the
learned quantization as explicit QDQ (`onnx_graph`), run in a CPU session configured like the
ort-cpu latency backend. A deconvolution runs as Conv + PixelShuffle where it runs in int8
(`--subpixel auto`, `subpixel_rule`; `--subpixel timed` times both forms side by
side and keeps the faster). The ort-cpu backend profiles its latency tables on graphs built here
(`qdq.transform_graph` calls `transform_graph`), so a table times what is deployed.

dqsearch core calls `OrtDeployment.build` for each profile it exports and `OrtDeployment.load`
for each transform it runs (`dqsearch.deploy.artifact` / `runtime`); see docs/plugins.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from dqsearch.backends import Deployment
from dqsearch.deploy.modules import transform_module
from dqsearch.integer.params import LayerQuant
from dqsearch.integer.subpixel import plan

from .onnx_graph import OPSET, export, quantize_graph, shuffles_in_uint8
from .session import SessionConfig

TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")
MARGIN = 0.03  # a rewrite must be at least 3% faster to be kept


def session(model: onnx.ModelProto | str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session configured like the ort-cpu latency backend (WeightBiasQuantization disabled,
    sequential, `threads` intra-op threads)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return SessionConfig(providers=["CPUExecutionProvider"], threads=int(threads)).session(model)


def timer(threads: int) -> Callable[[], float]:
    """Thread CPU time with one thread (immune to other jobs' load), wall time otherwise."""
    return time.thread_time if threads == 1 else time.perf_counter


# --- keep a rewrite only where it helps ---------------------------------------------------------
def time_variants(variants: Mapping[str, onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                  threads: int = 1, rounds: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median ms per variant; variants alternate within each round so they share machine state
    (ratios stay meaningful on a loaded machine). Thread CPU time with one thread, else wall."""
    sessions = {k: session(m, threads) for k, m in variants.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, dict(feeds))
    now = timer(threads)
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = now()
            s.run(None, dict(feeds))
            samples[k].append((now() - t) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def choose(times: Mapping[str, float], baseline: str, candidate: str) -> bool:
    """Whether `candidate` beats `baseline` by the margin."""
    return times[candidate] < (1 - MARGIN) * times[baseline]


# --- graphs -------------------------------------------------------------------------------------
def _in_channels(lq: LayerQuant) -> int:
    return lq.weight.shape[0] if lq.transposed else lq.weight.shape[1]


def _decide_feeds(transform: str, layers: Mapping[str, LayerQuant], hw: tuple[int, int]) -> dict:
    first = next(lq for n, lq in layers.items() if n.startswith(transform + "."))
    factor = {"g_a": 1, "h_a": 16, "h_s": 64, "g_s": 16}[transform]
    shape = (1, _in_channels(first), max(1, hw[0] // factor), max(1, hw[1] // factor))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return {"x": x if transform == "g_a" else np.round(3 * x)}


def transform_graph(model: torch.nn.Module, transform: str, layers: Mapping[str, LayerQuant],
                    arithmetic: str, ranges: dict | None, subpixel: bool | Collection[str],
                    abs_input: bool = False, int8_weights: str = "exact") -> onnx.ModelProto:
    """One transform as a deployable ONNX graph (float twin → export → learned QDQ). `subpixel`:
    every deconvolution in sub-pixel form (True), none, or the named layers."""
    channels = _in_channels(next(lq for n, lq in layers.items() if n.startswith(transform + ".")))
    mod, convs = transform_module(model, transform, dict(layers), use_subpixel=subpixel,
                                  abs_input=abs_input)
    graph = quantize_graph(export(mod, channels), convs, arithmetic, ranges, int8_weights)
    return shuffles_in_uint8(graph) if subpixel else graph  # (an empty collection: no rewrite)


def subpixel_rule(transform: str, layers: Mapping[str, LayerQuant], arithmetic: str) -> list[str]:
    """`--subpixel auto`: the deconvolutions of `transform` that run in int8 arithmetic, each of
    which becomes Conv + PixelShuffle (and so gets QLinearConv: ONNX Runtime has no integer
    ConvTranspose); the others stay ConvTranspose. Timed at export (`--subpixel timed`), this is
    what won on every measured CPU (int8 g_s 98 vs 162 ms; FP32/exact equal within ±5%, either
    way with load; the tiny h_s flips with noise). Being per layer, a layer's form depends only on
    its own precision, which is what the ort-cpu latency table (`qdq`, built with this rule)
    can time additively."""
    if arithmetic != "int8":
        return []
    return [n for n, lq in layers.items() if n.startswith(transform + ".") and lq.transposed
            and lq.container == "int8" and plan(lq) is not None]


def _graph(store: Any, model: torch.nn.Module, layers: Mapping[str, LayerQuant],
           ranges: dict | None, transform: str) -> tuple[onnx.ModelProto, dict]:
    """The transform's ONNX graph, with the sub-pixel rewrite where it is kept."""
    opts, codec = store.options, store.manifest["codec"]
    abs_input = transform == "h_a" and codec["abs_h_a"]
    arith = opts.arithmetic_of(transform)

    def build(sub: bool) -> onnx.ModelProto:
        return transform_graph(model, transform, layers, arith, ranges, sub, abs_input, opts.int8_weights)

    rewritable = any(n.startswith(transform + ".") and plan(lq) is not None for n, lq in layers.items())
    if not rewritable or opts.subpixel == "off":
        return build(False), {"subpixel": False, "reason": "no deconvolution" if not rewritable else "off"}
    if opts.subpixel == "on":
        return build(True), {"subpixel": True, "reason": "on"}
    if opts.subpixel == "auto":
        rewritten = subpixel_rule(transform, layers, arith)
        return build(rewritten), {"subpixel": bool(rewritten), "layers": rewritten,
                                  "reason": "the int8 deconvolutions"}
    variants = {"deconv": build(False), "subpixel": build(True)}
    times = time_variants(variants, _decide_feeds(transform, layers, opts.decide_input), opts.threads)
    keep = choose(times, "deconv", "subpixel")
    return variants["subpixel" if keep else "deconv"], {
        "subpixel": keep, "reason": f"timed at {opts.decide_input[0]}x{opts.decide_input[1]}",
        "times_ms": times}


class OrtDeployment(Deployment):
    """Deployment to ONNX Runtime's CPUExecutionProvider (`dqsearch export --backend ort-cpu`)."""

    name = "ort-cpu"
    min_psnr_db = 30.0  # int8 QLinearConv with per-tensor activation scales: close, not bit-exact

    def versions(self) -> dict[str, Any]:
        return {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "opset": OPSET}

    def build(self, store: Any, model: torch.nn.Module, layers: Mapping[str, LayerQuant],
              ranges: Mapping | None, folder: Path) -> tuple[dict[str, dict], dict[str, int]]:
        decisions, sizes = {}, {}
        for t in TRANSFORMS:
            graph, decisions[t] = _graph(store, model, layers, ranges, t)
            onnx.save(graph, str(folder / f"{t}.onnx"))
            sizes[f"{t}.onnx"] = (folder / f"{t}.onnx").stat().st_size
        return decisions, sizes

    def load(self, folder: Path, transform: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        path = Path(folder) / f"{transform}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: re-export this profile (delete its folder)")
        sess = session(path, threads)
        return lambda x: sess.run(None, {"x": x})[0]
