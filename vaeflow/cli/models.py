"""vaeflow models list / import / add."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vaeflow.cli.parsing import positive_int
from vaeflow.codec.calibrate import calibrate_model
from vaeflow.foundations.errors import ModelError
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.models import registry as model_registry
from vaeflow.models.quality import reconstruction
from vaeflow.models.registry import ModelEntry, Registry, home_dir
from vaeflow.stages.quantize import SCALE_QUALITIES


def register(commands: Any) -> None:
    models = commands.add_parser("models", help="list, import and add VAE models")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="show every registered model with its figures")
    p.set_defaults(run=run_list)

    p = sub.add_parser("import", help="convert TAE weights or a diffusers VAE folder to ONNX and register them")
    p.add_argument(
        "--kind",
        choices=["tae", "diffusers"],
        required=True,
        help="tae: TAESD..TAEF2 state dicts (--encoder, --decoder); diffusers: a VAE folder (DIR; diffusers extra)",
    )
    p.add_argument("folder", type=Path, nargs="?", metavar="DIR", help="diffusers VAE folder (config.json + weights)")
    p.add_argument("--encoder", type=Path, help=".pth or .safetensors encoder state dict")
    p.add_argument("--decoder", type=Path, help=".pth or .safetensors decoder state dict")
    p.add_argument("--name", required=True, help="the name to register the model under")
    p.add_argument("--license", default=None, help="default: MIT for tae, the folder's model card for diffusers")
    p.add_argument("--data", type=Path, default=None, help="diffusers: photos for latent statistics and calibration")
    p.add_argument("--fp16", action="store_true", help="diffusers: float16 graphs, for GPUs")
    p.add_argument("--no-calibrate", action="store_true", help="diffusers: skip measuring the decoder's sensitivity")
    p.add_argument("--eval", type=Path, default=None, help="images to measure and record the reconstruction on")
    p.set_defaults(run=run_import)

    p = sub.add_parser("calibrate", help="measure how much each channel and subband matters through the decoder")
    p.add_argument("name", help="registered model name")
    p.add_argument("--data", type=Path, required=True, help="calibration photos (not the evaluation set)")
    p.add_argument("--channel", default="hadamard", choices=["hadamard", "identity"], help="channel transform")
    p.add_argument("--wavelet", default="cdf97", choices=["haar", "cdf53", "cdf97"], help="wavelet")
    p.add_argument("--levels", type=positive_int, default=3, help="wavelet levels")
    p.add_argument("--limit", type=positive_int, default=8, help="number of photos (centre crops) for the band gains")
    p.add_argument(
        "--drops-only",
        action="store_true",
        help="keep the band gains and quality scale; fit only the drop model (PSNR-drop predictions)",
    )
    p.set_defaults(run=run_calibrate)

    p = sub.add_parser("scale", help="show a model's quality scale: the step and PSNR of each quality")
    p.add_argument("name", help="registered model name")
    p.set_defaults(run=run_scale)

    p = sub.add_parser("add", help="register ONNX encoder and decoder files exported elsewhere")
    p.add_argument("--encoder", type=Path, required=True, help="ONNX encoder file")
    p.add_argument("--decoder", type=Path, required=True, help="ONNX decoder file")
    p.add_argument("--name", required=True, help="the name to register the model under")
    p.add_argument("--latent-channels", type=positive_int, required=True, help="channels of the latent")
    p.add_argument("--downsample", type=positive_int, default=8, help="the encoder's spatial downsampling factor")
    p.add_argument("--input-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LOW", "HIGH"),
                   help="the pixel range the encoder takes")  # fmt: skip
    p.add_argument("--latent-scale", type=float, default=1.0, help="e.g. 0.18215 for SD, 0.13025 for SDXL")
    p.add_argument("--latent-shift", type=float, default=0.0, help="subtracted from the raw latent before scaling")
    p.add_argument("--license", default="unknown", help="the model's licence, recorded in the registry")
    p.set_defaults(run=run_add)


def run_list(args: argparse.Namespace) -> int:
    registry = Registry.load()
    aliases: dict[str, list[str]] = {}
    for alias, target in registry.aliases.items():
        aliases.setdefault(target, []).append(alias)
    print(f"{'name':<16} {'aliases':<10} {'C':>3} {'f':>3} {'PSNR':>6} {'MS-SSIM':>7}  license  source")
    for name, e in sorted(registry.entries.items()):
        psnr = f"{e.recon_psnr:.2f}" if e.recon_psnr else "-"
        msssim = f"{e.recon_ms_ssim:.4f}" if e.recon_ms_ssim else "-"
        print(
            f"{name:<16} {','.join(aliases.get(name, [])) or '-':<10} {e.latent_channels:>3} {e.downsample:>3} "
            f"{psnr:>6} {msssim:>7}  {e.license:<8} {e.source}"
        )
    return 0


def run_import(args: argparse.Namespace) -> int:
    if args.kind == "diffusers":
        if args.folder is None or args.encoder or args.decoder:
            raise ModelError("--kind diffusers takes one VAE folder DIR (config.json, weights), not --encoder")
        try:
            from vaeflow.convert.diffusers_vae import import_diffusers  # torch and diffusers, only for converting
        except ImportError as exc:
            raise ModelError(f"importing diffusers VAEs needs: pip install 'vaeflow[diffusers]' ({exc})") from exc
        calibrate = not args.no_calibrate
        path = import_diffusers(
            args.folder, args.name, license=args.license, data=args.data, fp16=args.fp16, calibrate=calibrate
        )
    else:
        if args.encoder is None or args.decoder is None or args.folder is not None:
            raise ModelError("--kind tae takes --encoder and --decoder state dicts, not a folder")
        try:
            from vaeflow.convert.tae import import_tae  # torch, only for converting weights
        except ImportError as exc:
            raise ModelError(f"importing weights needs PyTorch: pip install 'vaeflow[convert]' ({exc})") from exc
        path = import_tae(args.encoder, args.decoder, args.name, home_dir(), args.license or "MIT")
    entry = Registry.load().resolve(args.name)
    print(f"registered {args.name!r} in {path} (decoder fingerprint {entry.fingerprint().hex()})")
    if args.eval is not None:
        figures = reconstruction(args.name, [read_rgb(p) for p in list_images(args.eval)])
        recorded = replace(entry, recon_psnr=round(figures["psnr"], 3), recon_ms_ssim=round(figures["ms_ssim"], 4))
        model_registry.register(recorded, path)
        print(f"reconstruction on {args.eval}: PSNR {figures['psnr']:.2f} dB, MS-SSIM {figures['ms_ssim']:.4f}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    entry = ModelEntry(
        name=args.name,
        encoder=args.encoder.resolve(),
        decoder=args.decoder.resolve(),
        latent_channels=args.latent_channels,
        downsample=args.downsample,
        input_range=tuple(args.input_range),  # type: ignore[arg-type]
        latent_scale=(args.latent_scale,),
        latent_shift=(args.latent_shift,),
        license=args.license,
    )
    entry.validate()
    for path in (entry.encoder, entry.decoder):
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
    path = model_registry.register(entry)
    print(f"registered {args.name!r} in {path}")
    return 0


def run_scale(args: argparse.Namespace) -> int:
    entry = Registry.load().resolve(args.name)
    if not entry.quality_scale:
        print(f"{entry.name}: no quality scale of its own, so qualities follow the global one (step 5 * "
              f"2^(-(q-1)/10.5)); `vaeflow models calibrate {entry.name} --data PHOTOS` measures one")  # fmt: skip
        return 0
    for key, (steps, psnr) in entry.quality_scale.items():
        print(f"{entry.name} ({key}): quality, base step, mean PSNR on its calibration crops")
        for quality, step, value in zip(SCALE_QUALITIES, steps, psnr, strict=True):
            print(f"{quality:>7} {step:>10.5g} {value:>8.2f} dB")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    path, gains, drops = calibrate_model(
        args.name, args.data, args.channel, args.wavelet, args.levels, args.limit, args.drops_only
    )
    key = f"{args.channel}-{args.wavelet}-{args.levels}"
    measured = (
        ""
        if gains is None
        else f"gains span {gains.max() / gains.min():.1f}x, arithmetic/geometric mean "
        f"{gains.mean() / np.exp(np.log(gains).mean()):.2f}; "
    )
    if drops is None:
        predicted = "no drop model (too few crops showed a measurable drop)"
    else:
        predicted = (
            f"PSNR drops predicted to a spread of {drops.measured_sigma:.0%} with the exact decode measured, "
            f"{drops.predicted_sigma:.0%} without ({drops.samples} crops)"
        )
    print(f"calibrated {args.name!r} ({key}): {measured}{predicted}; written to {path}")
    return 0
