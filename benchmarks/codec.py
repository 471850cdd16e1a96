"""``vaeflow bench codec``: rate, quality, stage times and coder efficiency on a folder of images.

Prints, per quality: mean bpp, PSNR and MS-SSIM; each stage's share of encode and decode
time; the ANS words' size against the ideal information content of the symbols under the
coder's own models. Then the earlier design's quantizer and coder (per-band uint8
min/max, a 1 KiB probability table, ANS) on the same latents, compared at equal PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import vaeflow
from benchmarks import legacy
from vaeflow.codec.api import open_stream, resolve_codec
from vaeflow.codec.codec import ENCODED
from vaeflow.foundations import metrics
from vaeflow.foundations.bdrate import bd_rate, rate_at
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.foundations.timing import StageTimer

LEGACY_LEVELS = (6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
STAGES = ENCODED  # the stages whose shares of the time are shown


@dataclass
class QualityPoint:
    quality: int
    bpp: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ms_ssim: list[float] = field(default_factory=list)
    ans_bytes: int = 0
    ideal_bits: float = 0.0
    encode: StageTimer = field(default_factory=StageTimer)
    decode: StageTimer = field(default_factory=StageTimer)


def load_folder(folder: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    return [(p.name, read_rgb(p)) for p in list_images(folder, limit)]


def measure_quality(images: list[tuple[str, np.ndarray]], quality: int, model: str) -> QualityPoint:
    point = QualityPoint(quality)
    for _, image in images:
        data = vaeflow.compress(image, model=model, quality=quality, timer=point.encode)
        decoded = vaeflow.decompress(data, timer=point.decode)
        point.bpp.append(metrics.bpp(len(data), image.shape))
        point.psnr.append(metrics.psnr(image, decoded))
        point.ms_ssim.append(metrics.ms_ssim(image, decoded))
        header, payload, codec = open_stream(data)
        shape = header.latent_shape
        bands = codec.bands(shape)
        symbols = codec.decode_symbols(payload, shape)[0]
        point.ans_bytes += len(payload) - codec.entropy.side_info_bytes(payload, shape[0], bands)
        point.ideal_bits += codec.entropy.information_bits(symbols, bands)
    return point


def measure_legacy(images: list[tuple[str, np.ndarray]], model: str) -> list[tuple[int, float, float]]:
    """(levels, mean bpp, mean PSNR) of the earlier design on the same latents."""
    codec = resolve_codec(model, 50, "plain")
    sums = {n: [0.0, 0.0] for n in LEGACY_LEVELS}
    for _, image in images:
        coeffs = codec.transform(codec.encode_latents(image[None]))
        bands = codec.bands(coeffs.shape)
        for levels in LEGACY_LEVELS:
            n_bytes, recon = legacy.code(coeffs[0], bands, levels)
            decoded = codec.decode_images(codec.untransform(recon[None]), image.shape[:2])[0]
            sums[levels][0] += metrics.bpp(n_bytes, image.shape)
            sums[levels][1] += metrics.psnr(image, decoded)
    n = len(images)
    return [(levels, s[0] / n, s[1] / n) for levels, s in sums.items()]


def run(folder: Path, qualities: list[int], model: str = "default", limit: int | None = None) -> dict[str, Any]:
    images = load_folder(folder, limit)
    points = [measure_quality(images, q, model) for q in qualities]
    old = measure_legacy(images, model)
    ours_bpp = [float(np.mean(p.bpp)) for p in points]
    ours_psnr = [float(np.mean(p.psnr)) for p in points]
    old_bpp, old_psnr = [o[1] for o in old], [o[2] for o in old]
    rows = []
    for p, bpp, psnr in zip(points, ours_bpp, ours_psnr, strict=True):
        enc_total = sum(p.encode.seconds.values())
        dec_total = sum(p.decode.seconds.values())
        legacy_bpp = rate_at(old_bpp, old_psnr, psnr)
        rows.append(
            {
                "quality": p.quality,
                "bpp": bpp,
                "psnr": psnr,
                "ms_ssim": float(np.mean(p.ms_ssim)),
                "coder_ratio": 8 * p.ans_bytes / p.ideal_bits if p.ideal_bits else float("nan"),
                "encode_share": {s: p.encode.seconds.get(s, 0.0) / enc_total for s in STAGES},
                "decode_share": {s: p.decode.seconds.get(s, 0.0) / dec_total for s in STAGES},
                "encode_s": enc_total / len(images),
                "decode_s": dec_total / len(images),
                "legacy_bpp_at_same_psnr": legacy_bpp,
                "size_vs_legacy": bpp / legacy_bpp if legacy_bpp == legacy_bpp else float("nan"),
            }
        )
    return {
        "images": len(images),
        "model": vaeflow.load_model(model).name,
        "rows": rows,
        "legacy": [{"levels": lv, "bpp": b, "psnr": q} for lv, b, q in old],
        "bd_rate_vs_legacy": bd_rate(old_bpp, old_psnr, ours_bpp, ours_psnr),
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"vaeflow bench codec: {result['images']} images, model {result['model']}", ""]
    lines.append(
        f"{'q':>3} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>7} {'ANS/ideal':>9} {'enc s':>6} {'dec s':>6}  "
        f"encode share (vae/chan/wav/quant/entropy)   decode share        old-design bpp@PSNR  ours/old"
    )
    for r in result["rows"]:
        enc = "/".join(f"{100 * r['encode_share'][s]:.0f}" for s in STAGES)
        dec = "/".join(f"{100 * r['decode_share'][s]:.0f}" for s in STAGES)
        lines.append(
            f"{r['quality']:>3} {r['bpp']:>7.4f} {r['psnr']:>6.2f} {r['ms_ssim']:>7.4f} {r['coder_ratio']:>9.4f} "
            f"{r['encode_s']:>6.3f} {r['decode_s']:>6.3f}  {enc:<38} {dec:<19} {r['legacy_bpp_at_same_psnr']:>10.4f}"
            f"  {r['size_vs_legacy']:>8.3f}"
        )
    lines.append("")
    lines.append("old design (per-band uint8 min/max, 1 KiB float32 table, ANS) on the same latents:")
    for o in result["legacy"]:
        lines.append(f"  {o['levels']:>3} levels: {o['bpp']:.4f} bpp, {o['psnr']:.2f} dB")
    lines.append(f"BD-rate of vaeflow against the old design (PSNR): {result['bd_rate_vs_legacy']:+.1f}%")
    return "\n".join(lines)
