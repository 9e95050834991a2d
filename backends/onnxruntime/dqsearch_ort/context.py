"""Layer latencies in graph context, and transition costs between neighbouring layers.

Timing each layer alone misses what a precision boundary costs inside a graph: dequantize
nodes, NCHWc/NHWC layout transposes, fused or unfused activations. So each transform is run
whole under ONNX Runtime's profiler at a design of container profiles, and every executed node is
attributed to a *segment*: the convolution of a layer plus all nodes downstream of it up to the
next layers (graph-walk on the optimized model), or the transform's head before any layer.

A segment's time depends on its own container and on those of the layers it feeds:

    S_l(P) = A_l(c_l) + Σ_(t ∈ succ(l)) X_lt(c_l, c_t),   X_lt(c, c) = 0

A_l(c) is measured directly (every layer at c: the uniform profiles), X by least squares over the
mixed profiles. The design is c_i = (a + b·i) mod k for all a, b (it puts every ordered pair of
containers on every pair of consecutive layers) plus a few random profiles for the other edges.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .session import ProfiledRuns

HEAD = "_head"


def layer_edges(model: onnx.ModelProto, layers: Mapping[str, str]) -> dict[str, list[str]]:
    """succ[l]: layers reached from l's conv output through non-layer nodes only; succ[HEAD]:
    layers reached from the graph input that way. Computed on the FP32 export."""
    node_to_layer = {node: layer for layer, node in layers.items()}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def reach(tensors: Sequence[str]) -> list[str]:
        found, seen, queue = [], set(), deque(tensors)
        while queue:
            for n in consumers.get(queue.popleft(), []):
                if n.name in seen:
                    continue
                seen.add(n.name)
                if n.name in node_to_layer:
                    if node_to_layer[n.name] not in found:
                        found.append(node_to_layer[n.name])
                else:
                    queue.extend(n.output)
        return found

    by_name = {n.name: n for n in model.graph.node}
    succ = {layer: reach(by_name[node].output) for layer, node in layers.items()}
    succ[HEAD] = reach([i.name for i in model.graph.input])
    return succ


CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvTranspose", "NhwcConv", "NhwcFusedConv",
            "ConvInteger", "QLinearConvTranspose"}


def _walk(start: onnx.NodeProto, step, accept):
    """Breadth-first from `start` along `step(node)` neighbours; first node `accept` maps to a value."""
    seen, queue = {start.name}, deque([start])
    while queue:
        for n in step(queue.popleft()):
            if n.name in seen:
                continue
            seen.add(n.name)
            found = accept(n)
            if found is not None:
                return found
            queue.append(n)
    return None


def _links(model: onnx.ModelProto):
    producer = {t: n for n in model.graph.node for t in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    up = lambda n: [producer[t] for t in n.input if t in producer]  # noqa: E731
    down = lambda n: [c for t in n.output for c in consumers.get(t, [])]  # noqa: E731
    return up, down


def label(model: onnx.ModelProto, layers: set[str]) -> onnx.ModelProto:
    """Rename every node and tensor `<segment>@…` (segment: a layer, or HEAD before any layer).

    ONNX Runtime names fused nodes after one of the original nodes or output tensors, so after
    optimization each node still tells which segment it came from. A node's segment is the
    nearest layer convolution upstream; constants (weight dequantization) go with their user.
    """
    up, down = _links(model)
    inputs = {i.name for i in model.graph.input}

    def conv_layer(n: onnx.NodeProto) -> str | None:
        layer = n.name[: -len("@conv")] if n.name.endswith("@conv") else None
        return layer if layer in layers else None

    def has_input(n: onnx.NodeProto) -> bool:
        return any(t in inputs for t in n.input) or bool(
            _walk(n, up, lambda m: True if any(t in inputs for t in m.input) else None))

    seg = {}
    for n in model.graph.node:
        seg[n.name] = (conv_layer(n) or _walk(n, up, conv_layer)
                       or (HEAD if has_input(n) else _walk(n, down, conv_layer) or HEAD))
    rename = {}
    for i, n in enumerate(model.graph.node):
        for j, t in enumerate(n.output):
            rename[t] = f"{seg[n.name]}@t{i}.{j}"
    for i, n in enumerate(model.graph.node):
        if not conv_layer(n):
            n.name = f"{seg[n.name]}@n{i}"
        n.input[:] = [rename.get(t, t) for t in n.input]
        n.output[:] = [rename[t] for t in n.output]
    for o in model.graph.output:
        o.name = rename.get(o.name, o.name)
    return model


def attribute(graph: onnx.ModelProto, layers: set[str]) -> dict[str, tuple[str, bool]]:
    """Optimized node name → (segment, whether it is the layer's own convolution: the first
    convolution of the segment in graph order). Nodes ONNX Runtime inserted without a segment
    name (layout transposes, reorders) join the nearest labelled node upstream (else downstream)."""
    known = layers | {HEAD}
    up, down = _links(graph)

    def prefix(n: onnx.NodeProto) -> str | None:
        head, at, _ = n.name.partition("@")
        return head if at and head in known else None

    out: dict[str, tuple[str, bool]] = {}
    has_conv: set[str] = set()
    for n in graph.graph.node:  # saved graphs are topologically sorted
        s = prefix(n) or _walk(n, up, prefix) or _walk(n, down, prefix) or HEAD
        is_conv = s != HEAD and s not in has_conv and n.op_type in CONV_OPS
        if is_conv:
            has_conv.add(s)
        out[n.name] = (s, is_conv)
    return out


def segment_times(runs: ProfiledRuns, layers: set[str]) -> dict[str, list[list[float]]]:
    """Per run: {segment: [total, non-conv part]} in ms, plus '_overhead' (wall − Σ nodes)."""
    owner = attribute(runs.graph, layers)
    per_run = []
    for wall, nodes in zip(runs.wall, runs.nodes, strict=True):
        seg: dict[str, list[float]] = {}
        for name, ms in nodes.items():
            s, is_conv = owner.get(name, (HEAD, False))
            acc = seg.setdefault(s, [0.0, 0.0])
            acc[0] += ms
            if not is_conv:
                acc[1] += ms
        seg["_overhead"] = [max(0.0, wall - sum(nodes.values())), 0.0]
        per_run.append(seg)
    segments = sorted({s for r in per_run for s in r})
    return {s: [r.get(s, [0.0, 0.0]) for r in per_run] for s in segments}


def design(names: Sequence[str], containers: Sequence[str], n_random: int, seed: int = 0
           ) -> list[dict[str, str]]:
    """Container profiles to run: the k² affine profiles (k uniform among them), then random ones."""
    k = len(containers)
    out: list[dict[str, str]] = []
    for b in range(k):
        for a in range(k):
            p = {n: containers[(a + b * i) % k] for i, n in enumerate(names)}
            if p not in out:
                out.append(p)
    rng = random.Random(seed)
    for _ in range(n_random if len(names) > 1 else 0):
        p = {n: rng.choice(list(containers)) for n in names}
        if p not in out:
            out.append(p)
    return out


@dataclass
class GroupFit:
    """Result for one transform: per layer per container samples, the fixed part, transitions."""

    layers: dict[str, dict[str, list[float]]]
    fixed: list[float]
    transitions: list[dict]
    residual_ms: float


def fit_group(names: Sequence[str], succ: Mapping[str, list[str]], containers: Sequence[str],
              runs: Sequence[tuple[Mapping[str, str], Mapping[str, list[list[float]]]]],
              statistic=np.median) -> GroupFit:
    """Direct A_l(c) from the uniform runs; X by ridge-regularised least squares on all runs."""
    uniform = {}
    for profile, seg in runs:
        cs = set(profile.values())
        if len(cs) == 1:
            uniform[cs.pop()] = seg
    missing = [c for c in containers if c not in uniform]
    if missing:
        raise RuntimeError(f"context design lacks the uniform {missing} runs")
    fp32 = "fp32" if "fp32" in uniform else containers[-1]

    def stat(seg: Mapping[str, list[list[float]]], s: str, part: int = 0) -> float:
        return float(statistic([r[part] for r in seg.get(s, [[0.0, 0.0]])]))

    base = {s: {c: stat(uniform[c], s) for c in containers} for s in [HEAD, *names]}
    glue = {s: stat(uniform[fp32], s, 1) for s in names}  # non-conv work in the FP32 graph
    pairs = [(a, b) for a in containers for b in containers if a != b]
    transitions, residuals = [], []
    head_extra: dict[str, dict[str, float]] = {}
    for s in [HEAD, *names]:
        targets = [t for t in succ.get(s, []) if t in names]
        if not targets:
            continue
        cols = [(t, a, b) for t in targets for a, b in pairs if s != HEAD or a == fp32]
        rows, y = [], []
        for profile, seg in runs:
            cs = fp32 if s == HEAD else profile[s]
            rows.append([float(cs == a and profile[t] == b) for t, a, b in cols])
            y.append(stat(seg, s) - base[s][cs])
        f, yv = np.array(rows), np.array(y)
        lam = 1e-3 * max(1.0, float(f.shape[0]))
        x = np.linalg.solve(f.T @ f + lam * np.eye(len(cols)), f.T @ yv)
        residuals.extend(np.abs(f @ x - yv).tolist())
        for t in targets:
            cost = {f"{a}>{b}": float(v) for (tt, a, b), v in zip(cols, x, strict=True) if tt == t}
            if s == HEAD:  # the head is always FP32: its transition is a per-container term of t
                head_extra[t] = {k.split(">")[1]: v for k, v in cost.items()}
            else:
                transitions.append({"from": s, "to": t, "cost": cost})
    layers: dict[str, dict[str, list[float]]] = {}
    for s in names:
        layers[s] = {}
        for c in containers:
            extra = head_extra.get(s, {}).get(c, 0.0)
            samples = [r[0] - glue[s] + extra for r in uniform[c].get(s, [[0.0, 0.0]])]
            layers[s][c] = [max(v, 1e-6) for v in samples]
    n = len(uniform[fp32].get(HEAD, [[0.0]])) or 1
    fixed = [stat(uniform[fp32], HEAD) + stat(uniform[fp32], "_overhead") + sum(glue.values())] * n
    return GroupFit(layers, fixed, transitions, float(np.median(residuals)) if residuals else 0.0)
