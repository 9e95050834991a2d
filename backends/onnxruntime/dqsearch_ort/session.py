"""ONNX Runtime sessions configured for honest timing, and the profiler's per-node times."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


@dataclass
class TimingOptions:
    """Warm-up runs, then at least `repeats` timed runs, continuing (up to `max_repeats`) until
    `min_seconds` have been spent, so small layers get enough samples for a stable median.

    `clock="thread"` times the CPU time of the calling thread instead of wall time. With one
    intra-op thread ONNX Runtime computes on the caller, so this is the run's latency without the
    time the OS gave other processes: on a shared machine wall times of the same graph swung
    107–197 ms between minutes while thread time stayed at 102–105 ms (CV 1%). With more threads
    the work runs on pool threads and only wall time is meaningful.
    """

    warmup: int = 3
    repeats: int = 10
    min_seconds: float = 0.3
    max_repeats: int = 200
    clock: str = "thread"

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")

    @property
    def now(self):
        return CLOCKS[self.clock]


@dataclass
class SessionConfig:
    providers: list = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 1

    def options(self, profile_prefix: str | None = None, optimized_path: str | None = None
                ) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.threads > 1:
            # pool threads that spin after a run take the cores the next session (g_a → h_a, h_s
            # → g_s) or another process needs: like OpenMP's active wait, see OMP_WAIT_POLICY
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if optimized_path:
            so.optimized_model_filepath = optimized_path
        return so

    def session(self, model: onnx.ModelProto, **kw) -> ort.InferenceSession:
        # WeightBiasQuantization would re-quantize an FP32 conv sitting between quantized
        # neighbours (its input is a DequantizeLinear, its output feeds a QuantizeLinear).
        return ort.InferenceSession(model.SerializeToString(), self.options(**kw),
                                    providers=self.providers,
                                    disabled_optimizers=["WeightBiasQuantization"])


def time_runs(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], opts: TimingOptions
              ) -> list[float]:
    """Milliseconds of each timed run."""
    for _ in range(opts.warmup):
        sess.run(None, feeds)
    samples: list[float] = []
    start, now = time.perf_counter(), opts.now
    while len(samples) < opts.max_repeats and (
            len(samples) < opts.repeats or time.perf_counter() - start < opts.min_seconds):
        t = now()
        sess.run(None, feeds)
        samples.append((now() - t) * 1e3)
    return samples


@dataclass
class ProfiledRuns:
    """Per timed run: its time and each node's kernel time (ms), plus the optimized graph.

    With the thread clock, node times (the profiler measures wall time) are scaled per run by
    thread time / wall time, spreading the run's CPU time over its nodes."""

    wall: list[float]
    nodes: list[dict[str, float]]
    op_types: dict[str, str]
    graph: onnx.ModelProto


def profile_runs(config: SessionConfig, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 warmup: int, repeats: int, clock: str = "wall") -> ProfiledRuns:
    """Run with ONNX Runtime's profiler on; split node events by run; drop the warm-ups."""
    with tempfile.TemporaryDirectory(prefix="dqsearch-ort-") as tmp:
        opt_path = os.path.join(tmp, "optimized.onnx")
        sess = config.session(model, profile_prefix=os.path.join(tmp, "prof"), optimized_path=opt_path)
        wall, timed = [], []
        for i in range(warmup + repeats):
            t, c = time.perf_counter(), CLOCKS[clock]()
            sess.run(None, feeds)
            if i >= warmup:
                wall.append((time.perf_counter() - t) * 1e3)
                timed.append((CLOCKS[clock]() - c) * 1e3)
        events = json.loads(Path(sess.end_profiling()).read_text())
        graph = onnx.load(opt_path, load_external_data=False)
        del sess
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(runs) != warmup + repeats:
        raise RuntimeError(f"profiler recorded {len(runs)} runs, expected {warmup + repeats}")
    bounds = [(r["ts"], r["ts"] + r["dur"]) for r in runs[warmup:]]
    nodes: list[dict[str, float]] = [{} for _ in bounds]
    op_types: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        op_types[name] = e.get("args", {}).get("op_name", "")
        for i, (lo, hi) in enumerate(bounds):
            if lo <= e["ts"] <= hi:
                nodes[i][name] = nodes[i].get(name, 0.0) + e["dur"] / 1e3
                break
    for i, (w, t) in enumerate(zip(wall, timed, strict=True)):
        scale = t / w if w > 0 else 1.0
        nodes[i] = {k: v * scale for k, v in nodes[i].items()}
    return ProfiledRuns(timed, nodes, op_types, graph)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0
