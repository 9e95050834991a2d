"""η·L_lat: the expected latency of the selectors' distribution as a training loss term.

L_lat is normalised by the target so η is comparable across devices: `linear` is E[T]/T_target,
`hinge` is max(0, E[T]/T_target − 1) (no push once the budget is met). E[T] comes from a latency
table measured for this model and input size (`LatencyTable.expected_latency_of`). The budget holds
for every image, so by default the hinge is taken per image and then averaged: an image already
under budget is not pushed further because another image is over it (`per_image=False`: the
hinge of the batch mean, as before).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from .latency import LatencyTable
from .quant.wrap import conv_layers

FORMS = ("linear", "hinge")
_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_latency(text: str | float) -> float:
    """'20ms', '0.02s', '20000us' or a bare number (milliseconds) → milliseconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(us|µs|ms|s)?\s*", str(text))
        if not m:
            raise ValueError(f"latency {text!r} is not a number with a unit, e.g. 20ms or 0.5s")
        value = float(m.group(1)) * _UNITS[m.group(2) or "ms"]
    if value <= 0:
        raise ValueError(f"latency must be positive, got {text!r}")
    return value


def check_table_matches(table: LatencyTable, model: nn.Module) -> None:
    """The table must describe this model's layers; name the first layer or shape that differs."""
    convs = dict(conv_layers(model))
    missing, extra = sorted(set(convs) - set(table.specs)), sorted(set(table.specs) - set(convs))
    where = table.path or "latency table"
    if missing or extra:
        raise ValueError(f"{where} does not match the model: layers missing from the table "
                         f"{missing[:5]}, layers the model lacks {extra[:5]}; profile this model "
                         "with `dqsearch profile`")
    for name, conv in convs.items():
        spec = table.specs[name]
        got = (conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride))
        want = (spec.in_channels, spec.out_channels, tuple(spec.kernel), tuple(spec.stride))
        if got != want:
            raise ValueError(f"{where}: layer {name} is (in, out, kernel, stride) = {want} in the "
                             f"table but {got} in the model")


class LatencyTerm:
    """Callable loss term for `train(loss_terms=...)`: returns ("latency", η·L_lat)."""

    def __init__(self, table: LatencyTable, target_ms: float, weight: float, form: str = "hinge",
                 per_image: bool = True):
        if form not in FORMS:
            raise ValueError(f"latency loss form must be one of {FORMS}, got {form!r}")
        if weight < 0:
            raise ValueError(f"latency weight η must be non-negative, got {weight}")
        self.table, self.target_ms, self.weight, self.form = table, float(target_ms), weight, form
        self.per_image = per_image
        self.last_expected_ms: float | None = None
        # L_lat before η, summed over steps: an ablation of η must show the term was non-zero
        # where it was on (a hinge that never opens tests nothing).
        self.calls, self.active, self.total = 0, 0, 0.0

    @property
    def stats(self) -> dict[str, float | int | None]:
        return {"latency_term_steps": self.calls,
                "latency_term_active_share": self.active / self.calls if self.calls else None,
                "latency_term_mean": self.total / self.calls if self.calls else None,
                "expected_ms_last": self.last_expected_ms}

    def normalised(self, expected_ms: Tensor) -> Tensor:
        ratio = expected_ms / self.target_ms
        return ratio if self.form == "linear" else torch.relu(ratio - 1.0)

    def __call__(self, model: nn.Module) -> tuple[str, Tensor]:
        expected = self.table.expected_latency_of(model)
        self.last_expected_ms = float(expected.detach().mean())
        per_image = self.normalised(expected)
        value = per_image.mean() if self.per_image else self.normalised(expected.mean())
        self.calls += 1
        self.active += int(float(per_image.detach().max()) > 0)
        self.total += float(value.detach())
        return "latency", self.weight * value
