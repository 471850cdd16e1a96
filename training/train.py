"""Train the f8c4 autoencoder on CPU, resumably (needs the ``train`` extra).

Each call trains until ``--steps`` or until ``--minutes`` run out, then writes a
checkpoint; calling it again resumes. Crops and noise come from generators seeded by
(seed, step), so a run split over any number of calls trains the same model.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from training.f8c4 import DOWNSAMPLE, LATENT_CHANNELS, Decoder, Encoder
from vaeflow.convert.onnx_export import export
from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.models.onnx_vae import OnnxVAE
from vaeflow.models.quality import reconstruction
from vaeflow.models.registry import REGISTRY_FILE, ModelEntry, register


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str
    workdir: str
    steps: int = 20000
    minutes: float = 9.0
    batch: int = 16
    crop: int = 128
    lr: float = 4e-4
    clip_norm: float = 1.0
    final_lr_ratio: float = 0.05
    noise_max: float = 0.5
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 250
    init: str | None = None  # weights to start a new phase from (e.g. the shipped weights.pt)


def load_photos(data_dir: str) -> list[np.ndarray]:
    return [read_rgb(p) for p in list_images(data_dir)]


def sample_batch(photos: list[np.ndarray], cfg: TrainConfig, step: int) -> np.ndarray:
    """(batch, 3, crop, crop) float32 in [-1, 1]: random crops and flips."""
    rng = np.random.default_rng([cfg.seed, step])
    out = np.empty((cfg.batch, 3, cfg.crop, cfg.crop), np.float32)
    for i in range(cfg.batch):
        img = photos[rng.integers(len(photos))]
        y = rng.integers(img.shape[0] - cfg.crop + 1)
        x = rng.integers(img.shape[1] - cfg.crop + 1)
        crop = img[y : y + cfg.crop, x : x + cfg.crop]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop.transpose(2, 0, 1) / 127.5 - 1.0
    return out


def learning_rate(cfg: TrainConfig, step: int) -> float:
    warmup = 200
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    low = cfg.lr * cfg.final_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * t))


def train(cfg: TrainConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / "checkpoint.pt"
    enc, dec = Encoder(), Decoder()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        enc.load_state_dict(state["encoder"])
        dec.load_state_dict(state["decoder"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    elif cfg.init:  # a new phase from earlier weights: fresh optimizer and schedule
        state = torch.load(cfg.init, weights_only=True)
        enc.load_state_dict({k: v.float() for k, v in state["encoder"].items()})
        dec.load_state_dict({k: v.float() for k, v in state["decoder"].items()})
    photos = load_photos(cfg.data_dir)
    (workdir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def save() -> None:
        state = {"encoder": enc.state_dict(), "decoder": dec.state_dict()}
        buffer = io.BytesIO()
        torch.save({**state, "optimizer": opt.state_dict(), "step": step}, buffer)
        atomic_write(ckpt_path, buffer.getvalue())

    deadline = time.monotonic() + 60 * cfg.minutes
    log = (workdir / "log.tsv").open("a")
    mse_sum, count = 0.0, 0
    while step < cfg.steps and time.monotonic() < deadline:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        x = torch.from_numpy(sample_batch(photos, cfg, step))
        z = enc(x)
        # Relative uniform noise on half the batch teaches the decoder to tolerate
        # quantization; scaling it by the detached per-channel std stops the encoder
        # from escaping it by growing its latents.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        std = z.detach().std(dim=(0, 2, 3), keepdim=True)
        strength = torch.rand(z.shape[0], 1, 1, 1, generator=gen) * cfg.noise_max
        strength[: z.shape[0] // 2] = 0.0
        noise = (torch.rand(z.shape, generator=gen) - 0.5) * strength * std
        loss = F.mse_loss(dec(z + noise), x)
        opt.zero_grad()
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            opt.step()
            mse_sum, count = mse_sum + loss.item(), count + 1
        step += 1
        if step % 50 == 0 and count:
            psnr = 10 * math.log10(4.0 / (mse_sum / count))
            log.write(f"{step}\t{learning_rate(cfg, step):.2e}\t{psnr:.3f}\t{time.time():.0f}\n")
            log.flush()
            mse_sum, count = 0.0, 0
        if step % cfg.checkpoint_every == 0:
            save()
    save()
    log.close()
    return {"step": step, "done": step >= cfg.steps, "checkpoint": str(ckpt_path)}


def latent_statistics(encode: Any, photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of raw latents over whole training photos."""
    sums, squares, count = 0.0, 0.0, 0
    for img in photos:
        h, w = img.shape[0] // 8 * 8, img.shape[1] // 8 * 8
        x = img[None, :h, :w].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
        z = encode(x).astype(np.float64)
        sums = sums + z.sum(axis=(0, 2, 3))
        squares = squares + (z**2).sum(axis=(0, 2, 3))
        count += z.shape[0] * z.shape[2] * z.shape[3]
    mean = np.asarray(sums) / count
    std = np.sqrt(np.asarray(squares) / count - mean**2)
    return mean, std


def _earlier_phases(workdir: Path) -> tuple[int, list[str]]:
    """Steps trained before this phase (from the ``--init`` weights) and their log lines."""
    config = workdir / "config.json"
    init = json.loads(config.read_text()).get("init") if config.exists() else None
    if not init or not Path(init).exists():
        return 0, []
    prior = int(torch.load(init, weights_only=True).get("steps_trained", 0))
    log = Path(init).parent / "train-log.tsv"
    return prior, log.read_text().splitlines() if log.exists() else []


def export_model(workdir: str, data_dir: str, out_dir: str, name: str, eval_dir: str | None = None) -> Path:
    """Write ``out_dir/name/{encoder,decoder}.onnx`` and register them in ``out_dir/models.toml``.

    The registry's latent shift and scale make each latent channel zero-mean, unit-variance
    over the training photos. With ``eval_dir`` (never the training photos), the entry also
    records the reconstruction PSNR and MS-SSIM measured there.
    """
    state = torch.load(Path(workdir) / "checkpoint.pt", weights_only=True)
    enc, dec = Encoder(), Decoder()
    enc.load_state_dict(state["encoder"])
    dec.load_state_dict(state["decoder"])
    target = Path(out_dir) / name
    export(enc, target / "encoder.onnx", 3, "image", "latent")
    export(dec, target / "decoder.onnx", LATENT_CHANNELS, "latent", "image")
    # fp16 weights (no optimizer state) let a later session start a new phase with --init
    half = {part: {k: v.half() for k, v in m.state_dict().items()} for part, m in (("encoder", enc), ("decoder", dec))}
    prior, history = _earlier_phases(Path(workdir))
    steps = prior + int(state["step"])
    torch.save({**half, "steps_trained": steps}, target / "weights.pt")
    log = Path(workdir) / "log.tsv"
    if log.exists():  # the whole history: earlier phases' log, then this one's with steps counted on
        lines = [line.split("\t") for line in log.read_text().splitlines() if line]
        history += [f"{int(row[0]) + prior}\t" + "\t".join(row[1:]) for row in lines]
        (target / "train-log.tsv").write_text("\n".join(history) + "\n")
    with torch.no_grad():
        mean, std = latent_statistics(lambda x: enc(torch.from_numpy(x)).numpy(), load_photos(data_dir))
    entry = ModelEntry(
        name=name,
        encoder=(target / "encoder.onnx").resolve(),
        decoder=(target / "decoder.onnx").resolve(),
        latent_channels=LATENT_CHANNELS,
        downsample=DOWNSAMPLE,
        input_range=(-1.0, 1.0),
        latent_scale=tuple(round(float(1 / s), 6) for s in std),
        latent_shift=tuple(round(float(m), 6) for m in mean),
        license="MIT",
        description=f"vaeflow's own f8c4 autoencoder, {steps} steps on 30 photos",
    )
    registry = register(entry, Path(out_dir).resolve() / REGISTRY_FILE, aliases=("default",))
    if eval_dir is not None:
        figures = reconstruction(OnnxVAE(entry), load_photos(eval_dir))
        entry = replace(entry, recon_psnr=round(figures["psnr"], 3), recon_ms_ssim=round(figures["ms_ssim"], 4))
        registry = register(entry, Path(out_dir).resolve() / REGISTRY_FILE, aliases=("default",))
    return registry
