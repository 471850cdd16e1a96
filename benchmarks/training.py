"""``vaeflow bench training``: does a diffusion model trained from a lossy latent store come out worse?

    vaeflow bench training --train DIR --eval DIR [--model NAME] [--steps N] [--seeds K] [--batch-size B]
                           [--prediction epsilon|v] [--jobs J] [--work DIR] [--json FILE] [--plot FILE]

The latents of the ``--train`` folder's images are kept six ways (:data:`VARIANTS`): ``exact`` (float32,
``vaeflow.encode_latent``), ``fp16``, ``latent-store`` (the preset, read back through ``LatentDataset``),
``default`` (the default preset at its default quality, likewise), ``int8`` (each exact latent rounded to
one uniform step, the largest whose decoded PSNR drop stays within the latent-store stream's limit for that
image, int8) and ``quality-30`` (the default preset at quality 30: a control that must show damage).
The same small denoiser (``benchmarks/denoiser.py``) is trained on each, with the same seeds, initial
weights, crops, flips, timesteps and noise; then its loss (epsilon or v prediction) is measured on the exact
latents of the ``--eval`` folder at fixed noise levels of SD/SDXL's schedule, over fixed noise draws, and on
that variant's own latents of the evaluation folder (what it learned about its quantization). Runs are
single-threaded and independent: the figures are the same for any ``--jobs``.

Every variant's latents are normalised by the exact training latents' per-channel mean and standard
deviation. ``--work DIR`` keeps the stores and prepared latents and reuses them when the folders, model and
names match (the default is a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numcodecs import Zstd

import vaeflow
from benchmarks.denoiser import PREDICTIONS, Run, sigma_of, train_and_evaluate
from vaeflow.cli.parsing import positive_int
from vaeflow.foundations import metrics
from vaeflow.foundations.errors import VaeflowError
from vaeflow.foundations.imageio import IMAGE_SUFFIXES, read_rgb
from vaeflow.torch import LatentDataset

VARIANTS = ("exact", "fp16", "latent-store", "default", "int8", "quality-30")
CONTROL = "quality-30"
STORES = {"latent-store": ("latent-store", None), "default": (None, None), "quality-30": (None, 30)}  # preset, quality
NOISE_LEVELS = (1, 10, 25, 50, 100, 200, 300, 500, 700, 999)  # timesteps of SD/SDXL's 1,000
LOW_NOISE = sum(t <= 50 for t in NOISE_LEVELS)  # the first levels, where a coarse store's damage must show
SAME_WITHIN = 0.01  # or within this fraction of exact's loss
SCHEMA = Path(__file__).with_name("training.schema.json")


@dataclass(frozen=True)
class Settings:
    model: str = "default"
    steps: int = 1000
    seeds: int = 4
    batch_size: int = 16
    crop: int = 16  # latent samples a side
    width: int = 32
    lr: float = 2e-3
    draws: int = 1  # noise draws per evaluation latent and level
    prediction: str = "epsilon"  # or "v"


# Preparing each variant's latents


def _store_latents(folder: Path, store: Path, model: str, preset: str | None, quality: int | None,
                   names: list[str] | None) -> tuple[list[str], list[np.ndarray], list[bytes]]:  # fmt: skip
    """The folder compressed into ``store`` (once) and its latents read back through ``LatentDataset``, in
    ``names``' order (by default the store's names, sorted): the names, the latents and the streams."""
    if not (store / "zarr.json").exists():
        options = vaeflow.JobOptions(progress=False)
        vaeflow.compress_dataset(folder, store, model=model, pipeline=preset, quality=quality, scheduler="sync",
                                 options=options)  # fmt: skip
    reader = vaeflow.open_store(store)
    if reader.failures:
        raise VaeflowError(f"{store}: {len(reader.failures)} images failed, the first: {reader.failures[0]}")
    dataset = LatentDataset(reader, dtype=torch.float32)
    if names is None:
        names = sorted(dataset.names)
    elif sorted(dataset.names) != sorted(names):
        raise VaeflowError(f"{store} holds {len(dataset.names)} images, not the {len(names)} of {folder}")
    index = {name: i for i, name in enumerate(dataset.names)}
    return names, [dataset[index[name]]["latent"].numpy() for name in names], reader.read_streams(names)


def _drop(model: str, image: np.ndarray, latent: np.ndarray, exact_mse: float) -> float:
    decoded = vaeflow.decode_latent(latent, model=model, size=image.shape[:2])
    return 10 * math.log10(max(metrics.mse(image, decoded), 1e-300) / exact_mse)


def uniform_int8(model: str, image: np.ndarray, exact: np.ndarray, limit: float,
                 guess: float) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """The exact latent rounded to the largest uniform step (int8, clipped) whose PSNR drop is within ``limit``,
    found in a few decodes from a first ``guess``: the drop grows as 10 log10(1 + k step^2), k fitted from each
    try. Returns the rounded latent, its step and its measured drop."""
    exact_mse = max(metrics.mse(image, vaeflow.decode_latent(exact, model=model, size=image.shape[:2])), 1e-12)

    def rounded(step: float) -> np.ndarray:
        return (np.clip(np.rint(exact / step), -128, 127) * step).astype(np.float32)

    step, best, drop = guess, None, math.nan
    for _ in range(6):
        drop = _drop(model, image, rounded(step), exact_mse)
        if drop <= limit and (best is None or step > best[1]):
            best = (rounded(step), step, drop)
        gain = max(10 ** (drop / 10) - 1, 1e-9) / step**2
        step = 0.98 * math.sqrt((10 ** (limit / 10) - 1) / gain)  # aimed just inside the limit
        if best is not None and step <= best[1] * 1.03:
            break
    if best is None:
        raise VaeflowError(f"no uniform step keeps the drop within {limit} dB (last {drop:.3f} dB at {step:.4g})")
    return best


def _save(path: Path, latents: list[np.ndarray]) -> None:
    np.savez(path, **{str(i): z for i, z in enumerate(latents)})  # type: ignore[arg-type]


def _int8_bytes(latent: np.ndarray, step: float) -> int:
    return len(Zstd(level=19).encode(np.clip(np.rint(latent / step), -128, 127).astype(np.int8).tobytes()))


def prepare_folder(folder: Path, role: str, model: str, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every variant's latents of one folder, saved as ``work/ROLE-VARIANT.npz``; names, bytes and drops."""
    start = time.perf_counter()
    store_latents, names, streams = {}, None, {}
    for variant, (preset, quality) in STORES.items():  # the names are the first store's: the job's own scan
        names, store_latents[variant], streams[variant] = _store_latents(
            folder, work / f"{role}-{variant}.zarr", model, preset, quality, names
        )
        log(f"  {role}: {variant} store in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
    assert names is not None
    images = [read_rgb(folder / name) for name in names]
    exact = [vaeflow.encode_latent(image, model=model) for image in images]
    log(f"  {role}: {len(names)} exact latents in {time.perf_counter() - start:.0f} s")
    fp16 = [z.astype(np.float16).astype(np.float32) for z in exact]
    latents: dict[str, list[np.ndarray]] = {"exact": exact, "fp16": fp16, **store_latents}
    size = {"exact": sum(z.nbytes for z in exact), "fp16": sum(z.nbytes // 2 for z in exact)}
    size |= {variant: sum(len(s) for s in streams[variant]) for variant in STORES}
    start = time.perf_counter()
    targets = [vaeflow.info(s)["target"] for s in streams["latent-store"]]
    limits = [target["max_psnr_drop"] for target in targets]
    guesses = [float(np.sqrt(12 * np.mean((s - z) ** 2))) for s, z in zip(latents["latent-store"], exact, strict=True)]
    found = [uniform_int8(model, im, z, limit, guess)
             for im, z, limit, guess in zip(images, exact, limits, guesses, strict=True)]  # fmt: skip
    latents["int8"] = [z for z, _, _ in found]
    size["int8"] = sum(_int8_bytes(z, step) for z, step, _ in found)
    log(f"  {role}: int8 steps in {time.perf_counter() - start:.0f} s")
    for variant, values in latents.items():
        if [z.shape for z in values] != [z.shape for z in exact]:
            raise VaeflowError(f"{variant}'s latents of {folder} differ in shape from the exact ones")
        _save(work / f"{role}-{variant}.npz", values)
    return {
        "folder": str(folder),
        "names": names,
        "bytes_per_image": {v: size[v] / len(names) for v in VARIANTS},
        "int8_drops": [d for _, _, d in found],
        "int8_steps": [s for _, s, _ in found],
        "latent_store_drops": [target["psnr_drop"] for target in targets],
    }


def _files(folder: Path) -> list[list[Any]]:
    """Every image file under ``folder`` (the job scans it recursively) with its size: what the prepared
    latents were made from."""
    found = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [[p.relative_to(folder).as_posix(), p.stat().st_size] for p in sorted(found)]


def prepare(train: Path, eval: Path, model: str, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Both folders' variants, reused from ``work`` when they were prepared there from the same folders and
    model and the folders still hold the same image files (names, searched recursively as the job does, and sizes)."""
    key = {
        "model": model,
        "train": str(train.resolve()),
        "eval": str(eval.resolve()),
        "train_files": _files(train),
        "eval_files": _files(eval),
    }
    done = work / "prepared.json"
    if done.exists():
        found = json.loads(done.read_text())
        if found["key"] == key:
            log(f"latents prepared in {work} before: reused")
            return found  # type: ignore[no-any-return]
        raise VaeflowError(f"{work} holds latents of other folders or another model: give an empty --work folder")
    log(f"preparing the latents of every variant in {work} ...")
    prepared = {"key": key, "train": prepare_folder(train, "train", model, work, log),
                "eval": prepare_folder(eval, "eval", model, work, log)}  # fmt: skip
    done.write_text(json.dumps(prepared))
    return prepared


# Training every variant with every seed


def runs(settings: Settings, work: Path, timesteps: tuple[int, ...]) -> list[Run]:
    with np.load(work / "train-exact.npz") as arrays:
        exact = [arrays[f] for f in arrays.files]
    flat = np.concatenate([z.reshape(z.shape[0], -1) for z in exact], axis=1)
    mean, std = flat.mean(axis=1), flat.std(axis=1)
    template = Run("exact", 0, work / "train-exact.npz", work / "eval-exact.npz", work / "eval-exact.npz",
                   tuple(map(float, mean)), tuple(map(float, std)), settings.steps, settings.batch_size, settings.crop,
                   settings.width, settings.lr, timesteps, settings.draws, settings.prediction)  # fmt: skip

    def one(variant: str, seed: int) -> Run:
        train, own = work / f"train-{variant}.npz", work / f"eval-{variant}.npz"
        return replace(template, variant=variant, seed=seed, train=train, eval_own=own)

    return [one(variant, seed) for seed in range(settings.seeds) for variant in VARIANTS]


def train_all(all_runs: list[Run], jobs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    start, results = time.perf_counter(), []

    def done(result: dict[str, Any]) -> None:
        results.append(result)
        log(f"  {result['variant']} seed {result['seed']} ({len(results)} of {len(all_runs)}, "
            f"{time.perf_counter() - start:.0f} s)")  # fmt: skip

    if jobs == 1:
        for run in all_runs:
            done(train_and_evaluate(run))
        return results
    context = multiprocessing.get_context("spawn")  # no fork of a process that has run torch's thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        for future in as_completed([pool.submit(train_and_evaluate, run) for run in all_runs]):
            done(future.result())
    return results


def run(train: Path, eval: Path, settings: Settings, work: Path, jobs: int = 2,
        log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    prepared = prepare(train, eval, settings.model, work, log)
    prepared_s = time.perf_counter() - start
    log(f"training {len(VARIANTS)} variants x {settings.seeds} seeds, {settings.steps} steps each, {jobs} at once")
    results = train_all(runs(settings, work, NOISE_LEVELS), jobs, log)
    variants: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        mine = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        variants[variant] = {
            "loss": [r["loss"] for r in mine],
            "own_loss": [r["own_loss"] for r in mine],
            "train_loss": [r["train_loss_last"] for r in mine],
            "bytes_per_image": prepared["train"]["bytes_per_image"][variant],
        }
    return {
        "noise_levels": list(NOISE_LEVELS),
        "sigmas": [sigma_of(t) for t in NOISE_LEVELS],
        "variants": variants,
        "model": vaeflow.load_model(settings.model).name,
        "train": prepared["train"]["folder"],
        "eval": prepared["eval"]["folder"],
        "images": {"train": len(prepared["train"]["names"]), "eval": len(prepared["eval"]["names"])},
        "int8_drops": prepared["train"]["int8_drops"],
        "latent_store_drops": prepared["train"]["latent_store_drops"],
        "settings": asdict(settings),
        "seconds": {"prepare": prepared_s, "total": time.perf_counter() - start},
    }


# Figures


def figures(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant and level: mean loss, the difference to exact (mean over seeds, and its spread over paired
    seeds), exact's seed spread, and whether the difference is within it or within 1% of exact's loss."""
    exact = np.array(result["variants"]["exact"]["loss"])
    exact_mean = exact.mean(axis=0)
    exact_spread = exact.std(axis=0, ddof=1) if len(exact) > 1 else np.zeros_like(exact_mean)
    out = {}
    for name, entry in result["variants"].items():
        loss = np.array(entry["loss"])
        paired = loss - exact
        difference = loss.mean(axis=0) - exact_mean
        same = np.abs(difference) <= np.maximum(exact_spread, SAME_WITHIN * exact_mean)
        out[name] = {
            "mean": loss.mean(axis=0).tolist(),
            "difference": difference.tolist(),
            "relative": (difference / exact_mean).tolist(),
            "paired_spread": (paired.std(axis=0, ddof=1) if len(loss) > 1 else np.zeros_like(exact_mean)).tolist(),
            "same": same.tolist(),
            "worse": (~same & (difference > 0)).tolist(),
            "own": np.array(entry["own_loss"]).mean(axis=0).tolist(),
        }
    out["exact"]["spread"] = exact_spread.tolist()
    return out


def report(result: dict[str, Any]) -> str:
    fig = figures(result)
    settings = result["settings"]
    lines = [
        f"vaeflow bench training: model {result['model']}, trained on {result['images']['train']} images of "
        f"{result['train']}, evaluated on the exact latents of {result['images']['eval']} of {result['eval']}",
        f"  {settings['seeds']} seeds x {settings['steps']} steps, batches of {settings['batch_size']} crops of "
        f"{settings['crop']}x{settings['crop']} latents, width {settings['width']}; {settings['prediction']} "
        f"prediction, SD/SDXL schedule; {result['seconds']['total'] / 60:.1f} min "
        f"({result['seconds']['prepare'] / 60:.1f} preparing)",
        "",
        "held-out loss (exact latents): exact's mean +- its seed spread, and each variant's difference to it in %",
        "(* outside exact's seed spread and 1% of its loss)",
    ]
    others = [v for v in VARIANTS if v != "exact"]
    lines.append(f"{'t':>5} {'sigma':>7} {'exact':>16} " + " ".join(f"{v:>13}" for v in others))
    for level, t in enumerate(result["noise_levels"]):
        exact = f"{fig['exact']['mean'][level]:.4f} +- {fig['exact']['spread'][level]:.4f}"
        cells = []
        for v in others:
            star = "" if fig[v]["same"][level] else "*"
            cells.append(f"{100 * fig[v]['relative'][level]:+12.2f}{star or ' '}")
        lines.append(f"{t:>5} {result['sigmas'][level]:>7.3f} {exact:>16} " + " ".join(cells))
    levels = len(result["noise_levels"])
    lines.append("")
    for v in others:
        same = sum(fig[v]["same"])
        bytes_ = result["variants"][v]["bytes_per_image"] / result["variants"]["fp16"]["bytes_per_image"]
        own = np.mean(np.array(fig[v]["own"][:LOW_NOISE]) / np.array(fig[v]["mean"][:LOW_NOISE]))
        low = result["noise_levels"][LOW_NOISE - 1]
        line = (f"  {v:>12}: same as exact at {same} of {levels} levels; {bytes_:.3f}x fp16's bytes; "
                f"loss on its own latents / on exact, t <= {low}: {own:.3f}")  # fmt: skip
        if v == CONTROL:
            worse = sum(fig[v]["worse"][:LOW_NOISE])
            line += f"; the control: worse at {worse} of the {LOW_NOISE} low-noise levels"
        lines.append(line)
    if not any(fig[CONTROL]["worse"][:LOW_NOISE]):
        lines.append(f"  the control ({CONTROL}) shows no damage at low noise: this run could not see damage, and "
                     "'same as exact' proves nothing (more --steps or --seeds)")  # fmt: skip
    if len(result["variants"]["exact"]["loss"]) < 2:
        lines.append("  one seed: no seed spread, only the 1% margin")
    lines.append(
        f"  int8 steps' drops: largest {max(result['int8_drops']):.3f} dB (latent-store streams: largest "
        f"{max(result['latent_store_drops']):.3f} dB)"
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Each variant's loss difference to exact (in % of exact's) against the noise level, the seed spread as
    a band."""
    from vaeflow.reports.plots import _pyplot

    plt = _pyplot()
    fig = figures(result)
    sigmas = np.array(result["sigmas"])
    exact_mean = np.array(fig["exact"]["mean"])
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    spread = 100 * np.array(fig["exact"]["spread"]) / exact_mean
    axes.fill_between(sigmas, -spread, spread, color="0.85", label="exact: seed spread")
    for name in VARIANTS[1:]:
        relative = 100 * np.array(fig[name]["relative"])
        band = 100 * np.array(fig[name]["paired_spread"]) / exact_mean
        (line,) = axes.plot(sigmas, relative, marker="o", markersize=3, label=name)
        axes.fill_between(sigmas, relative - band, relative + band, color=line.get_color(), alpha=0.15)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel("noise level sigma = sqrt((1 - abar) / abar), SD/SDXL schedule")
    axes.set_ylabel("held-out loss - exact's (% of exact's)")
    axes.set_title(f"Denoiser trained on stored latents, evaluated on exact latents ({result['model']})", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vaeflow bench training", description=__doc__.split("\n\n")[0])
    defaults = Settings()
    count = positive_int
    parser.add_argument("--train", type=Path, required=True, help="folder of training images (../shared/data/photos)")
    parser.add_argument("--eval", type=Path, required=True, help="folder of held-apart images (../shared/data/kodak)")
    parser.add_argument("--model", default=defaults.model, help="registered model (default: default)")
    parser.add_argument("--steps", type=count, default=defaults.steps, help=f"steps per run ({defaults.steps})")
    parser.add_argument("--seeds", type=count, default=defaults.seeds, help=f"seeds per variant ({defaults.seeds})")
    parser.add_argument("--batch-size", type=count, default=defaults.batch_size,
                        help=f"crops per step ({defaults.batch_size})")  # fmt: skip
    parser.add_argument("--prediction", choices=PREDICTIONS, default=defaults.prediction,
                        help="what the denoiser predicts: epsilon (SD/SDXL's) or v (SD 2's) (epsilon)")  # fmt: skip
    parser.add_argument("--jobs", type=count, default=2, help="runs at a time, one thread each (2)")
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the stores and latents here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="also save the plot (.png or .svg)")
    args = parser.parse_args(argv)
    settings = replace(defaults, model=args.model, steps=args.steps, seeds=args.seeds, batch_size=args.batch_size,
                       prediction=args.prediction)  # fmt: skip
    with nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="vaeflow-training-") as work:
        Path(work).mkdir(parents=True, exist_ok=True)
        result = run(args.train, args.eval, settings, Path(work), args.jobs)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
