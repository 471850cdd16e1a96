"""``vaeflow bench rd``: what each refinement of the codec buys, and how it compares.

For each model, on a folder of images, in one run:
- BD-rate (PSNR, and MS-SSIM in dB) of the refined codec against the plain codec core
  (uniform steps; the sequential coder, which writes every new stream), and of each refinement on its
  own: decoder-aware allocation, RDO;
- BD-rate of the refined codec against JPEG, WebP and AVIF, and whether it beats JPEG on
  MS-SSIM at every rate up to 0.5 bpp;
- the near-lossless latent preset: bytes per image against the same latents as fp16 in zarr
  with zstd (level 3) and as 8-bit PNGs, and the PSNR drop against decoding them unquantized;
- the encode and decode time each refinement adds, as a share of the VAE's own time.
Every figure comes from one results document (the results schema) computed in the run.
"""

from __future__ import annotations

import io
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image
from zarr.codecs import ZstdCodec

import vaeflow
from vaeflow.codec.api import resolve_codec
from vaeflow.foundations import metrics
from vaeflow.foundations.bdrate import bd_rate
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.reports.evaluation import Variant, evaluate
from vaeflow.reports.tables import bd_table, leads_below, ms_ssim_db, percent

QUALITIES = [5, 10, 20, 30, 40, 50, 60]


def variants(model: str, refined: str) -> list[Variant]:
    """The plain core (uniform steps; the sequential coder, which writes every new stream), each refinement alone
    on top of it, and the refined preset."""
    plain = resolve_codec(model, None, "plain")
    best = resolve_codec(model, None, refined)
    allocation = plain.replaced(best.channel, replace(plain.quantize, allocation="decoder"))
    channels = []  # a preset with other channel mixing: its effect alone, since allocation is calibrated with it
    if best.channel != plain.channel:
        channels = [Variant(f"+ {best.channel.transform} channels", plain.replaced(best.channel))]
    return [
        Variant("plain", plain),
        *channels,
        Variant(f"+ allocation ({best.channel.transform} channels)", allocation),
        Variant("+ rdo", plain.replaced(replace(plain.quantize, rdo=True))),
        Variant(f"refined ({refined})", best),
    ]


def vae_seconds(model: str, paths: list[Path]) -> tuple[float, float]:
    """Mean VAE encode and decode time per image, alone."""
    m = vaeflow.load_model(model)
    encode = decode = 0.0
    for path in paths:
        image = read_rgb(path)
        start = time.perf_counter()
        latent = m.encode(image[None])
        middle = time.perf_counter()
        m.decode(latent)
        encode, decode = encode + middle - start, decode + time.perf_counter() - middle
    return encode / len(paths), decode / len(paths)


def latent_storage(model: str, paths: list[Path], pipeline: str = "latent-store") -> dict[str, float]:
    """Bytes per image: the latent-store preset, fp16 zarr with zstd 3, 8-bit PNG; and PSNR drop."""
    m = vaeflow.load_model(model)
    ours = fp16 = png = 0
    encode_s = 0.0
    drops, errors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(Path(tmp) / "fp16.zarr", mode="w")
        for i, path in enumerate(paths):
            image = read_rgb(path)
            latent = m.encode(image[None])[0]
            reference = metrics.psnr(image, m.decode(latent[None])[0])
            start = time.perf_counter()
            data = vaeflow.compress(image, model=model, pipeline=pipeline)
            encode_s += time.perf_counter() - start
            ours += len(data)
            drops.append(reference - metrics.psnr(image, vaeflow.decompress(data)))
            errors.append(vaeflow.info(data)["target"]["achieved"])
            group.create_array(str(i), data=latent.astype(np.float16), compressors=ZstdCodec(level=3))
            png += _png_bytes(latent)
        root = Path(tmp) / "fp16.zarr"
        fp16 = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "c" in p.relative_to(root).parts)
    n = len(paths)
    return {
        "preset_bytes": ours / n, "fp16_zstd_bytes": fp16 / n, "png8_bytes": png / n,
        "ratio_fp16": fp16 / ours, "ratio_png8": png / ours,
        "psnr_drop_mean": float(np.mean(drops)), "psnr_drop_max": float(np.max(drops)),
        "latent_error_max": float(np.max(errors)), "encode_s": encode_s / n,
    }  # fmt: skip


def _png_bytes(latent: np.ndarray) -> int:
    """8-bit PNGs of a latent: each channel scaled by its own min and max (stored beside, 8 bytes)."""
    total = 0
    for channel in latent:
        lo, hi = float(channel.min()), float(channel.max())
        pixels = np.rint((channel - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
        total += len(buffer.getvalue()) + 8
    return total


def run_model(folder: Path, model: str, refined: str, limit: int | None, baselines: list[str]) -> dict[str, Any]:
    paths = list_images(folder, limit)
    doc = evaluate(folder, QUALITIES, baselines, model=model, limit=limit, variants=variants(model, refined))
    entries = {e["name"]: e for e in doc["codecs"]}
    plain = entries["plain"]
    best = next(e for e in doc["codecs"] if e["name"].startswith("refined"))
    rows = {}
    for entry in doc["codecs"]:
        if entry is plain or entry["codec"] != "vaeflow":
            continue
        a, t = plain["results"], entry["results"]
        rows[entry["name"]] = {
            "vs_plain_psnr": _bd(a, t, "psnr-rgb"),
            "vs_plain_ms_ssim": _bd(a, t, "ms-ssim-rgb"),
            "encode_s": float(np.mean(t["encode_s"])),
            "decode_s": float(np.mean(t["decode_s"])),
        }
    baseline_rows = [r for r in bd_table(doc) if r["test"] == best["name"] and r["anchor"] in ("JPEG", "WEBP", "AVIF")]
    jpeg = entries.get("JPEG")
    vae_encode, vae_decode = vae_seconds(model, paths)
    return {
        "model": vaeflow.load_model(model).name,
        "images": len(paths),
        "results": doc,
        "techniques": rows,
        "plain_encode_s": float(np.mean(plain["results"]["encode_s"])),
        "plain_decode_s": float(np.mean(plain["results"]["decode_s"])),
        "vae_encode_s": vae_encode,
        "vae_decode_s": vae_decode,
        "baselines": baseline_rows,
        "beats_jpeg_ms_ssim_below_0_5": leads_below(best, jpeg, 0.5) if jpeg else None,
        "latent_store": latent_storage(model, paths),
    }


def _bd(anchor: dict[str, list[float]], test: dict[str, list[float]], metric: str) -> float:
    if metric == "ms-ssim-rgb":
        return bd_rate(anchor["bpp"], ms_ssim_db(anchor[metric]), test["bpp"], ms_ssim_db(test[metric]))
    return bd_rate(anchor["bpp"], anchor[metric], test["bpp"], test[metric])


def run(folder: Path, models: list[tuple[str, str]], limit: int | None, baselines: list[str]) -> dict[str, Any]:
    return {"models": [run_model(folder, m, preset, limit, baselines) for m, preset in models]}


def report(result: dict[str, Any]) -> str:
    lines = []
    for r in result["models"]:
        lines.append(f"model {r['model']}, {r['images']} images; BD-rate against the plain codec core:")
        lines.append(
            f"  {'variant':<28} {'PSNR':>8} {'MS-SSIM':>8}   {'encode +':>9} {'decode +':>9} (share of VAE time)"
        )
        for name, t in r["techniques"].items():
            enc = (t["encode_s"] - r["plain_encode_s"]) / r["vae_encode_s"]
            dec = (t["decode_s"] - r["plain_decode_s"]) / r["vae_decode_s"]
            lines.append(
                f"  {name:<28} {t['vs_plain_psnr']:>+7.1f}% {t['vs_plain_ms_ssim']:>+7.1f}%   {enc:>+9.3f} {dec:>+9.3f}"
            )
        lines.append(f"  VAE alone: encode {r['vae_encode_s']:.3f} s, decode {r['vae_decode_s']:.3f} s per image")
        for b in r["baselines"]:
            lines.append(
                f"  refined vs {b['anchor']:<5}: BD-rate PSNR {percent(b['bd_rate_psnr'])}, "
                f"MS-SSIM {percent(b['bd_rate_ms_ssim'])} (common "
                f"{b['common_bpp'][0]:.3f}..{b['common_bpp'][1]:.3f} bpp)"
            )
        lines.append(f"  beats JPEG on MS-SSIM at every rate <= 0.5 bpp: {r['beats_jpeg_ms_ssim_below_0_5']}")
        s = r["latent_store"]
        lines.append(
            f"  latent-store: {s['preset_bytes']:.0f} B/image; fp16+zstd {s['fp16_zstd_bytes']:.0f} B "
            f"(x{s['ratio_fp16']:.2f}); 8-bit PNG {s['png8_bytes']:.0f} B (x{s['ratio_png8']:.2f}); PSNR drop mean "
            f"{s['psnr_drop_mean']:.3f} dB, max {s['psnr_drop_max']:.3f}; latent error max "
            f"{s['latent_error_max']:.3f}; encode {s['encode_s']:.2f} s per image "
            f"({s['encode_s'] / r['vae_encode_s']:.1f}x the VAE encoder's)"
        )
        lines.append("")
    return "\n".join(lines)
