"""FP32 training and QAT fine-tuning: loss R + λ·D + γ·L_bits (+ extra terms), checkpoints, resume.

Checkpoints are written atomically every `checkpoint_every` steps with the optimizer, RNG and
schedule state, so `--resume` continues the same run after a crash or a kill.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor, nn
from tqdm import tqdm

from .data import CropSampler, pad_to_multiple
from .models import save_checkpoint
from .quant.quantizer import use_compiled_quantization
from .quant.selector import TemperatureSchedule, expected_bits, mutual_information
from .quant.wrap import (
    QuantPolicy,
    calibrate,
    dynamic_layers,
    model_bits_loss,
    model_bits_per_image,
    set_temperature,
)
from .units import DEFAULT_LMBDA

METRICS = ("mse", "ms-ssim")
BITS_COSTS = ("uniform", "distortion")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint for `--resume`)."""

    lmbda: float = DEFAULT_LMBDA
    metric: str = "mse"
    steps: int = 2000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-4
    lr_end: float | None = None  # cosine decay to this; None keeps lr constant
    aux_lr: float = 1e-3
    quant_lr: float = 1e-5  # scales / clipping bounds (Adam: absolute step size)
    zero_point_lr: float = 1e-3
    selector_lr: float = 1e-3
    gamma: float = 0.0
    temperature_start: float = 5.0
    temperature_end: float = 0.5
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 25
    calibration_batches: int = 4  # random crops of batch_size (only when calibration_images = 0)
    calibration_images: int = 8  # whole training photos for the activation ranges
    diversity: float = 0.0  # δ: loss − δ·I(image; choice), the batch's mutual information per layer
    bits_cost: str = "uniform"  # "distortion": image i pays γ·MSE_i/mean(MSE) per bit (log-MSE trade-off)
    seed: int = 0
    device: str = "cpu"
    compile: bool = False  # torch.compile the fake quantizer (worth it beyond a few hundred steps)

    def __post_init__(self) -> None:
        if self.bits_cost not in BITS_COSTS:
            raise ValueError(f"bits_cost must be one of {BITS_COSTS}, got {self.bits_cost!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("lmbda", "lr", "aux_lr", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("gamma", "diversity", "calibration_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.crop < 64 or self.crop % 64:
            raise ValueError(f"crop must be a multiple of 64 (the models' total stride), got {self.crop}")
        if self.batch_size > 1024 or self.crop > 4096:
            raise ValueError(f"batch size {self.batch_size} × crop {self.crop} is beyond any training run "
                             "this tool supports (batch ≤ 1024, crop ≤ 4096)")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def psnr(mse: Tensor) -> Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-12))


def rate_distortion(out: dict, x: Tensor, lmbda: float, metric: str = "mse") -> dict[str, Tensor]:
    """R + λ·D: R in bits per pixel from the likelihoods, D = 255²·MSE or 1 − MS-SSIM."""
    n, _, h, w = x.shape
    bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2) * n * h * w)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    if metric == "mse":
        distortion = 255.0**2 * mse
    else:
        distortion = 1 - ms_ssim(out["x_hat"].clamp(0, 1), x, data_range=1.0)
    return {"bpp": bpp, "mse": mse, "psnr": psnr(mse.detach()), "distortion": distortion,
            "loss": bpp + lmbda * distortion}


# An extra loss term: given the model after its forward pass, return (name, weighted loss).
LossTerm = Callable[[nn.Module], tuple[str, Tensor]]


def _param_groups(model: nn.Module, config: TrainConfig) -> tuple[list[dict], list[Tensor]]:
    groups: dict[str, list[Tensor]] = {"net": [], "scale": [], "zero_point": [], "selector": []}
    aux = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("quantiles"):
            aux.append(p)
        elif "selector." in name:
            groups["selector"].append(p)
        elif ".zero_point." in name:
            groups["zero_point"].append(p)
        elif ".scale." in name or ".alpha." in name:
            groups["scale"].append(p)
        else:
            groups["net"].append(p)
    lrs = {"net": config.lr, "scale": config.quant_lr, "zero_point": config.zero_point_lr,
           "selector": config.selector_lr}
    return [{"params": ps, "lr": lrs[k], "name": k, "base_lr": lrs[k]}
            for k, ps in groups.items() if ps], aux


def _lr_factor(config: TrainConfig, step: int) -> float:
    if config.lr_end is None:
        return 1.0
    end = config.lr_end / config.lr
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps)))


@dataclass
class RunSpec:
    """What the checkpoint must record to rebuild the model being trained."""

    architecture: str
    arch_args: dict[str, int]
    policy: QuantPolicy | None = None
    meta: dict[str, Any] | None = None


def train(
    model: nn.Module,
    spec: RunSpec,
    sampler: CropSampler,
    config: TrainConfig,
    output: str | Path,
    train_state: dict | None = None,
    loss_terms: Sequence[LossTerm] = (),
    progress: bool = True,
    pause_at: int | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train until `config.steps`; writes `output` (and `output`.log.jsonl). Returns last metrics.

    `pause_at` stops early with a resumable checkpoint, as if interrupted (time-boxed runs);
    schedules (learning rate, temperature) always follow `config.steps`. `on_log(step, metrics)`
    runs at every log line (a study reports to its pruner there; raising stops the run after a
    checkpoint is written).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    use_compiled_quantization(config.compile)
    device = torch.device(config.device)
    model.to(device).train()
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    groups, aux_params = _param_groups(model, config)
    optimizer = torch.optim.Adam(groups)
    aux_optimizer = torch.optim.Adam(aux_params, lr=config.aux_lr) if aux_params else None
    dynamic = bool(dynamic_layers(model))
    schedule = TemperatureSchedule(config.temperature_start, config.temperature_end, config.steps)
    step, elapsed = 0, 0.0
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        if aux_optimizer is not None and train_state.get("aux_optimizer"):
            aux_optimizer.load_state_dict(train_state["aux_optimizer"])
        gen.set_state(train_state["rng_crops"])
        torch.set_rng_state(train_state["rng_torch"])
        step, elapsed = int(train_state["step"]), float(train_state.get("elapsed_s", 0.0))
    elif spec.policy is not None and (config.calibration_images > 0 or config.calibration_batches > 0):
        calibrate(model, (x.to(device) for x in calibration_inputs(sampler, config, gen)))

    def checkpoint(final: bool = False) -> None:
        model.update(force=True)
        state = {
            "step": step,
            "elapsed_s": elapsed,
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": aux_optimizer.state_dict() if aux_optimizer else None,
            "rng_crops": gen.get_state(),
            "rng_torch": torch.get_rng_state(),
            "config": asdict(config),
        }
        meta = {**(spec.meta or {}), "lmbda": config.lmbda, "metric": config.metric, "steps": step,
                "train_seconds": round(elapsed, 1), "finished": final}
        save_checkpoint(output, model, spec.architecture, spec.arch_args, spec.policy, meta, state)

    log_path = output.with_name(output.name + ".log.jsonl")
    if train_state is not None and log_path.exists():  # drop lines logged after the checkpoint
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    last: dict[str, float] = {}
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc=output.name,
               dynamic_ncols=True)
    with log_path.open("a") as log:
        while step < min(config.steps, pause_at or config.steps):
            t0 = time.perf_counter()
            factor = _lr_factor(config, step)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            if dynamic:
                set_temperature(model, schedule(step))
            x = sampler.sample(config.batch_size, gen).to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            rd = rate_distortion(out, x, config.lmbda, config.metric)
            loss = rd["loss"]
            terms = {}
            if dynamic:
                lbits = model_bits_loss(model)
                terms["bits"] = lbits.detach()
                if config.bits_cost == "distortion":
                    loss = loss + config.gamma * distortion_weighted_bits(model, out["x_hat"], x)
                else:
                    loss = loss + config.gamma * lbits
                if config.diversity > 0:
                    mi = torch.stack([mutual_information(m.last_probs)
                                      for m in dynamic_layers(model).values()]).mean()
                    terms["mutual_info"] = mi.detach()
                    loss = loss - config.diversity * mi
            for term in loss_terms:
                name, value = term(model)
                terms[name] = value.detach()
                loss = loss + value
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the "
                                         "learning rate or resume from the last checkpoint")
            loss.backward()
            loss = loss.detach()
            rd = {k: v.detach() for k, v in rd.items()}
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
            optimizer.step()
            if aux_optimizer is not None:
                aux_optimizer.zero_grad(set_to_none=True)
                model.aux_loss().backward()
                aux_optimizer.step()
            step += 1
            elapsed += time.perf_counter() - t0
            last = {"step": step, "loss": loss.item(), "bpp": rd["bpp"].item(),
                    "psnr": rd["psnr"].item(), **{k: v.item() for k, v in terms.items()}}
            if dynamic:
                last["avg_bits"] = _mean_expected_bits(model)
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k != "step"})
                log.write(json.dumps({**last, "elapsed_s": round(elapsed, 2)}) + "\n")
                log.flush()
                if on_log is not None:
                    try:
                        on_log(step, last)
                    except BaseException:
                        checkpoint()
                        raise
            if step % config.checkpoint_every == 0 and step < config.steps:
                checkpoint()
    bar.close()
    checkpoint(final=step >= config.steps)
    return last


def distortion_weighted_bits(model: nn.Module, x_hat: Tensor, x: Tensor) -> Tensor:
    """Σ_i γ_i·L_bits,i / B with γ_i ∝ MSE_i (detached, batch mean 1).

    With λ·log MSE_i in place of λ·MSE_i the selector's trade-off for image i is λ·ΔMSE_i/MSE_i
    against γ·Δbits: the same absolute quantization noise costs a clean (low-MSE) image more dB,
    so it should be able to buy precision more cheaply. Scaling image i's price of a bit by MSE_i
    gives the selector exactly that trade-off while the network's own loss stays R + λ·D.
    """
    mse = ((x_hat.detach() - x) ** 2).flatten(1).mean(dim=1)
    weight = mse / mse.mean().clamp_min(1e-12)
    return (weight * model_bits_per_image(model)).mean()


def calibration_inputs(sampler: CropSampler, config: TrainConfig,
                       gen: torch.Generator) -> Iterator[Tensor]:
    """What the activation ranges are calibrated on: `calibration_images` whole photos, evenly
    spaced over the training set and padded to a multiple of 64, whatever the batch size (a few
    small random crops clip what other photos hold: 20 steps at batch 2 lost 3.5 dB on an unseen
    photo); with `calibration_images = 0`, `calibration_batches` random crop batches as before."""
    if config.calibration_images > 0:
        n = len(sampler.images)
        k = min(n, config.calibration_images)
        for i in sorted({int(j * n / k) for j in range(k)}):
            yield pad_to_multiple(sampler.images[i].float().div(255.0).unsqueeze(0), 64)[0]
        return
    for _ in range(config.calibration_batches):
        yield sampler.sample(config.batch_size, gen)


def _mean_expected_bits(model: nn.Module) -> float:
    layers = dynamic_layers(model).values()
    with torch.no_grad():
        return torch.stack([expected_bits(m.last_probs, m.candidates).mean() for m in layers]).mean().item()
