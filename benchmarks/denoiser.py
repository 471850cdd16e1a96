"""The small latent diffusion model of ``vaeflow bench training``: a two-level residual U-Net that predicts v
(``sqrt(abar) * noise - sqrt(1 - abar) * latent``, SD 2's target) or the noise (epsilon, SD/SDXL's) under
SD/SDXL's noise schedule, trained and evaluated in one process, one thread, deterministically for a seed.

Everything a run depends on arrives in a :class:`Run`; nothing here reads vaeflow's store or models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TIMESTEPS = 1000
PREDICTIONS = ("epsilon", "v")
EMA_DECAY = 0.995
EVAL_NOISE_SEED = 20_241  # the evaluation's noise draws: one set, the same for every variant and seed


def alphas_cumprod() -> np.ndarray:
    """SD / SDXL's schedule: 1,000 steps, betas ``scaled_linear`` from 0.00085 to 0.012."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, TIMESTEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def sigma_of(timestep: int) -> float:
    """The noise-to-signal ratio sqrt((1 - abar) / abar) at a timestep (EDM's sigma)."""
    abar = float(alphas_cumprod()[timestep])
    return math.sqrt((1.0 - abar) / abar)


def _groups(width: int) -> int:
    return math.gcd(8, width)


class Block(nn.Module):
    """Norm, SiLU, conv; the timestep's scale and shift; norm, SiLU, conv; plus the input."""

    def __init__(self, width: int, embedding: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(_groups(width), width), nn.GroupNorm(_groups(width), width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Linear(embedding, 2 * width)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class Denoiser(nn.Module):
    """Latent (N, C, h, w) and timesteps (N,) -> the prediction (v or the noise); h and w even."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.width, embedding = width, 4 * width
        self.embed = nn.Sequential(nn.Linear(width, embedding), nn.SiLU(), nn.Linear(embedding, embedding))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.high_in = nn.ModuleList([Block(width, embedding)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.low = nn.ModuleList([Block(2 * width, embedding) for _ in range(2)])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.high_out = nn.ModuleList([Block(width, embedding)])
        self.out_norm = nn.GroupNorm(_groups(width), width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # at first, the best linear prediction alone (see predict)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]

    def timestep_features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t.to(torch.float32)[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(self.timestep_features(t))
        h = self.inp(x)
        for block in self.high_in:
            h = block(h, emb)
        skip, h = h, self.down(h)
        for block in self.low:
            h = block(h, emb)
        h = skip + self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        for block in self.high_out:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Run:
    """One training run: a variant's training latents (an ``.npz`` of arrays ``0``, ``1``, ...), a seed, the
    settings; evaluated on the exact latents and on the variant's own latents of the evaluation folder."""

    variant: str
    seed: int
    train: Path
    eval_exact: Path
    eval_own: Path
    mean: tuple[float, ...]  # per channel, of the exact training latents: every variant is normalised alike
    std: tuple[float, ...]
    steps: int
    batch_size: int
    crop: int
    width: int
    lr: float
    timesteps: tuple[int, ...]
    draws: int
    prediction: str = "epsilon"


def seeds(seed: int) -> tuple[int, int, int]:
    """A run's three independent seeds, of its initial weights, its crops and its timesteps and noise."""
    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))  # type: ignore[return-value]


def _load(path: Path, run: Run) -> list[torch.Tensor]:
    mean = torch.tensor(run.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(run.std, dtype=torch.float32)[:, None, None]
    with np.load(path) as arrays:
        return [(torch.from_numpy(arrays[str(i)].astype(np.float32)) - mean) / std for i in range(len(arrays.files))]


def _batches(latents: list[torch.Tensor], run: Run) -> Iterator[torch.Tensor]:
    """Every step's crops as one generator draws them for the seed: the same images, places and flips for
    every variant (their latents have the same shapes)."""
    g = torch.Generator().manual_seed(seeds(run.seed)[1])
    crop = min(run.crop, *(min(z.shape[1:]) for z in latents)) // 2 * 2
    images = torch.randint(len(latents), (run.steps, run.batch_size), generator=g)
    places = torch.rand(run.steps, run.batch_size, 2, generator=g)
    flips = torch.rand(run.steps, run.batch_size, generator=g) < 0.5
    for step in range(run.steps):
        crops = []
        for i, (y, x), flip in zip(images[step].tolist(), places[step].tolist(), flips[step].tolist(), strict=True):
            z = latents[i]
            top, left = int(y * (z.shape[1] - crop + 1)), int(x * (z.shape[2] - crop + 1))
            patch = z[:, top : top + crop, left : left + crop]
            crops.append(patch.flip(2) if flip else patch)
        yield torch.stack(crops)


def target(clean: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the model learns to predict from the noisy latent: v or the noise."""
    if prediction == "epsilon":
        return noise
    return abar.sqrt() * noise - (1 - abar).sqrt() * clean


def predict(model: Denoiser, noisy: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, prediction: str) -> torch.Tensor:
    """The model's prediction: for epsilon, the best linear prediction of the noise from a unit-variance latent,
    ``sqrt(1 - abar) * noisy``, plus the network's output; for v (whose best linear prediction is 0), the
    output alone. At pure noise epsilon is nearly the input, and a network that had to copy it would be judged
    there on how precisely it copies rather than on what it learned of latents."""
    if prediction == "epsilon":
        return (1 - abar).sqrt() * noisy + model(noisy, t)
    return model(noisy, t)  # type: ignore[no-any-return]


def train(run: Run) -> tuple[Denoiser, list[float]]:
    """The denoiser trained on the run's latents: AdamW, a linear warm-up then cosine decay, uniform
    timesteps, v or epsilon prediction. Returns the exponential moving average of its weights (as diffusion
    models are evaluated and sampled) and the training losses."""
    torch.manual_seed(seeds(run.seed)[0])
    latents = _load(run.train, run)
    model = Denoiser(latents[0].shape[0], run.width)
    average = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema(EMA_DECAY))
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.0)
    warmup = max(1, run.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, run.steps) / run.steps))
    )
    abar = torch.tensor(alphas_cumprod(), dtype=torch.float32)
    g = torch.Generator().manual_seed(seeds(run.seed)[2])
    losses = []
    for clean in _batches(latents, run):
        t = torch.randint(TIMESTEPS, (clean.shape[0],), generator=g)
        noise = torch.randn(clean.shape, generator=g)
        a = abar[t][:, None, None, None]
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        loss = F.mse_loss(predict(model, noisy, t, a, run.prediction), target(clean, noise, a, run.prediction))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        average.update_parameters(model)
        losses.append(loss.item())
    averaged = average.module
    assert isinstance(averaged, Denoiser)
    return averaged, losses


def _ema(decay: float) -> Any:
    """An exponential moving average whose decay ramps up as (1 + n) / (10 + n) over the first steps."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        rate = min(decay, (1 + int(count)) / (10 + int(count)))
        torch._foreach_lerp_(averaged, current, 1 - rate)

    return update


@torch.no_grad()
def evaluate(model: Denoiser, latents: list[torch.Tensor], run: Run) -> list[float]:
    """The mean squared error of the prediction at each of the run's timesteps, over every latent and
    ``run.draws`` fixed noise draws (the same draws for every variant and seed)."""
    model.eval()
    abar = alphas_cumprod()
    g = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    noises = [torch.randn((len(run.timesteps), run.draws, *z.shape), generator=g) for z in latents]
    out = []
    for level, t in enumerate(run.timesteps):
        a = float(abar[t])
        errors = []
        for z, noise in zip(latents, noises, strict=True):
            z = z[:, : z.shape[1] // 2 * 2, : z.shape[2] // 2 * 2]
            eps = noise[level][:, :, : z.shape[1], : z.shape[2]]
            noisy = math.sqrt(a) * z[None] + math.sqrt(1 - a) * eps
            timesteps, abar_t = torch.full((run.draws,), t, dtype=torch.long), torch.tensor(a)
            predicted = predict(model, noisy, timesteps, abar_t, run.prediction)
            errors.append(float(F.mse_loss(predicted, target(z[None], eps, abar_t, run.prediction))))
        out.append(float(np.mean(errors)))
    return out


def train_and_evaluate(run: Run) -> dict[str, object]:
    """One run, in one thread: its losses on the exact evaluation latents and on the variant's own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, losses = train(run)
        return {
            "variant": run.variant,
            "seed": run.seed,
            "loss": evaluate(model, _load(run.eval_exact, run), run),
            "own_loss": evaluate(model, _load(run.eval_own, run), run),
            "train_loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        }
    finally:
        torch.set_num_threads(threads)
