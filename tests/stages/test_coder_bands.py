"""What only the band coder does: one class per band, its cheapest; its parameter byte; bytes that any
machine reproduces. (Round trips, damage and zero bands are tested with the class coder's, for both.)"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages import wavelet
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders import classes as classcoder
from vaeflow.stages.wavelet import Subband

from .test_coder_classes import QUALITIES, photo_symbols, wide  # noqa: F401  (a fixture)


def test_each_band_takes_the_class_its_magnitudes_cost_least(photo_symbols: dict) -> None:  # noqa: F811
    """Against the class coder, which predicts every coefficient's scale from its neighbours: on
    narrow latents whose contexts matter, the band coder pays for lacking them, within bounds;
    a band coded with any other class than the one chosen would cost more."""
    for quality in QUALITIES:
        ours = sum(len(bandcoder.encode(s, b)) for s, b in photo_symbols[quality])
        theirs = sum(len(classcoder.encode(s, b)) for s, b in photo_symbols[quality])
        assert 0.9 * theirs <= ours <= 1.25 * theirs, (quality, ours, theirs)
    symbols, bands = photo_symbols[QUALITIES[0]][0]
    detail = symbols[:, bands[-1].rows, bands[-1].cols]  # the finest HH band, all channels
    mags = np.abs(detail[0]).ravel().astype(np.int64)
    for scale in (1, 300):  # magnitudes counted exactly, and by octave
        zone, coded = bandcoder._choose(mags * scale, np.array([mags.size]))
        chosen = int(coded[0]) - 1
        costs = bandcoder._costs(np.arange(64)[:, None], mags[None, :] * scale, bandcoder.DEADZONES[zone]).sum(axis=1)
        assert costs[chosen] <= 1.001 * costs.min(), (scale, chosen, int(np.argmin(costs)))


def test_a_class_coder_parameter_byte_is_damage(photo_symbols: dict) -> None:  # noqa: F811
    """The band coder's parameter byte holds the zero-bin width alone: a weight set is damage."""
    symbols, bands = photo_symbols[QUALITIES[0]][0]
    for s in (symbols, wide(symbols)):
        payload = bandcoder.encode(s, bands)
        assert payload[0] < 8
        with pytest.raises(CorruptStreamError, match="band coder lacks"):
            bandcoder.decode(bytes([payload[0] | 8]) + payload[1:], s.shape, bands)


def test_bytes_are_reproducible() -> None:
    """A fixed input gives the bytes recorded here (any machine must produce them)."""
    rng = np.random.default_rng(7)
    scales = np.array([0.0, 0.3, 2.0, 40.0])[:, None, None]
    symbols = np.round(rng.laplace(0, 1, (4, 20, 28)) * scales).astype(np.int32)
    symbols[3, 0, 0], symbols[3, 19, 27] = 10**6, -(10**6)  # escapes in the LL and the HH1 band
    bands: tuple[Subband, ...] = wavelet.subbands(20, 28, 2)
    payload = bandcoder.encode(symbols, bands)
    assert hashlib.sha256(payload).hexdigest() == "6a69eb779038d42cdffef48c3bd587761dbc3e7157e9a833e26a95e1e840f18c"
    np.testing.assert_array_equal(bandcoder.decode(payload, symbols.shape, bands), symbols)
