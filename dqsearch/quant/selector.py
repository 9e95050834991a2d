"""DBWS bit-width selector: adaptive pooling → 2-layer MLP → distribution over candidate bit-widths.

Training samples relaxed one-hots with Gumbel-softmax at an annealed temperature; inference takes
the argmax as an exact one-hot, so every image gets one bit-width per layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BitSelector(nn.Module):
    """Predicts logits over `num_choices` bit-widths for `num_outputs` layers from a feature map.

    `num_outputs=1` is the per-layer selector (reads its own layer's input); `num_outputs=L` is the
    global selector of the paper's eq. 7 (reads the first layer's output, predicts all others).
    """

    def __init__(self, in_channels: int, num_choices: int, num_outputs: int = 1,
                 pool: int = 2, hidden: int = 32):
        super().__init__()
        self.num_choices = num_choices
        self.num_outputs = num_outputs
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(
            nn.Linear(in_channels * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_outputs * num_choices),
        )
        # Start from a uniform distribution so no bit-width is favoured before training.
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape [batch, num_outputs, num_choices]."""
        feats = self.pool(x).flatten(1)
        return self.mlp(feats).view(x.shape[0], self.num_outputs, self.num_choices)


def sample_probabilities(logits: Tensor, temperature: float, training: bool) -> Tensor:
    """Gumbel-softmax (soft) while training; an exact argmax one-hot otherwise."""
    if training:
        return F.gumbel_softmax(logits, tau=temperature, hard=False, dim=-1)
    return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)


def expected_bits(probs: Tensor, candidates: Sequence[int]) -> Tensor:
    """Σ_k p_k·b_k for each sample (probs: [batch, K])."""
    b = torch.tensor(candidates, dtype=probs.dtype, device=probs.device)
    return probs @ b


def bits_loss(probs_per_layer: Iterable[tuple[Tensor, Sequence[int]]]) -> Tensor:
    """L_bits (eq. 9): mean over layers of Σ_k p_lk·b_k, averaged over the batch."""
    terms = [expected_bits(p, c).mean() for p, c in probs_per_layer]
    if not terms:
        raise ValueError("L_bits needs at least one layer with a bit-width selector")
    return torch.stack(terms).mean()


class TemperatureSchedule:
    """Exponential annealing τ(t) = max(τ_end, τ_start·(τ_end/τ_start)^(t/T))."""

    def __init__(self, start: float = 5.0, end: float = 0.5, steps: int = 1000):
        if start <= 0 or end <= 0 or steps <= 0:
            raise ValueError("temperatures and steps must be positive")
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, step: int) -> float:
        frac = min(1.0, step / self.steps)
        return max(self.end, self.start * math.exp(frac * math.log(self.end / self.start)))
