"""Rate control: the quantizer step that meets a target bpp, PSNR or latent error, per image.

How each image's step is chosen is a ``RateStrategy``, decided in one place (``strategy_of``):
``FixedStep`` (no target: the codec's own step) or ``TargetSearch`` (the search below). The
one-image API, the dataset's tasks and the benchmarks all quantize and code through it.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from vaeflow.codec.codec import Codec
from vaeflow.codec.dropmodel import DropModel, drop_db, image_features, relative_error
from vaeflow.foundations import metrics
from vaeflow.models import RuntimeOptions
from vaeflow.stages import RateTarget, TargetRecord

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
    drop: float | None = None  # with a PSNR-drop limit: the dB lost against decoding the exact latent, if measured
    predicted: float | None = None  # ... and the dB the calibration predicts without decoding

    @property
    def chosen(self) -> ChosenStep:
        """What was chosen, without the symbols (what a task passes on)."""
        return ChosenStep(self.step, self.achieved, self.drop, self.predicted)


@dataclass(frozen=True)
class ChosenStep:
    """A choice without its symbols: small, for a task's state."""

    step: float
    achieved: float
    drop: float | None = None
    predicted: float | None = None

    def with_symbols(self, symbols: np.ndarray) -> Choice:
        return Choice(self.step, symbols, self.achieved, self.drop, self.predicted)

    @property
    def drops(self) -> tuple[float | None, float | None] | None:
        """(predicted, measured) PSNR drop, or None where neither is known (no PSNR-drop limit)."""
        return None if self.drop is None and self.predicted is None else (self.predicted, self.drop)


# A PSNR-drop limit (``_within_drop``): each figure a spread of the drop model's residuals (natural log).
CHECK_SPREADS = 1.0  # a verified image's first step aims this many spreads below the limit
PREDICT_SPREADS = 2.05  # an unverified image's step: about 2% of images end over the limit
RECHECK_AIM = 0.9  # after a failed check, with the image's own measured correction, aim this far below
UNDERSHOOT = 0.4  # a check that finds less than this share of the limit earns one try at a larger step
UNCALIBRATED_AIM = 0.7  # a model without a drop model: aim this far below on its band gains alone
SEARCH_TRIES = 6  # evaluations of the power-law search for a step (no decoding)
SEARCH_CLOSE = 0.97  # ... which stops when a step within the limits reaches this share of them
PRIOR_WEIGHT = 4  # the calibration's spread counts as this many verified images in a learned margin


def base_error(codec: Codec, coeffs: np.ndarray, dequantized: np.ndarray, pixels: int) -> float:
    """The squared error per image sample that the band gains predict for this quantization error."""
    error = (dequantized - coeffs).astype(np.float64) ** 2
    gains = np.asarray(codec.band_gains, np.float64)
    added = 0.0
    for j, band in enumerate(codec.bands(coeffs.shape)):
        added += float((error[0, :, band.rows, band.cols].sum(axis=(1, 2)) * gains[:, j]).sum())
    return added / (3 * pixels)


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
    *,
    measure: bool = True,
    margin: float | None = None,
) -> Choice:
    """The step for one image's coefficients (1, C, h, w) that meets ``codec``'s target.

    Beside a PSNR-drop limit, ``measure`` says whether this image's drop is measured by decoding
    (verified) or predicted alone, and ``margin`` is the factor an unverified image's predicted
    relative error aims below the limit's (``learned_margin``; default: the calibration's own)."""
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
    if kind == "latent" and target.max_psnr_drop is not None:
        assert image is not None and latent is not None
        return _within_drop(codec, coeffs, latent, size, image, runtime, measure, margin)
    fine, coarse = attempt(low), attempt(high)
    if kind == "latent":
        if fine.achieved > value:
            raise ValueError(f"latent error bound {value} is out of reach: the finest step gives {fine.achieved:.4g}")
        return coarse if coarse.achieved <= value else _largest(attempt, lambda c: c.achieved <= value, fine, high)
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


@dataclass(frozen=True)
class _Trial:
    """A step tried under a PSNR-drop limit: its choice (latent error achieved) and the band gains' error."""

    choice: Choice
    base: float  # squared error per image sample the band gains predict (``base_error``)


def _within_drop(
    codec: Codec,
    coeffs: np.ndarray,
    latent: np.ndarray,
    size: tuple[int, int],
    image: np.ndarray,
    runtime: RuntimeOptions | None,
    measure: bool,
    margin: float | None,
) -> Choice:
    """The step of an image under a latent error bound and a PSNR-drop limit.

    Each step is chosen by prediction alone (``vaeflow.codec.dropmodel``): the largest step within
    the latent bound whose predicted relative error aims a margin below the limit's. An unverified
    image stops there. A verified one first decodes its exact latent (the reference) and aims with
    the measured reference, then decodes the chosen step to check it: a step over the limit is
    chosen again with the image's own measured correction and checked again; one far inside the
    limit earns one larger step, checked. So a verified image takes two decodes, rarely three.
    """
    target = codec.target
    assert target is not None and target.max_latent_error is not None and target.max_psnr_drop is not None
    bound, limit = target.max_latent_error, target.max_psnr_drop
    pixels = size[0] * size[1]
    model = codec.drop_model
    if codec.band_gains is None:
        raise ValueError(f"a PSNR-drop limit needs the model's calibration for {codec.calibration_key!r}")
    if model is None and not measure:
        raise ValueError(
            f"predicting PSNR drops needs model {codec.model.name!r}'s drop model for {codec.calibration_key!r}: "
            f"run `vaeflow models calibrate {codec.model.name} --data PHOTOS` again, or verify every image"
        )
    features = image_features(image, latent[0]) if model is not None else None
    tried: dict[float, _Trial] = {}

    def attempt(log2_step: float) -> _Trial:
        step = float(np.float32(2.0**log2_step))  # exactly what the stream can record
        if step not in tried:
            trial = codec.with_step(step)
            symbols = trial.quantize_coefficients(coeffs)
            dequantized = trial.dequantize(symbols)
            achieved = float(np.abs(trial.untransform(dequantized) - latent).max())
            tried[step] = _Trial(Choice(step, symbols, achieved), base_error(codec, coeffs, dequantized, pixels))
        return tried[step]

    def unverified(t: _Trial) -> float | None:
        """The drop the calibration predicts without decoding (None without a drop model)."""
        return None if model is None else drop_db(t.base * math.exp(model.log_factor(features, None)))  # type: ignore[arg-type]

    rho_limit = relative_error(limit)
    if not measure:
        assert model is not None
        factor = math.exp(model.log_factor(features, None))  # type: ignore[arg-type]
        aim = rho_limit * (margin if margin is not None else math.exp(-PREDICT_SPREADS * model.predicted_sigma))
        try:
            chosen = _step_search(attempt, lambda t: t.base * factor / aim, bound)
            return Choice(chosen.choice.step, chosen.choice.symbols, chosen.choice.achieved, None, unverified(chosen))
        except ValueError:  # no step meets the prediction (an image unlike the calibration's): decode to know
            pass

    exact_mse = metrics.mse(image, codec.decode_images(latent, size, runtime)[0])
    losses: dict[float, float] = {}

    def drop(t: _Trial) -> float:
        """dB of PSNR lost against decoding the exact latent (inf if that was lossless and this is not)."""
        step = t.choice.step
        if step not in losses:
            trial = codec.with_step(step)
            latents = trial.untransform(trial.dequantize(t.choice.symbols))
            mse = metrics.mse(image, trial.decode_images(latents, size, runtime)[0])
            lossless = 0.0 if mse == 0.0 else math.inf
            losses[step] = lossless if exact_mse == 0.0 else 10.0 * math.log10(max(mse, 1e-300) / exact_mse)
        return losses[step]

    def found(t: _Trial) -> Choice:
        c = t.choice
        predicted = unverified(t)
        if predicted is None:  # no drop model: what the band gains predict against the measured reference
            predicted = drop_db(t.base / exact_mse) if exact_mse > 0 else 0.0
        return Choice(c.step, c.symbols, c.achieved, drop(t), predicted)

    if exact_mse == 0.0:  # a lossless decode: only a lossless step keeps it (rare: flat images)
        return found(_search_by_decodes(attempt, drop, bound, limit))
    if model is not None:
        factor = math.exp(model.log_factor(features, exact_mse))  # type: ignore[arg-type]
        aim = rho_limit * math.exp(-CHECK_SPREADS * model.measured_sigma)
    else:
        factor, aim = 1.0 / exact_mse, rho_limit * UNCALIBRATED_AIM
    chosen = _step_search(attempt, lambda t: t.base * factor / aim, bound)
    lost = drop(chosen)
    room = lost < UNDERSHOOT * limit and (chosen.choice.achieved / bound) ** 2 < SEARCH_CLOSE
    if lost <= limit and not room:
        return found(chosen)
    if math.isfinite(lost) and lost > 0 and chosen.base > 0:  # aim again with the image's own measured factor
        own = relative_error(lost) / chosen.base
        again = _step_search(attempt, lambda t: t.base * own / (rho_limit * RECHECK_AIM), bound, chosen.choice.step)
        if (lost > limit or again.choice.step > chosen.choice.step) and drop(again) <= limit:
            return found(again)
    return found(chosen if lost <= limit else _search_by_decodes(attempt, drop, bound, limit))


def _step_search(
    attempt: Callable[[float], _Trial], ratio: Callable[[_Trial], float], bound: float, start: float = 0.25
) -> _Trial:
    """The largest step found with ``ratio(trial) <= 1`` and a latent error within ``bound``.

    Both grow about as powers of the step (the predicted error as its square, the latent error
    linearly), so each try, from ``start``, jumps to where the worse of the two would just meet its
    limit, the exponent learned from the tries; ``SEARCH_TRIES`` tries, stopping once a step within
    both reaches ``SEARCH_CLOSE`` of them; then a bisection below the smallest step over them, if no
    step within them was found.
    """

    def worst(t: _Trial) -> float:
        return max(ratio(t), (t.choice.achieved / bound) ** 2)  # both as squares of the step

    x, aim = float(np.log2(start)), (1.0 + SEARCH_CLOSE) / 2
    ok: tuple[float, _Trial] | None = None
    over = LOG2_STEP_RANGE[1]
    exponent, last = 2.0, None
    for _ in range(SEARCH_TRIES):
        t = attempt(x)
        w = worst(t)
        if w <= 1.0:
            if ok is None or x > ok[0]:
                ok = (x, t)
            if w >= SEARCH_CLOSE or x >= LOG2_STEP_RANGE[1]:
                break
        else:
            over = min(over, x)
        if last is not None and last[1] > 0 and w > 0 and abs(x - last[0]) > 1e-6:
            exponent = min(4.0, max(0.5, math.log2(w / last[1]) / (x - last[0])))
        last = (x, w)
        nxt = x + math.log2(aim / w) / exponent if w > 0 else x + 1.0
        nxt = min(nxt, LOG2_STEP_RANGE[1], over - 1e-3)
        if ok is not None:
            nxt = max(nxt, ok[0])
        if abs(nxt - x) < 1e-3:
            break
        x = max(nxt, LOG2_STEP_RANGE[0])
    if ok is not None:
        return ok[1]
    fine = attempt(LOG2_STEP_RANGE[0])
    if fine.choice.achieved > bound:
        raise ValueError(
            f"latent error bound {bound} is out of reach: the finest step gives {fine.choice.achieved:.4g}"
        )
    if ratio(fine) > 1.0:
        raise ValueError(
            f"the PSNR drop limit is out of reach by prediction: the finest step is predicted {ratio(fine):.3g}x over"
        )
    found = _largest(lambda v: attempt(v).choice, lambda c: worst(_trial_of(attempt, c)) <= 1.0, fine.choice, over)
    return _trial_of(attempt, found)


def _trial_of(attempt: Callable[[float], _Trial], choice: Choice) -> _Trial:
    return attempt(math.log2(choice.step))


def _search_by_decodes(
    attempt: Callable[[float], _Trial], drop: Callable[[_Trial], float], bound: float, limit: float
) -> _Trial:
    """The fallback when predictions keep missing: the largest step within both limits, each try decoded."""
    fine = attempt(LOG2_STEP_RANGE[0])
    if drop(fine) > limit or fine.choice.achieved > bound:
        raise ValueError(
            f"PSNR drop limit {limit} dB is out of reach: the finest step, {fine.choice.step:.3g}, loses "
            f"{drop(fine):.3f} dB"
        )
    upper = LOG2_STEP_RANGE[1]
    best = _largest(
        lambda v: attempt(v).choice,
        lambda c: c.achieved <= bound and drop(_trial_of(attempt, c)) <= limit,
        fine.choice,
        upper,
    )
    return _trial_of(attempt, best)


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


class RateStrategy(Protocol):
    """How the quantize stage gets each image's step, and how the stream records it. ``own_failures``
    are the errors of ``choose`` that fail just that image, saying why in their own words (a target out
    of its reach); ``stage_failures`` those that fail it as the stage failing on it."""

    @property
    def own_failures(self) -> tuple[type[Exception], ...]: ...

    @property
    def stage_failures(self) -> tuple[type[Exception], ...]: ...

    @property
    def needs_image(self) -> bool:
        """Whether choosing compares decoded trials with the original image."""
        ...

    def choose(
        self,
        codec: Codec,
        coeffs: np.ndarray,
        sizes: Sequence[tuple[int, int]],
        images: Sequence[np.ndarray | None],
        runtime: RuntimeOptions | None = None,
        *,
        measure: bool = True,
        margin: float | None = None,
    ) -> list[Choice]:
        """Coefficients (N, C, h, w) of images of ``sizes`` -> each image's step and symbols."""
        ...

    def streams(self, codec: Codec, choices: Sequence[Choice], sizes: Sequence[tuple[int, int]]) -> list[bytes]:
        """Each choice's stream, recording its step (and the target's record)."""
        ...


@dataclass(frozen=True)
class FixedStep:
    """No target: every image at the codec's own quality or step, as its stream records it."""

    needs_image = False
    own_failures: ClassVar[tuple[type[Exception], ...]] = ()
    stage_failures: ClassVar[tuple[type[Exception], ...]] = (Exception,)

    def choose(
        self,
        codec: Codec,
        coeffs: np.ndarray,
        sizes: Sequence[tuple[int, int]],
        images: Sequence[np.ndarray | None],
        runtime: RuntimeOptions | None = None,
        *,
        measure: bool = True,
        margin: float | None = None,
    ) -> list[Choice]:
        symbols = codec.quantize_coefficients(coeffs)
        return [Choice(codec.quantize.base_step, symbols[i : i + 1], math.nan) for i in range(len(symbols))]

    def streams(self, codec: Codec, choices: Sequence[Choice], sizes: Sequence[tuple[int, int]]) -> list[bytes]:
        if not choices:
            return []
        return codec.entropy_code(np.concatenate([c.symbols for c in choices]), list(sizes))


@dataclass(frozen=True)
class TargetSearch:
    """Each image's step searched for the codec's target (``search``), recorded with what it reached."""

    target: RateTarget
    own_failures: ClassVar[tuple[type[Exception], ...]] = (ValueError,)  # out of reach, or the model refusing
    stage_failures: ClassVar[tuple[type[Exception], ...]] = ()  # anything else: retried, then isolated

    @property
    def needs_image(self) -> bool:
        return self.target.searches_with_image

    def choose(
        self,
        codec: Codec,
        coeffs: np.ndarray,
        sizes: Sequence[tuple[int, int]],
        images: Sequence[np.ndarray | None],
        runtime: RuntimeOptions | None = None,
        *,
        measure: bool = True,
        margin: float | None = None,
    ) -> list[Choice]:
        return [
            search(codec, coeffs[i : i + 1], size, image, runtime, measure=measure, margin=margin)
            for i, (size, image) in enumerate(zip(sizes, images, strict=True))
        ]

    def streams(self, codec: Codec, choices: Sequence[Choice], sizes: Sequence[tuple[int, int]]) -> list[bytes]:
        return [record(codec, choice, size)[0] for choice, size in zip(choices, sizes, strict=True)]


def strategy_of(codec: Codec) -> RateStrategy:
    """The one place that decides how a codec's steps are chosen."""
    return FixedStep() if codec.target is None else TargetSearch(codec.target)


def learned_margin(model: DropModel, pairs: Sequence[tuple[float, float]]) -> float:
    """The factor unverified images aim below the limit's relative error, learned from verified images'
    (predicted, measured) drops: the log ratios' mean and spread, with the calibration's spread
    counted as ``PRIOR_WEIGHT`` images of ratio 1, aimed ``PREDICT_SPREADS`` spreads above the mean.
    Sorted and summed exactly, so the same images give the same margin in any order."""
    logs = sorted(
        math.log(max(relative_error(measured), 0.05 * relative_error(predicted)) / relative_error(predicted))
        for predicted, measured in pairs
        if predicted > 0 and math.isfinite(measured)
    )
    mean = math.fsum(logs) / (len(logs) + PRIOR_WEIGHT)
    spread = (PRIOR_WEIGHT * model.predicted_sigma**2 + math.fsum((r - mean) ** 2 for r in logs)) / (
        PRIOR_WEIGHT + len(logs)
    )
    return math.exp(-(mean + PREDICT_SPREADS * math.sqrt(spread)))


@dataclass(frozen=True)
class DropSummary:
    """How a store's PSNR drops were kept: counts and sums over its images, merged across runs."""

    limit: float
    verified: int = 0  # drops measured by decoding
    predicted: int = 0  # drops predicted only
    max_drop: float = 0.0  # the largest measured drop
    errors: int = 0  # verified images with a positive measured drop, which an error is taken of
    error_sum: float = 0.0  # sum over them of |predicted / measured - 1|
    error_max: float = 0.0
    margin: float | None = None  # the margin unverified images aimed with in the last run

    @classmethod
    def of(cls, limit: float, pairs: Sequence[tuple[float, float | None]], margin: float | None) -> DropSummary:
        """From each image's (predicted, measured or None) drop."""
        measured = [(p, m) for p, m in pairs if m is not None]
        errors = [abs(p / m - 1.0) for p, m in measured if m > 0]
        return cls(
            limit, len(measured), len(pairs) - len(measured), max((m for _, m in measured), default=0.0),
            len(errors), math.fsum(errors), max(errors, default=0.0), margin,
        )  # fmt: skip

    def merged(self, other: DropSummary) -> DropSummary:
        return DropSummary(
            other.limit, self.verified + other.verified, self.predicted + other.predicted,
            max(self.max_drop, other.max_drop), self.errors + other.errors, self.error_sum + other.error_sum,
            max(self.error_max, other.error_max), other.margin if other.margin is not None else self.margin,
        )  # fmt: skip

    @property
    def error_mean(self) -> float:
        return self.error_sum / self.errors if self.errors else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Any) -> DropSummary | None:
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None

    def __str__(self) -> str:
        images = self.verified + self.predicted
        text = f"{self.verified} of {images} images decoded to check their PSNR drop"
        if self.verified:
            text += f"; largest measured drop {self.max_drop:.3f} dB (limit {self.limit:g} dB)"
        if self.errors:
            text += (
                f"; predicted against measured: mean error {100 * self.error_mean:.0f}%, "
                f"worst {100 * self.error_max:.0f}%"
            )
        if self.margin is not None:
            text += f"; unverified images aimed at {self.margin:.2f} of the limit's error"
        return text


def record(codec: Codec, choice: Choice, size: tuple[int, int]) -> list[bytes]:
    """The stream of a searched choice, with its target and the figure achieved."""
    target = codec.target
    if target is None:
        raise ValueError("the codec has no rate-control target")
    reached = choice.drop is not None or choice.predicted is not None
    drop_limit = target.max_psnr_drop if reached else None
    kept = TargetRecord(target.kind, target.value, choice.achieved, drop_limit, choice.drop, choice.predicted)
    return codec.with_step(choice.step).entropy_code(choice.symbols, [size], kept)
