"""Train the f8c4 autoencoder on CPU, resumably (needs the ``train`` extra).

Each call trains until ``--steps`` or until ``--minutes`` run out, then writes a
checkpoint; calling it again resumes. Crops and noise come from generators seeded by
(seed, step), so a run split over any number of calls trains the same model.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from training import f8c4, f8c12
from vaeflow.convert.onnx_export import export
from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.models.onnx_vae import OnnxVAE
from vaeflow.models.quality import reconstruction
from vaeflow.models.registry import REGISTRY_FILE, ModelEntry, read_registry_file, register

ARCHITECTURES: dict[str, ModuleType] = {"f8c4": f8c4, "f8c12": f8c12}
QUANTIZE = ("noise", "round")


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str  # one folder, or several joined by os.pathsep
    workdir: str
    model: str = "f8c4"
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
    log_every: int = 50
    init: str | None = None  # weights to start a new phase from (e.g. the shipped weights.pt)
    # Rate (f8c12): loss = MSE + rate_weight x bits per pixel, the bits of the latent under a learned
    # factorized density at a quantization step drawn per image, log-uniform in [step_low, step_high]
    # (a quarter of each batch unquantized); rate_weight = 4 / (lambda x 255^2), lambda as CompressAI's.
    rate_lambda: float = 0.0
    step_low: float = 0.5
    step_high: float = 3.0
    rate_ramp: int = 1000
    # what the decoder sees of a quantized latent: "noise" (uniform noise of the step's width) or "round"
    # (the latent rounded to the step, gradients passed straight through); the rate is the noisy latent's
    quantize: str = "noise"
    widen: str | None = None  # f8c12: start from these f8c4-v1 weights.pt, widened (models/f8c4-v1)


def load_photos(data_dir: str) -> list[np.ndarray]:
    return [read_rgb(p) for folder in data_dir.split(os.pathsep) for p in list_images(folder)]


def architecture(name: str) -> ModuleType:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


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
    arch = architecture(cfg.model)
    if (cfg.rate_lambda > 0 or cfg.widen) and not hasattr(arch, "FactorizedDensity"):
        raise ValueError(f"--rate-lambda and --widen train the f8c12 architecture; {cfg.model!r} takes neither")
    if cfg.rate_lambda > 0 and cfg.batch < 4:
        raise ValueError(f"training for rate needs batches of at least 4 (a quarter unquantized); got {cfg.batch}")
    if cfg.quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {cfg.quantize!r}; choose from {', '.join(QUANTIZE)}")
    if not 0 < cfg.step_low <= cfg.step_high:
        raise ValueError(f"training steps need 0 < low <= high; got {cfg.step_low} and {cfg.step_high}")
    if cfg.widen and cfg.init:
        raise ValueError("give --widen (start from v1's weights) or --init (a new phase), not both")
    workdir = Path(cfg.workdir)  # created once the settings are known to be valid
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / "checkpoint.pt"
    enc, dec = arch.Encoder().eval(), arch.Decoder().eval()  # no layer differs in training
    density = arch.FactorizedDensity(arch.LATENT_CHANNELS) if cfg.rate_lambda > 0 else None
    parts = {"encoder": enc, "decoder": dec, **({"density": density} if density is not None else {})}
    opt = torch.optim.Adam([p for m in parts.values() for p in m.parameters()], lr=cfg.lr)
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        for part, module in parts.items():
            module.load_state_dict(state[part])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    elif cfg.widen:
        arch.widen_from_v1(enc, dec, torch.load(cfg.widen, weights_only=True), latent_std_of(cfg.widen))
    elif cfg.init:  # a new phase from earlier weights: fresh optimizer and schedule
        state = torch.load(cfg.init, weights_only=True)
        enc.load_state_dict({k: v.float() for k, v in state["encoder"].items()})
        dec.load_state_dict({k: v.float() for k, v in state["decoder"].items()})
    photos = load_photos(cfg.data_dir)
    if step == 0:  # a fresh start records its settings; a resumed run keeps them (export reads them)
        (workdir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def save() -> None:
        state = {part: module.state_dict() for part, module in parts.items()}
        buffer = io.BytesIO()
        torch.save({**state, "optimizer": opt.state_dict(), "step": step}, buffer)
        atomic_write(ckpt_path, buffer.getvalue())

    deadline = time.monotonic() + 60 * cfg.minutes
    log = (workdir / "log.tsv").open("a")
    mse_sum, bits_sum, clean_sum, count = 0.0, 0.0, 0.0, 0
    while step < cfg.steps and time.monotonic() < deadline:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        x = torch.from_numpy(sample_batch(photos, cfg, step))
        z = enc(x)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if density is None:
            # Relative uniform noise on half the batch teaches the decoder to tolerate
            # quantization; scaling it by the detached per-channel std stops the encoder
            # from escaping it by growing its latents.
            std = z.detach().std(dim=(0, 2, 3), keepdim=True)
            strength = torch.rand(z.shape[0], 1, 1, 1, generator=gen) * cfg.noise_max
            strength[: z.shape[0] // 2] = 0.0
            noise = (torch.rand(z.shape, generator=gen) - 0.5) * strength * std
            mse = F.mse_loss(dec(z + noise), x)
            loss, bpp, clean = mse, 0.0, mse.detach()
        else:
            mse, clean, bpp_tensor = rate_distortion(enc, dec, density, x, z, cfg, gen)
            weight = 4.0 / (cfg.rate_lambda * 255.0**2) * min(1.0, step / max(1, cfg.rate_ramp))
            loss, bpp = mse + weight * bpp_tensor, float(bpp_tensor.detach())

        opt.zero_grad()
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            opt.step()
            mse_sum, bits_sum, count = mse_sum + float(mse.detach()), bits_sum + bpp, count + 1
            clean_sum += float(clean)
        step += 1
        if step % cfg.log_every == 0 and count:
            psnr = 10 * math.log10(4.0 / (mse_sum / count))
            clean_psnr = 10 * math.log10(4.0 / (clean_sum / count)) if clean_sum else 0.0
            rate = f"\t{bits_sum / count:.4f}\t{clean_psnr:.3f}" if density is not None else ""
            log.write(f"{step}\t{learning_rate(cfg, step):.2e}\t{psnr:.3f}\t{time.time():.0f}{rate}\n")
            log.flush()
            mse_sum, bits_sum, clean_sum, count = 0.0, 0.0, 0.0, 0
        if step % cfg.checkpoint_every == 0:
            save()
    save()
    log.close()
    return {"step": step, "done": step >= cfg.steps, "checkpoint": str(ckpt_path)}


def latent_std_of(weights: str) -> tuple[float, ...]:
    """The latent std per channel of the model whose ``weights.pt`` this is (its registry beside it)."""
    folder = Path(weights).resolve().parent
    table = read_registry_file(folder.parent / REGISTRY_FILE)["models"][folder.name]
    return tuple(1.0 / s for s in table["latent_scale"])


def rate_distortion(
    enc: Any, dec: Any, density: Any, x: torch.Tensor, z: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's MSE, the unquantized quarter's MSE and the quantized images' bits per pixel.

    Each quantized image draws one step, log-uniform over [step_low, step_high] (raw latent units),
    so one model learns a range of steps rather than one; uniform noise of the step's width stands
    for rounding in the rate, and in what the decoder sees unless ``cfg.quantize`` is "round" (the
    latent rounded to the step, as the codec's quantizer does, with straight-through gradients).
    """
    n = z.shape[0]
    low, high = math.log(cfg.step_low), math.log(cfg.step_high)
    step = torch.exp(low + (high - low) * torch.rand(n, 1, 1, 1, generator=gen))
    step[: n // 4] = 0.0
    noisy = z + (torch.rand(z.shape, generator=gen) - 0.5) * step
    errors = ((dec(decoder_input(z, noisy, step, cfg.quantize)) - x) ** 2).mean(dim=(1, 2, 3))
    mse, clean = errors.mean(), errors[: n // 4].detach().mean()
    quantized = slice(n // 4, n)
    bits = density.bits(noisy[quantized], step[quantized])
    bpp = bits.sum() / ((n - n // 4) * x.shape[2] * x.shape[3])
    return mse, clean, bpp


def decoder_input(z: torch.Tensor, noisy: torch.Tensor, step: torch.Tensor, quantize: str) -> torch.Tensor:
    """What the decoder sees in training: the noisy latent, or (``"round"``) the latent rounded to each
    image's step (step 0: as it is) with gradients passed straight through the rounding."""
    if quantize == "noise":
        return noisy
    safe = torch.where(step > 0, step, torch.ones_like(step))
    rounded = torch.where(step > 0, torch.round(z / safe) * safe, z)
    return z + (rounded - z).detach()


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
    """Steps trained before this phase (from the ``--init`` or ``--widen`` weights) and their log lines."""
    config = json.loads((workdir / "config.json").read_text()) if (workdir / "config.json").exists() else {}
    init = config.get("init") or config.get("widen")
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
    config = json.loads((Path(workdir) / "config.json").read_text())
    model = config.get("model", "f8c4")
    arch = architecture(model)
    enc, dec = arch.Encoder(), arch.Decoder()
    enc.load_state_dict(state["encoder"])
    dec.load_state_dict(state["decoder"])
    target = Path(out_dir) / name
    export(enc, target / "encoder.onnx", 3, "image", "latent")
    export(dec, target / "decoder.onnx", arch.LATENT_CHANNELS, "latent", "image")
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
    photos = load_photos(data_dir)
    trained_on = sum(len(list_images(folder)) for folder in config.get("data_dir", data_dir).split(os.pathsep))
    with torch.no_grad():
        mean, std = latent_statistics(lambda x: enc(torch.from_numpy(x)).numpy(), photos)
    entry = ModelEntry(
        name=name,
        encoder=(target / "encoder.onnx").resolve(),
        decoder=(target / "decoder.onnx").resolve(),
        latent_channels=arch.LATENT_CHANNELS,
        downsample=arch.DOWNSAMPLE,
        input_range=(-1.0, 1.0),
        latent_scale=tuple(round(float(1 / s), 6) for s in std),
        latent_shift=tuple(round(float(m), 6) for m in mean),
        license="MIT",
        description=f"vaeflow's own {model} autoencoder, {steps} steps on {trained_on} photos"
        + (", trained for rate" if config.get("rate_lambda") else ""),
    )
    registry = register(entry, Path(out_dir).resolve() / REGISTRY_FILE, aliases=("default",))
    if eval_dir is not None:
        figures = reconstruction(OnnxVAE(entry), load_photos(eval_dir))
        entry = replace(entry, recon_psnr=round(figures["psnr"], 3), recon_ms_ssim=round(figures["ms_ssim"], 4))
        registry = register(entry, Path(out_dir).resolve() / REGISTRY_FILE, aliases=("default",))
    return registry
