"""DBWS bit-width selector: adaptive pooling → 2-layer MLP → distribution over candidate bit-widths.

Training draws a straight-through Gumbel-softmax sample (the paper's relaxation): the forward pass
uses a hard one-hot choice, so training runs exactly the network that inference runs, and the
gradient flows through the soft sample. Inference takes the argmax. L_bits and E[T] are computed
from the selector's probabilities p = softmax(logits) (eq. 9), never from the noisy sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RELAXATIONS = ("st", "soft")  # straight-through hard one-hot (paper) / soft Gumbel sample (legacy)
FEATURES = ("mean", "mean-std")


class BitSelector(nn.Module):
    """Predicts logits over `num_choices` bit-widths for `num_outputs` layers from a feature map.

    `num_outputs=1` is the per-layer selector (reads its own layer's input); `num_outputs=L` is the
    global selector of the paper's eq. 7 (reads the first layer's output, predicts all others).
    `features="mean-std"` adds each pooled cell's standard deviation to its mean: the mean of
    zero-mean edge filters hardly differs between a flat and a textured image, their energy does.
    """

    def __init__(self, in_channels: int, num_choices: int, num_outputs: int = 1,
                 pool: int = 2, hidden: int = 32, features: str = "mean", init_std: float = 0.0):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"selector features must be one of {FEATURES}, got {features!r}")
        self.num_choices = num_choices
        self.num_outputs = num_outputs
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(pool)
        width = in_channels * pool * pool * (2 if features == "mean-std" else 1)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_outputs * num_choices),
        )
        # Start (close to) uniform so no bit-width is favoured before training; a small random
        # output layer lets the logits differ between images from the first step.
        if init_std > 0:
            nn.init.normal_(self.mlp[2].weight, std=init_std)
        else:
            nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape [batch, num_outputs, num_choices]."""
        mean = self.pool(x)
        if self.features == "mean-std":
            std = (self.pool(x * x) - mean * mean).clamp_min(0).add(1e-8).sqrt()
            mean = torch.cat([mean, std], dim=1)
        return self.mlp(mean.flatten(1)).view(x.shape[0], self.num_outputs, self.num_choices)


def relaxed_sample(logits: Tensor, temperature: float, training: bool,
                   relaxation: str = "st") -> tuple[Tensor, Tensor]:
    """(fusion weights w, probabilities p = softmax(logits)), both shaped like `logits`.

    Inference: w is the exact argmax one-hot. Training with `st`: w equals a hard one-hot of a
    Gumbel-softmax sample in the forward pass (exactly: hard + (soft − soft.detach())) and has
    the soft sample's gradient; with `soft`: w is the soft sample itself.
    """
    p = logits.softmax(dim=-1)
    if not training:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype), p
    if relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    soft = F.gumbel_softmax(logits, tau=temperature, hard=False, dim=-1)
    if relaxation == "soft":
        return soft, p
    hard = F.one_hot(soft.detach().argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach()), p


def sample_probabilities(logits: Tensor, temperature: float, training: bool,
                         relaxation: str = "soft") -> Tensor:
    """The fusion weights of `relaxed_sample` alone (kept for callers of the earlier API)."""
    return relaxed_sample(logits, temperature, training, relaxation)[0]


def expected_bits(probs: Tensor, candidates: Sequence[int]) -> Tensor:
    """Σ_k p_k·b_k for each sample (probs: [batch, K])."""
    b = torch.tensor(candidates, dtype=probs.dtype, device=probs.device)
    return probs @ b


def bits_per_image(probs_per_layer: Iterable[tuple[Tensor, Sequence[int]]]) -> Tensor:
    """Each image's L_bits (eq. 9): mean over layers of Σ_k p_lk·b_k, shape [batch]."""
    terms = [expected_bits(p, c) for p, c in probs_per_layer]
    if not terms:
        raise ValueError("L_bits needs at least one layer with a bit-width selector")
    return torch.stack(terms).mean(dim=0)


def bits_loss(probs_per_layer: Iterable[tuple[Tensor, Sequence[int]]]) -> Tensor:
    """L_bits (eq. 9) averaged over the batch. Being linear in p, its gradient to one image's
    probabilities is the same whether it is written per image or per batch."""
    return bits_per_image(probs_per_layer).mean()


def mutual_information(probs: Tensor) -> Tensor:
    """I(image; choice) within a batch, in nats: H(mean_b p_b) − mean_b H(p_b) (probs: [batch, K]).

    Zero when every image gets the same distribution; log K at most. Maximising it is the
    batch-level balance used for mixture-of-experts routers: choices that differ between images
    and are confident for each.
    """
    p = probs.clamp_min(1e-12)
    marginal = p.mean(dim=0)
    h_marginal = -(marginal * marginal.log()).sum()
    h_cond = -(p * p.log()).sum(dim=-1).mean()
    return h_marginal - h_cond


class TemperatureSchedule:
    """Exponential annealing τ(t) = max(τ_end, τ_start·(τ_end/τ_start)^(t/T))."""

    def __init__(self, start: float = 5.0, end: float = 0.5, steps: int = 1000):
        if start <= 0 or end <= 0 or steps <= 0:
            raise ValueError("temperatures and steps must be positive")
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, step: int) -> float:
        frac = min(1.0, step / self.steps)
        return max(self.end, self.start * math.exp(frac * math.log(self.end / self.start)))
