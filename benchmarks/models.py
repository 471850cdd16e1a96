"""``vaeflow bench models``: VAE time per megapixel against a bare ONNX Runtime session, each
model's quality ladder (bpp and PSNR of the default preset at qualities 1 to 100), and peak
memory for a 24-megapixel image, tiled against untiled.

The bare session gets the same session options and the same pre-scaled input; the ratio
stage/bare is the cost of vaeflow's padding, scaling and layout handling. Memory runs each
configuration in a fresh process (peak RSS from the OS), under an address-space limit so
that a configuration that does not fit fails cleanly instead of exhausting the machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import vaeflow
from benchmarks.codec import load_folder
from vaeflow.models import RuntimeOptions
from vaeflow.models.quality import reconstruction

BIG_SHAPE = (4000, 6000)  # 24 megapixels
LADDER = (1, 10, 30, 50, 70, 80, 90, 100)
MEMORY_LIMIT_GB = 16


def _elapsed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_model(name: str, images: list[np.ndarray], repeats: int = 7) -> dict[str, float]:
    model = vaeflow.load_model(name)
    lo, hi = model.entry.input_range
    megapixels = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    scaled = [(im.transpose(2, 0, 1)[None].astype(np.float32) * ((hi - lo) / 255) + lo) for im in images]
    latents = [model.encode(im[None]) for im in images]
    scale, shift = model._scale()
    raw = [z / scale + shift for z in latents]
    enc, dec = model.encoder.session, model.decoder.session
    enc_in, dec_in = model.encoder.input_name, model.decoder.input_name
    for im in images[:1]:  # warm-up
        model.decode(model.encode(im[None]))
    # Interleave stage and bare runs so that drift in machine speed hits both alike.
    stage_enc, bare_enc, stage_dec, bare_dec = [], [], [], []
    for _ in range(repeats):
        stage_enc.append(_elapsed(lambda: [model.encode(im[None]) for im in images]))
        bare_enc.append(_elapsed(lambda: [enc.run(None, {enc_in: x}) for x in scaled]))
        stage_dec.append(_elapsed(lambda: [model.decode(z) for z in latents]))
        bare_dec.append(_elapsed(lambda: [dec.run(None, {dec_in: z}) for z in raw]))
    ratio_enc = statistics.median(a / b for a, b in zip(stage_enc, bare_enc, strict=True))
    ratio_dec = statistics.median(a / b for a, b in zip(stage_dec, bare_dec, strict=True))
    med = statistics.median
    return {
        "encode_s_per_mp": med(stage_enc) / megapixels,
        "bare_encode_s_per_mp": med(bare_enc) / megapixels,
        "encode_overhead": ratio_enc,
        "decode_s_per_mp": med(stage_dec) / megapixels,
        "bare_decode_s_per_mp": med(bare_dec) / megapixels,
        "decode_overhead": ratio_dec,
    }


def big_image(seed_image: np.ndarray, shape: tuple[int, int] = BIG_SHAPE) -> np.ndarray:
    reps = (-(-shape[0] // seed_image.shape[0]), -(-shape[1] // seed_image.shape[1]), 1)
    return np.ascontiguousarray(np.tile(seed_image, reps)[: shape[0], : shape[1]])


def _child_peak(name: str, tile: int, seed_path: str) -> dict[str, Any]:
    """Run one 24 MP compress+decompress in a fresh process; returns its peak RSS."""
    code = (
        "import json,resource,time,vaeflow\n"
        "from vaeflow.foundations.imageio import read_rgb\n"
        "from benchmarks.models import big_image, MEMORY_LIMIT_GB\n"
        "lim = MEMORY_LIMIT_GB * 2**30\n"
        "resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n"
        f"img = big_image(read_rgb({seed_path!r}))\n"
        f"rt = vaeflow.RuntimeOptions(tile={tile})\n"
        "t = time.perf_counter()\n"
        f"data = vaeflow.compress(img, model={name!r}, runtime=rt)\n"
        "out = vaeflow.decompress(data, runtime=rt)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'bytes': len(data), 'peak_rss_gb': peak,"
        " 'ok': out.shape == img.shape}))\n"
    )
    checkout = Path(__file__).resolve().parents[1]  # where ``benchmarks`` imports from
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=checkout)
    result: dict[str, Any] = {"tile": tile}
    if proc.returncode == 0:
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        result["error"] = (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]
    return result


def quality_ladder(name: str, images: list[np.ndarray]) -> list[dict[str, float]]:
    """Mean bpp and PSNR of the default preset at each of ``LADDER``'s qualities."""
    rows = []
    for quality in LADDER:
        streams = [vaeflow.compress(im, model=name, quality=quality) for im in images]
        psnr = [
            vaeflow.foundations.metrics.psnr(im, vaeflow.decompress(d)) for im, d in zip(images, streams, strict=True)
        ]
        bpp = [8 * len(d) / (im.shape[0] * im.shape[1]) for im, d in zip(images, streams, strict=True)]
        rows.append({"quality": quality, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr))})
    return rows


def run(folder: Path, models: list[str], limit: int = 4, big: bool = True) -> dict[str, Any]:
    everything = [im for _, im in load_folder(folder)]
    images = everything[:limit]
    out: dict[str, Any] = {"images": len(images), "timing": {}, "memory_24mp": [], "reconstruction": {}, "ladder": {}}
    for name in models:
        out["timing"][name] = time_model(name, images)
        out["reconstruction"][name] = reconstruction(name, everything)
        out["ladder"][name] = quality_ladder(name, everything)
    if big:
        seed = sorted(p for p in folder.iterdir() if p.suffix == ".png")[0]
        untiled = max(BIG_SHAPE) + 8
        for tile in (untiled, RuntimeOptions.tile, 1024):
            out["memory_24mp"].append({"model": models[0], **_child_peak(models[0], tile, str(seed))})
    return out


def report(result: dict[str, Any]) -> str:
    lines = [f"vaeflow bench models: {result['images']} images, times are medians (s per megapixel)", ""]
    lines.append(f"{'model':<12} {'encode':>8} {'bare':>8} {'ratio':>6}   {'decode':>8} {'bare':>8} {'ratio':>6}")
    for name, t in result["timing"].items():
        lines.append(
            f"{name:<12} {t['encode_s_per_mp']:>8.3f} {t['bare_encode_s_per_mp']:>8.3f} {t['encode_overhead']:>6.3f}   "
            f"{t['decode_s_per_mp']:>8.3f} {t['bare_decode_s_per_mp']:>8.3f} {t['decode_overhead']:>6.3f}"
        )
    lines += ["", "reconstruction (encode -> decode, no quantization), all images of the folder:"]
    for name, r in result["reconstruction"].items():
        lines.append(
            f"  {name:<10} PSNR {r['psnr']:.2f} dB, MS-SSIM {r['ms_ssim']:.4f}, "
            f"encode {r['encode_s']:.3f} s, decode {r['decode_s']:.3f} s per image (median)"
        )
    for name, rows in result.get("ladder", {}).items():
        ceiling = result["reconstruction"][name]["psnr"]
        lines += ["", f"quality ladder of {name} (default preset), all images of the folder; ceiling {ceiling:.2f} dB:"]
        lines.append(f"  {'quality':>7} {'bpp':>8} {'PSNR':>7} {'gain':>6}")
        for before, row in zip([None, *rows], rows, strict=False):
            gain = f"{row['psnr'] - before['psnr']:+6.2f}" if before else ""
            lines.append(f"  {row['quality']:>7} {row['bpp']:>8.4f} {row['psnr']:>7.2f} {gain:>6}")
        top, half = rows[-1], next(r for r in rows if r["quality"] == 50)
        lines.append(
            f"  quality 100 against 50: {top['bpp'] / half['bpp']:.2f}x the bits, {top['psnr'] - half['psnr']:+.2f} dB"
        )
    if result["memory_24mp"]:
        lines += [
            "",
            f"24 MP image ({BIG_SHAPE[1]}x{BIG_SHAPE[0]}), compress + decompress, peak RSS of a fresh process:",
        ]
        for m in result["memory_24mp"]:
            label = "untiled" if m["tile"] > max(BIG_SHAPE) else f"tile {m['tile']}"
            peak = f"{m['peak_rss_gb']:.2f} GB" if m.get("peak_rss_gb") else "n/a"
            status = f"{m['seconds']:.1f} s" if "seconds" in m else f"failed: {m['error']}"
            lines.append(f"  {m['model']:<10} {label:<10} peak {peak:<9} {status}")
    return "\n".join(lines)
