"""Every codec at the setting whose rate comes nearest a target bpp, for side-by-side pictures.

The evaluated settings are too coarse for that (JPEG's quality 40 and 50 differ by a fifth in
rate), so each codec's whole setting range is searched on the one image: a bisection over
qualities 1..100 (vaeflow, JPEG, WebP, AVIF, JPEG XL) or over JPEG 2000's compression ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vaeflow.codec.api import decompress, resolve_codec
from vaeflow.reports import codecs

SETTING_RANGE = {"jp2": (2, 2000)}
QUALITY_RANGE = (1, 100)


@dataclass(frozen=True)
class Matched:
    """One codec at the setting nearest the target: the setting, its rate and the decoded picture."""

    codec: str
    setting: int
    bpp: float
    decoded: np.ndarray


def _encoder(image: np.ndarray, codec: str, model: str, pipeline: str | None) -> Callable[[int], bytes]:
    if codec != "vaeflow":
        return lambda setting: codecs.baseline_encode(image, codec, setting)
    base = resolve_codec(model, None, pipeline)
    coeffs = base.transform(base.encode_latents(image[None]))  # the VAE once; each quality codes again
    size = [(image.shape[0], image.shape[1])]

    def encode(quality: int) -> bytes:
        codec_q = base.with_quality(quality)
        return codec_q.entropy_code(codec_q.quantize_coefficients(coeffs), size)[0]  # type: ignore[no-any-return]

    return encode


def at_bpp(
    image: np.ndarray, codec: str, target_bpp: float, model: str = "default", pipeline: str | None = None
) -> Matched:
    """``codec`` on ``image`` at the setting whose bpp is nearest ``target_bpp``."""
    encode = _encoder(image, codec, model, pipeline)
    pixels = image.shape[0] * image.shape[1]
    cache: dict[int, bytes] = {}

    def rate(setting: int) -> float:
        if setting not in cache:
            cache[setting] = encode(setting)
        return 8 * len(cache[setting]) / pixels

    low, high = SETTING_RANGE.get(codec, QUALITY_RANGE)
    falling = codec in codecs.RATIO_SETTINGS  # a higher ratio is a lower rate
    while high - low > 1:  # rates are monotonic in the setting, up to small wiggles
        middle = (low + high) // 2
        if (rate(middle) < target_bpp) != falling:
            low = middle
        else:
            high = middle
    best = min((low, high), key=lambda s: abs(rate(s) - target_bpp))
    data = cache[best]
    decoded = decompress(data) if codec == "vaeflow" else codecs.baseline_decode(data, codec)
    return Matched(codec, best, rate(best), decoded)
