"""Layer latencies in their chain, and transition costs between neighbouring layers.

A layer timed alone misses what the deployed chain does between layers: between two int8 layers
the GDN runs in int8 and fused, between an int8 and a float layer it runs in float after a
dequantize (and the sub-pixel shuffle), before an int8 layer the float activation is quantized.
So each transform is run whole at a few container profiles, timing each layer's *segment* (its
convolution up to the next layer's, `X86Transform.segments`). A segment depends on its own
container and on the next layer's only:

    S_l(P) = A_l(c_l) + X_l(c_l, c_(l+1)),   X_l(c, c) = 0

A_l(c) is measured in the uniform profile (every layer at c), X from the alternating profiles
(c_i = a, b, a, b, … for every ordered pair a ≠ b: each edge sees both orders). The head (before
the first convolution: |y| for h_a, the input quantization of an int8 first layer) depends on
the first layer's container and goes into its A; the rest of the head and the call's own overhead
into the fixed part.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

HEAD = "_head"


def design(names: Sequence[str], containers: Sequence[str]) -> list[dict[str, str]]:
    """Uniform profiles, then alternating ones for every ordered pair of containers."""
    out = [dict.fromkeys(names, c) for c in containers]
    for a in containers:
        for b in containers:
            if a != b and len(names) > 1:
                out.append({n: (a, b)[i % 2] for i, n in enumerate(names)})
    return out


def fit_chain(names: Sequence[str], containers: Sequence[str], runs: Sequence[tuple[Mapping, list]]
              ) -> tuple[dict[str, dict[str, list[float]]], list[float], list[dict]]:
    """(A: layer → container → samples ms, fixed samples ms, transitions) of one chain from
    `runs`: (profile, [[head, s_0, …, s_(n−1), overhead] per repeat]) in ms."""
    def med(segs: list[list[float]], i: int) -> float:
        return statistics.median(r[i] for r in segs)

    uniform = {c: segs for p, segs in runs for c in containers if set(p.values()) == {c}}
    ref = containers[-1]  # the widest container anchors the head and the overhead
    head_ref = med(uniform[ref], 0)
    layers: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for c, segs in uniform.items():
        shift = med(segs, 0) - head_ref  # the first layer's share of the head
        for i, n in enumerate(names):
            layers[n][c] = [max(r[i + 1] + (shift if i == 0 else 0.0), 0.0) for r in segs]
    fixed = [r[0] + r[-1] for r in uniform[ref]]
    transitions = []
    for i, (src, dst) in enumerate(zip(names, names[1:], strict=False)):
        cost = {}
        for p, segs in runs:
            a, b = p[src], p[dst]
            if a != b:
                cost[f"{a}>{b}"] = med(segs, i + 1) - statistics.median(layers[src][a])
        if cost:
            transitions.append({"from": src, "to": dst, "cost": cost})
    return layers, fixed, transitions
