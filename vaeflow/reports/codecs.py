"""The codecs an evaluation runs: vaeflow at several qualities, and JPEG, WebP, AVIF, JPEG XL and JPEG 2000.

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

from vaeflow.codec.api import compress, decompress, resolve_codec
from vaeflow.foundations import metrics
from vaeflow.foundations.imageio import read_rgb


@dataclass(frozen=True)
class Baseline:
    """A conventional codec to compare with: its name in reports, what its setting means, and defaults."""

    label: str
    setting: str  # what one setting is, for reports
    settings: tuple[int, ...]  # the default settings, lowest rate first
    library: str


# Qualities from 5: below that JPEG and WebP are far from any practical setting and flatter the comparison.
QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
BASELINES = {
    "jpeg": Baseline("JPEG", "quality", QUALITIES, "Pillow"),
    "webp": Baseline("WEBP", "quality (method 6)", QUALITIES, "Pillow"),
    "avif": Baseline("AVIF", "quality", QUALITIES, "Pillow"),
    "jxl": Baseline("JPEG XL", "quality (effort 7)", QUALITIES, "imagecodecs (libjxl)"),
    "jp2": Baseline("JPEG 2000", "compression ratio", (400, 200, 120, 80, 50, 30, 20, 12), "Pillow (OpenJPEG)"),
}
BASELINE_QUALITIES = QUALITIES
DEFAULT_BASELINES = ("jpeg", "webp", "avif")
PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "jp2": "JPEG2000"}
RATIO_SETTINGS = frozenset({"jp2"})  # settings are compression ratios: a higher setting is a lower rate


def check_baselines(names: list[str]) -> None:
    """Refuse unknown baselines, and those this installation cannot write, saying what to install."""
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        if name == "jxl":
            if not _jpegxl_available():
                raise ValueError("the jxl baseline needs imagecodecs with JPEG XL: pip install 'vaeflow[baselines]'")
            continue
        if name == "avif" and not features.check("avif"):
            with contextlib.suppress(ImportError):
                import pillow_avif  # noqa: F401  # Pillow before 11.3: AVIF through the plugin
            if "AVIF" in Image.SAVE:
                continue
        feature = {"jpeg": "jpg", "jp2": "jpg_2000"}.get(name, name)
        if not features.check(feature):
            hint = {"avif": " (Pillow 11.3 or later, or pillow-avif-plugin, can)",
                    "jp2": " (a Pillow built with OpenJPEG, as its wheels are, can)"}.get(name, "")  # fmt: skip
            raise ValueError(f"this Pillow cannot write {BASELINES[name].label}{hint}")


def _jpegxl_available() -> bool:
    try:
        import imagecodecs  # optional (the baselines extra), only for JPEG XL
    except ImportError:
        return False
    return bool(imagecodecs.JPEGXL.available)


def baseline_encode(image: np.ndarray, name: str, setting: int) -> bytes:
    """``image`` through a baseline codec at one setting (a quality, or a ratio for JPEG 2000)."""
    if name == "jxl":
        import imagecodecs  # optional (the baselines extra), only for JPEG XL

        return bytes(imagecodecs.jpegxl_encode(image, level=setting, effort=7))
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": setting}
    if name == "webp":
        options["method"] = 6
    if name == "jp2":
        options = {"quality_mode": "rates", "quality_layers": [float(setting)], "irreversible": True}
    Image.fromarray(image).save(buffer, format=PILLOW_FORMATS[name], **options)
    return buffer.getvalue()


def baseline_decode(data: bytes, name: str = "") -> np.ndarray:
    if name == "jxl":
        import imagecodecs  # optional (the baselines extra), only for JPEG XL

        return np.asarray(imagecodecs.jpegxl_decode(data))[..., :3]
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


pillow_encode, pillow_decode = baseline_encode, baseline_decode  # the names before JPEG XL


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
        data = baseline_encode(image, spec.codec, quality)
        encoded = time.perf_counter()
        decoded = baseline_decode(data, spec.codec)
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
    data = baseline_encode(image, codec, setting)
    return baseline_decode(data, codec), len(data)
