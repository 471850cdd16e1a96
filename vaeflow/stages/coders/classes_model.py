"""The class coder's probability models: its constants and weight sets, the tables of its 64 classes,
the costs the encoder plans with, and the bit-reproducible arithmetic they are built from
(``docs/format.md`` describes them; ``classes.py`` codes with them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np

N_CLASSES = 64
NO_CLASS = N_CLASSES  # positions of a band that is all zero: not coded
ZERO_BAND = 0  # band index of a detail band that is all zero
SIDE_CLASS = 26  # class (plain rounding, scale about 3.4) of the deltas of band indices
MAX_HALF_WIDTH = 4096  # a class's table covers -R..R; |v| >= R escapes
TAIL_SCALES = 20  # R is about TAIL_SCALES scales
FEATURE_CLIP = MAX_HALF_WIDTH  # magnitudes enter activities clipped to this (only escapes reach it)
LL_ZERO_HALF_WIDTH = 0.5  # LL residuals: plain rounding
DEADZONES = tuple((5 + i) / 16 for i in range(8))  # zero-bin half-widths a stream may choose for details
LL_MODES = ("centre", "left", "up", "gradient")
ESCAPE_LOW_BITS = 16  # an escape's bits below its leading one: up to 16 first, then the rest
ESCAPE_BITS = round(math.log2(33) * 65536)  # an escape's bit length under its uniform model (bits * 2**16)

# A detail coefficient's activity, in units of 2**-16 of a magnitude, is
#   B + P * mean|parent 3x3| + PA * mean over channels of that + S * mean|first group, same place|
#   + S3 * mean of that over 3x3 + N * mean|own 4 neighbours|,
# weights in 1/256, by kind of position: first-group anchors, first-group others, second-group
# anchors, second-group others (a kind uses only terms decoded before it). A stream names its set.
ACTIVITY_BITS = 16
COARSEST_KIND = 4  # positions of the coarsest detail level: one pass, the LL band's gradient as parent
COARSEST_WEIGHTS = (64, 64, 32, 0, 0, 0)
WEIGHT_SETS = (
    (  # narrow latents (few channels, mixed): strong contexts
        (198, 66, 198, 0, 0, 0),
        (108, 53, 108, 0, 0, 207),
        (51, 34, 26, 78, 219, 0),
        (48, 12, 9, 61, 88, 112),
        COARSEST_WEIGHTS,
    ),
    (  # wide latents (many channels): weaker contexts
        (214, 6, 11, 0, 0, 0),
        (203, 2, 9, 0, 0, 10),
        (93, 31, 12, 37, 65, 0),
        (91, 8, 15, 26, 28, 48),
        COARSEST_WEIGHTS,
    ),
)
INDEX_STRIDES = (32, 16, 8, 4, 2, 1)  # the encoder's coarse-to-fine search of each band's index
# activities stay below 2**31: each term is at most w * 256 * FEATURE_CLIP
if max(sum(kind) for weights in WEIGHT_SETS for kind in weights) * 256 * FEATURE_CLIP >= 2**31:
    raise ImportError("WEIGHT_SETS would overflow int32 activities")
# class = (bin + band index - CLASS_OFFSET) >> 1, clipped to 0..63, where bin is the float32
# exponent and top 3 mantissa bits of the activity (eighth octaves); band index 128 leaves the
# scale at activity / 2**16.
_BIN_SHIFT = 20
CLASS_OFFSET = 8 * (127 + ACTIVITY_BITS) + 128 - 40
_LUT_BASE = 2048  # bins are below 2048; a coded band's index is stored + 2048, a zero band's as 0
_CLASS_LUT = np.concatenate(
    [
        np.full(_LUT_BASE, N_CLASSES, np.uint8),
        np.clip((np.arange(_LUT_BASE + 256) - CLASS_OFFSET) >> 1, 0, N_CLASSES - 1).astype(np.uint8),
    ]
)


# --- bit-reproducible arithmetic -------------------------------------------------------------


def _exp(x: np.ndarray) -> np.ndarray:
    """e**x for x <= 0 with + * / only: a degree-6 Taylor series at x / 2**16, squared 16 times."""
    y = np.asarray(x, np.float64) / 65536.0
    t = 1.0 + y * (1.0 + y / 2.0 * (1.0 + y / 3.0 * (1.0 + y / 4.0 * (1.0 + y / 5.0 * (1.0 + y / 6.0)))))
    for _ in range(16):
        t = t * t
    return t


def _log2(x: np.ndarray) -> np.ndarray:
    """log2(x) for x > 0 with frexp, + * /: ln of the mantissa by the atanh series."""
    mantissa, exponent = np.frexp(np.asarray(x, np.float64))
    u = (mantissa - 1.0) / (mantissa + 1.0)
    u2 = u * u
    series = np.zeros_like(u)
    for k in range(29, 0, -2):
        series = 1.0 / k + u2 * series
    return exponent + 2.0 * u * series / 0.6931471805599453  # type: ignore[no-any-return]


def float_log2(x: np.ndarray) -> np.ndarray:
    """A piecewise-linear log2 from a float64's bits (exact and cheap; error below 0.09)."""
    mantissa, exponent = np.frexp(np.asarray(x, np.float64))
    return exponent - 2.0 + 2.0 * mantissa  # type: ignore[no-any-return]


def class_scale(k: int) -> float:
    """Laplace scale of class k: 2**(k/4 - 4.875), the middle of its quarter octave."""
    octave, quarter = divmod(k, 4)
    return math.ldexp(math.sqrt(math.sqrt(math.sqrt(float(2 ** (2 * quarter + 1))))), octave - 5)


def half_width(k: int) -> int:
    return int(min(MAX_HALF_WIDTH, max(8, math.ceil(TAIL_SCALES * class_scale(k)))))


HALF_WIDTHS = np.array([half_width(k) for k in range(N_CLASSES)] + [0], np.int64)  # NO_CLASS: nothing
HALF_WIDTHS_32 = HALF_WIDTHS.astype(np.int32)


def activity_bins(activity: np.ndarray) -> np.ndarray:
    """Eighth-octave bin of each activity (int32 >= 1): its float32 exponent and top mantissa bits."""
    return activity.astype(np.float32).view(np.int32) >> _BIN_SHIFT  # type: ignore[no-any-return]


def lut_index(index: np.ndarray) -> np.ndarray:
    """Band indices as ``classes_of`` takes them: + 2048 when coded, 0 for a zero band."""
    return np.where(index == ZERO_BAND, 0, index + _LUT_BASE).astype(np.int32)  # type: ignore[no-any-return]


def classes_of(activity: np.ndarray, band_lut_index: np.ndarray) -> np.ndarray:
    """Class of each activity (NO_CLASS in a zero band) given its band's ``lut_index``."""
    return _CLASS_LUT[activity_bins(activity) + band_lut_index]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Table:
    model: constriction.stream.model.Categorical
    half_width: int
    cost: np.ndarray  # int64, bits * 2**16 of each |value| 0..R (R: the escape's table entry)
    bounds: np.ndarray  # int64 (2R + 2,): each symbol's left cumulative weight, then 2**24


def _probabilities(k: int, zero_half_width: float) -> np.ndarray:
    """P(0) = 1 - r**z, P(+-m) = r**(m - 1 + z) (1 - r) / 2 for 0 < m < R, and P(+-R) = r**(R - 1 + z) / 2
    (escapes), with r = e**(-1/scale) and z the zero bin's half-width: symbols -R..R of class k."""
    s, r = class_scale(k), half_width(k)
    z = zero_half_width
    m = np.arange(1, r, dtype=np.float64)
    p0 = 1.0 - _exp(np.array([-z / s]))
    one_minus_ratio = 1.0 - _exp(np.array([-1.0 / s]))
    pm = 0.5 * _exp(-(m - 1.0 + z) / s) * one_minus_ratio
    tail = 0.5 * _exp(np.array([-(r - 1.0 + z) / s]))
    return np.concatenate([tail, pm[::-1], p0, pm, tail])


@lru_cache(maxsize=12 * N_CLASSES)
def class_bounds(k: int, zero_half_width: float) -> np.ndarray:
    """Each symbol's left cumulative weight (out of 2**24) in class k's table, then 2**24: the weights
    ``constriction`` gives the probabilities (its fast quantization, replayed exactly)."""
    probabilities = _probabilities(k, zero_half_width)
    n = probabilities.size
    running = np.cumsum(probabilities)
    scale = float(2**24 - n) / float(running[-1])
    left = (np.concatenate([[0.0], running[:-1]]) * scale).astype(np.int64) + np.arange(n)
    bounds = np.append(left, 2**24)
    bounds.setflags(write=False)
    return bounds


@lru_cache(maxsize=12 * N_CLASSES)
def class_table(k: int, zero_half_width: float) -> _Table:
    """The model of class k (``_probabilities``) and what coding with it costs."""
    model = constriction.stream.model.Categorical(_probabilities(k, zero_half_width), perfect=False)
    bounds = class_bounds(k, zero_half_width)
    cost = np.rint((24.0 - _log2(np.diff(bounds).astype(np.float64))) * 65536.0).astype(np.int64)
    r = half_width(k)
    return _Table(model, r, cost[r:], bounds)


@lru_cache(maxsize=16)
def _costs(zero_half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """All classes' costs in one array, and each class's offset into it."""
    costs = [class_table(k, zero_half_width).cost for k in range(N_CLASSES)]
    offsets = np.cumsum([0] + [c.size for c in costs[:-1]]).astype(np.int64)
    return np.concatenate(costs), offsets


def symbol_costs(classes: np.ndarray, magnitudes: np.ndarray, zero_half_width: float) -> np.ndarray:
    """Integer cost (bits * 2**16) of each magnitude under its class, escapes at the table's edge."""
    costs, offsets = _costs(zero_half_width)
    k = classes.astype(np.int64)
    return costs[offsets[k] + np.minimum(magnitudes, HALF_WIDTHS[k])]  # type: ignore[no-any-return]
