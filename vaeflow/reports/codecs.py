"""The codecs an evaluation runs: vaeflow at several qualities, and Pillow's JPEG, WebP and AVIF.

Each run reads one image file and returns that image's figures for every setting, in the
results schema's metric names. Reconstructions are not kept; ``reconstruct`` makes one
again when a report needs pictures.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, features

from vaeflow import metrics
from vaeflow.codec.api import compress, decompress, resolve_codec
from vaeflow.imageio import read_rgb

BASELINES = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
BASELINE_QUALITIES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


def check_baselines(names: list[str]) -> None:
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
        if name == "avif" and not features.check("avif"):
            with contextlib.suppress(ImportError):
                import pillow_avif  # noqa: F401  # Pillow before 11.3: AVIF through the plugin
            if "AVIF" in Image.SAVE:
                continue
        if not features.check(name if name != "jpeg" else "jpg"):
            hint = " (Pillow 11.3 or later, or pillow-avif-plugin, can)" if name == "avif" else ""
            raise ValueError(f"this Pillow cannot write {name.upper()}{hint}")


def pillow_encode(image: np.ndarray, name: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": quality}
    if name == "webp":
        options["method"] = 6
    Image.fromarray(image).save(buffer, format=BASELINES[name], **options)
    return buffer.getvalue()


def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _figures(
    image: np.ndarray, decoded: np.ndarray, n_bytes: int, encode_s: float, decode_s: float
) -> dict[str, float]:
    return {
        "bpp": metrics.bpp(n_bytes, image.shape),
        "psnr-rgb": metrics.psnr(image, decoded),
        "ms-ssim-rgb": metrics.ms_ssim(image, decoded),
        "ssim": metrics.ssim(image, decoded),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


@dataclass(frozen=True)
class RunSpec:
    """One task: one image through one codec at every setting."""

    path: str
    codec: str  # "vaeflow" or a baseline name
    settings: tuple[int, ...]
    model: str = "default"
    pipeline: Any = None  # a preset name, or a Codec


def run(spec: RunSpec) -> dict[str, list[float]]:
    image = read_rgb(spec.path)
    return _run_vaeflow(image, spec) if spec.codec == "vaeflow" else _run_baseline(image, spec)


def _collect(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _run_baseline(image: np.ndarray, spec: RunSpec) -> dict[str, list[float]]:
    rows = []
    for quality in spec.settings:
        start = time.perf_counter()
        data = pillow_encode(image, spec.codec, quality)
        encoded = time.perf_counter()
        decoded = pillow_decode(data)
        rows.append(_figures(image, decoded, len(data), encoded - start, time.perf_counter() - encoded))
    return _collect(rows)


def _run_vaeflow(image: np.ndarray, spec: RunSpec) -> dict[str, list[float]]:
    """The VAE encoder runs once; each quality then quantizes, codes and decodes on its own."""
    base = resolve_codec(spec.model, None, spec.pipeline)
    start = time.perf_counter()
    coeffs = base.transform(base.encode_latents(image[None]))
    shared = time.perf_counter() - start
    size = (image.shape[0], image.shape[1])
    rows = []
    for quality in spec.settings:
        codec = base.with_quality(quality)
        start = time.perf_counter()
        data = codec.entropy_code(codec.quantize_coefficients(coeffs), [size])[0]
        encoded = time.perf_counter()
        decoded = decompress(data)
        rows.append(_figures(image, decoded, len(data), shared + encoded - start, time.perf_counter() - encoded))
    return _collect(rows)


def reconstruct(
    image: np.ndarray, codec: str, setting: int, model: str = "default", pipeline: str | None = None
) -> tuple[np.ndarray, int]:
    """The decoded image and its size in bytes, for pictures in a report."""
    if codec == "vaeflow":
        data = compress(image, model=model, quality=setting, pipeline=pipeline)
        return decompress(data), len(data)
    data = pillow_encode(image, codec, setting)
    return pillow_decode(data), len(data)
