"""Rate control: find the quantizer step that meets a target bpp or PSNR for one image.

The VAE encoder runs once; a bisection over log(step) then re-quantizes and codes (and,
for PSNR, decodes) until the result is within 2% of the bpp target or 0.1 dB of the PSNR
target. The chosen step is written to the stream as an explicit step, with the target and
the figure achieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vaeflow import bitstream, metrics
from vaeflow.models import RuntimeOptions
from vaeflow.pipeline import Codec
from vaeflow.stages.quantize import Quantize

BPP_TOLERANCE = 0.02  # relative
PSNR_TOLERANCE = 0.1  # dB
LOG2_STEP_RANGE = (-10.0, 6.0)
MAX_ITERATIONS = 40


@dataclass(frozen=True)
class Target:
    kind: str  # "bpp" or "psnr"
    value: float

    def __post_init__(self) -> None:
        if self.kind not in bitstream.TARGET_KINDS:
            raise ValueError(f"unknown target {self.kind!r}; choose one of {bitstream.TARGET_KINDS}")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"target {self.kind} must be a positive number, got {self.value!r}")

    def met(self, achieved: float) -> bool:
        if self.kind == "bpp":
            return abs(achieved - self.value) <= BPP_TOLERANCE * self.value
        return abs(achieved - self.value) <= PSNR_TOLERANCE


def compress_to_target(
    image: np.ndarray, codec: Codec, target: Target, runtime: RuntimeOptions | None = None
) -> tuple[bytes, float]:
    """The stream closest to ``target`` within tolerance, and the figure it achieves."""
    size = (image.shape[0], image.shape[1])
    coeffs = codec.transform(codec.encode_latents(image[None], runtime))

    def attempt(log2_step: float) -> tuple[bytes, float]:
        step = float(np.float32(2.0**log2_step))  # exactly what the stream can record
        trial = replace(codec, quantize=Quantize(quality=None, step=step, rounding=codec.quantize.rounding))
        symbols = trial.quantize_coefficients(coeffs)
        stream = trial.entropy_code(symbols, [size], runtime, target=(target.kind, target.value, 0.0))[0]
        if target.kind == "bpp":
            achieved = metrics.bpp(len(stream), size)
        else:
            decoded = trial.decode_images(trial.untransform(trial.dequantize(symbols)), size, runtime)[0]
            achieved = metrics.psnr(image, decoded)
        final = trial.entropy_code(symbols, [size], runtime, target=(target.kind, target.value, achieved))[0]
        return final, achieved

    low, high = LOG2_STEP_RANGE  # small step: high bpp and PSNR; large step: low
    best = attempt(low)
    if best[1] < target.value and not target.met(best[1]):
        raise ValueError(f"target {target.kind} {target.value} is out of reach: the finest step gives {best[1]:.3f}")
    coarse = attempt(high)
    if coarse[1] > target.value and not target.met(coarse[1]):
        raise ValueError(
            f"target {target.kind} {target.value} is out of reach: the coarsest step gives {coarse[1]:.3f}"
        )
    for _ in range(MAX_ITERATIONS):
        if target.met(best[1]):
            return best
        middle = (low + high) / 2
        candidate = attempt(middle)
        if candidate[1] > target.value:
            low = middle
        else:
            high = middle
        if abs(candidate[1] - target.value) < abs(best[1] - target.value):
            best = candidate
    return best
