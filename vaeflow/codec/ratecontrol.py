"""Rate control: the quantizer step that meets a target bpp, PSNR or latent error, per image.

The VAE encoder runs once; a bisection over log(step) then re-quantizes and measures:
the stream's bpp (within 2%), the decoded PSNR (within 0.1 dB, which decodes through
the VAE at each try), or the largest absolute error of the dequantized latent (the
largest step keeping it at or below the bound; with ``max_psnr_drop``, also keeping the
decoded PSNR within that many dB of decoding the exact latent). The chosen step is written
to the stream as an explicit step, with the target and the figure achieved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vaeflow import metrics
from vaeflow.codec.codec import Codec
from vaeflow.models import RuntimeOptions
from vaeflow.stages import TargetRecord

log = logging.getLogger("vaeflow")

BPP_TOLERANCE = 0.02  # relative
PSNR_TOLERANCE = 0.1  # dB
STEP_RESOLUTION = 0.02  # relative, for the largest step within a latent bound or PSNR drop
LOG2_STEP_RANGE = (-10.0, 6.0)
MAX_ITERATIONS = 40


@dataclass(frozen=True)
class Choice:
    step: float
    symbols: np.ndarray  # (1, C, h, w)
    achieved: float
    drop: float | None = None  # with a PSNR-drop limit: the dB lost against decoding the exact latent


PREDICTION_MARGIN = 0.95  # aim the predicted drop this far below the limit, so that the check rarely fails
CHECKS = 4  # verifying decodes before falling back to a search by decodes alone
UNDERSHOOT = 0.8  # a checked drop below this share of the limit earns a try at a larger step
REFINES = 3  # such tries, each one decode


def predicted_drop(codec: Codec, coeffs: np.ndarray, step: float, exact_mse: float, pixels: int) -> float:
    """The PSNR drop (dB) that quantizing ``coeffs`` at ``step`` should cost, from the decoder's calibration.

    Calibration measured the image's squared error added per unit of coefficient error energy
    in each channel and subband (``band_gains``); the quantizer's actual error in each band,
    weighted so, predicts the error the decoded image gains over decoding the exact latent.
    """
    trial = codec.with_step(step)
    error = (trial.dequantize(trial.quantize_coefficients(coeffs)) - coeffs).astype(np.float64) ** 2
    gains = np.asarray(codec.band_gains, np.float64)
    added = 0.0
    for j, band in enumerate(codec.bands(coeffs.shape)):
        added += float((error[0, :, band.rows, band.cols].sum(axis=(1, 2)) * gains[:, j]).sum())
    if exact_mse == 0.0:
        return math.inf if added > 0 else 0.0
    return 10.0 * math.log10(1.0 + added / (3 * pixels) / exact_mse)


def _met(kind: str, value: float, achieved: float) -> bool:
    if kind == "bpp":
        return abs(achieved - value) <= BPP_TOLERANCE * value
    if kind == "psnr":
        return abs(achieved - value) <= PSNR_TOLERANCE
    return achieved <= value


def search(
    codec: Codec,
    coeffs: np.ndarray,
    size: tuple[int, int],
    image: np.ndarray | None = None,
    runtime: RuntimeOptions | None = None,
) -> Choice:
    """The step for one image's coefficients (1, C, h, w) that meets ``codec``'s target."""
    target = codec.target
    if target is None:
        raise ValueError("the codec has no rate-control target")
    kind, value = target.kind, target.value
    if target.searches_with_image and image is None:
        raise ValueError("target_psnr and max_psnr_drop need the original image")
    latent = codec.untransform(coeffs) if kind == "latent" else None

    def decoded(trial: Codec, symbols: np.ndarray) -> np.ndarray:
        return trial.decode_images(trial.untransform(trial.dequantize(symbols)), size, runtime)[0]  # type: ignore[no-any-return]

    def attempt(log2_step: float) -> Choice:
        step = float(np.float32(2.0**log2_step))  # exactly what the stream can record
        trial = codec.with_step(step)
        symbols = trial.quantize_coefficients(coeffs)
        if kind == "bpp":
            stream = trial.entropy_code(symbols, [size], TargetRecord(kind, value, 0.0))[0]
            achieved = metrics.bpp(len(stream), size)
        elif kind == "psnr":
            achieved = metrics.psnr(image, decoded(trial, symbols))  # type: ignore[arg-type]
        else:
            achieved = float(np.abs(trial.untransform(trial.dequantize(symbols)) - latent).max())
        return Choice(step, symbols, achieved)

    low, high = LOG2_STEP_RANGE  # small step: high bpp and PSNR, low latent error; large step: the reverse
    fine, coarse = attempt(low), attempt(high)
    if kind == "latent":
        if fine.achieved > value:
            raise ValueError(f"latent error bound {value} is out of reach: the finest step gives {fine.achieved:.4g}")
        bounded = coarse if coarse.achieved <= value else _largest(attempt, lambda c: c.achieved <= value, fine, high)
        limit = target.max_psnr_drop
        if limit is None:
            return bounded
        return _within_drop(codec, coeffs, latent, size, image, runtime, attempt, bounded, fine, limit)  # type: ignore[arg-type]
    if fine.achieved < value and not _met(kind, value, fine.achieved):
        raise ValueError(f"target {kind} {value} is out of reach: the finest step gives {fine.achieved:.3f}")
    if coarse.achieved > value and not _met(kind, value, coarse.achieved):
        raise ValueError(f"target {kind} {value} is out of reach: the coarsest step gives {coarse.achieved:.3f}")
    best = fine
    for _ in range(MAX_ITERATIONS):
        if _met(kind, value, best.achieved):
            break
        middle = (low + high) / 2
        candidate = attempt(middle)
        if candidate.achieved > value:
            low = middle
        else:
            high = middle
        if abs(candidate.achieved - value) < abs(best.achieved - value):
            best = candidate
    if not _met(kind, value, best.achieved):  # steps too coarse to land closer: the record says what was reached
        log.warning("%s target %s met only to %.4g after %d tries", kind, value, best.achieved, MAX_ITERATIONS)
    return best


def _within_drop(
    codec: Codec,
    coeffs: np.ndarray,
    latent: np.ndarray,
    size: tuple[int, int],
    image: np.ndarray,
    runtime: RuntimeOptions | None,
    attempt: Callable[[float], Choice],
    bounded: Choice,
    fine: Choice,
    limit: float,
) -> Choice:
    """The largest step within the latent bound whose decoded PSNR is within ``limit`` dB of the exact
    latent's: predicted from the calibration, then checked by decoding it (refined only when the check
    fails). The exact latent is decoded once, as the reference."""
    exact_mse = metrics.mse(image, codec.decode_images(latent, size, runtime)[0])
    pixels = size[0] * size[1]

    losses: dict[float, float] = {}  # step -> its measured drop: each step decoded once

    def drop(c: Choice) -> float:
        """dB of PSNR lost against decoding the exact latent (inf if that was lossless and this is not)."""
        if c.step not in losses:
            trial = codec.with_step(c.step)
            latents = trial.untransform(trial.dequantize(c.symbols))
            mse = metrics.mse(image, trial.decode_images(latents, size, runtime)[0])
            lossless = 0.0 if mse == 0.0 else math.inf
            losses[c.step] = lossless if exact_mse == 0.0 else 10.0 * math.log10(max(mse, 1e-300) / exact_mse)
        return losses[c.step]

    def found(c: Choice, lost: float) -> Choice:
        return Choice(c.step, c.symbols, c.achieved, lost)

    if codec.band_gains is not None:

        def largest_predicted(aim: float, top: float) -> Choice:
            """The largest step within the latent bound whose predicted drop is at most ``aim``."""
            if predicted_drop(codec, coeffs, bounded.step, exact_mse, pixels) <= aim:
                return bounded
            return _largest(
                attempt, lambda c: predicted_drop(codec, coeffs, c.step, exact_mse, pixels) <= aim, fine, top
            )

        aim, top = limit * PREDICTION_MARGIN, float(np.log2(bounded.step))
        for _ in range(CHECKS):
            chosen = largest_predicted(aim, top)
            lost = drop(chosen)
            predicted = predicted_drop(codec, coeffs, chosen.step, exact_mse, pixels)
            if lost <= limit:
                return found(*_closer(attempt, drop, chosen, lost, bounded, limit))
            # the prediction was short by the factor the check shows: aim lower by as much
            aim *= PREDICTION_MARGIN * (predicted / lost if math.isfinite(lost) and lost > 0 else 0.5)
            top = float(np.log2(chosen.step))
    # no calibration, or the prediction kept missing: search by decodes
    top, first = float(np.log2(bounded.step)), drop(bounded)
    if first <= limit:
        return found(bounded, first)
    guess = top + 0.5 * math.log2(limit / first) - 0.05 if math.isfinite(first) else top - 0.5
    upper = top
    for below in (guess, guess - 0.25, guess - 0.5, guess - 1.0, guess - 2.0, guess - 4.0):
        if below <= LOG2_STEP_RANGE[0]:
            break
        feasible = attempt(below)
        lost = drop(feasible)
        if lost <= limit:
            best = _largest(attempt, lambda c: drop(c) <= limit, feasible, upper)
            return found(best, drop(best) if best is not feasible else lost)
        upper = below
    lost = drop(fine)
    if lost <= limit:
        best = _largest(attempt, lambda c: drop(c) <= limit, fine, upper)
        return found(best, drop(best) if best is not fine else lost)
    raise ValueError(
        f"PSNR drop limit {limit} dB is out of reach: the finest step, {fine.step:.3g}, loses {lost:.3f} dB"
    )


def _closer(
    attempt: Callable[[float], Choice],
    drop: Callable[[Choice], float],
    chosen: Choice,
    lost: float,
    bounded: Choice,
    limit: float,
) -> tuple[Choice, float]:
    """From a checked step well inside the drop limit, up to ``REFINES`` larger ones, each checked:
    the drop taken to grow as a power of the step (its exponent 2 until two checks measure it),
    and never beyond halfway (in log step) to a step found over the limit."""
    passed, passed_drop = chosen, lost
    failed: float | None = None  # log2 of the smallest step found over the limit
    exponent = 2.0
    for _ in range(REFINES):
        if passed is bounded or not 0 < passed_drop < UNDERSHOOT * limit:
            break
        here = math.log2(passed.step)
        up = here + math.log2(PREDICTION_MARGIN * limit / passed_drop) / exponent
        up = min(up, math.log2(bounded.step), (here + failed) / 2 if failed is not None else math.inf)
        larger = attempt(up)
        if larger.step <= passed.step:
            break
        higher = drop(larger)
        if math.isfinite(higher) and higher > passed_drop > 0:
            exponent = max(0.5, math.log2(higher / passed_drop) / (math.log2(larger.step) - here))
        if higher <= limit:
            passed, passed_drop = larger, higher
        else:
            failed = math.log2(larger.step)
    return passed, passed_drop


def _largest(attempt: Callable[[float], Choice], ok: Callable[[Choice], bool], feasible: Choice, high: float) -> Choice:
    """The largest step (within STEP_RESOLUTION) that ``ok`` accepts, between ``feasible`` and 2**high."""
    low = float(np.log2(feasible.step))
    while high - low > np.log2(1 + STEP_RESOLUTION):
        middle = (low + high) / 2
        trial = attempt(middle)
        if ok(trial):
            low, feasible = middle, trial
        else:
            high = middle
    return feasible


def encode_to_target(
    codec: Codec, images: np.ndarray, coeffs: np.ndarray, runtime: RuntimeOptions | None = None
) -> list[bytes]:
    """One stream per image (with its coefficients), each at the step its own search chose."""
    streams = []
    for i, image in enumerate(images):
        size = (image.shape[0], image.shape[1])
        choice = search(codec, coeffs[i : i + 1], size, image, runtime)
        streams += record(codec, choice, size)
    return streams


def record(codec: Codec, choice: Choice, size: tuple[int, int]) -> list[bytes]:
    """The stream of a searched choice, with its target and the figure achieved."""
    target = codec.target
    if target is None:
        raise ValueError("the codec has no rate-control target")
    drop_limit = target.max_psnr_drop if choice.drop is not None else None
    kept = TargetRecord(target.kind, target.value, choice.achieved, drop_limit, choice.drop)
    return codec.with_step(choice.step).entropy_code(choice.symbols, [size], kept)
