import numpy as np
import pytest
import pywt
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages import wavelet
from vaeflow.stages.wavelet import WAVELETS, Wavelet, subbands


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from(WAVELETS),
    levels=st.integers(0, 6),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_perfect_reconstruction_any_size(name: str, levels: int, h: int, w: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w)).astype(np.float32) * 3
    p = Wavelet(name, levels)
    y = p.forward(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(p.inverse(y), x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "reference"), [("haar", "haar"), ("cdf53", "bior2.2"), ("cdf97", "bior4.4")])
def test_filters_match_pywavelets_away_from_borders(name: str, reference: str) -> None:
    """One level on a row: low band equals PyWavelets' approximation, high band its negated detail."""
    x = np.random.default_rng(0).standard_normal(64)
    y = Wavelet(name, 1).forward(x[None, None, None, :])[0, 0, 0]
    approx, detail = pywt.dwt(x, reference, mode="periodization")
    inner = slice(4, 28)
    np.testing.assert_allclose(y[:32][inner], approx[inner], atol=1e-5)
    np.testing.assert_allclose(y[32:][inner], -detail[inner], atol=1e-5)


@pytest.mark.parametrize(("h", "w", "levels"), [(64, 96, 3), (5, 7, 2), (1, 1, 6), (33, 17, 4), (8, 1, 3)])
def test_subbands_tile_the_plane_exactly(h: int, w: int, levels: int) -> None:
    cover = np.zeros((h, w), int)
    for band in subbands(h, w, levels):
        cover[band.rows, band.cols] += 1
    assert (cover == 1).all()
    assert subbands(h, w, levels)[0].name == f"LL{levels}"


def test_smooth_signal_energy_goes_to_low_band() -> None:
    yy, xx = np.mgrid[0:64, 0:96] / 20.0
    x = np.sin(yy + xx)[None, None].astype(np.float32)
    y = Wavelet("cdf97", 3).forward(x)
    ll = subbands(64, 96, 3)[0]
    assert (y[0, 0, ll.rows, ll.cols] ** 2).sum() > 0.99 * (y**2).sum()


def test_gains_are_near_one_for_cdf97() -> None:
    gains = wavelet.synthesis_gains("cdf97", 3)
    assert set(gains) == {b.name for b in subbands(128, 128, 3)}
    assert all(0.9 < g < 1.15 for g in gains.values())
    assert all(g == pytest.approx(1.0) for g in wavelet.synthesis_gains("haar", 3).values())


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(PipelineError, match="haar"):
        Wavelet("db4", 3)
    with pytest.raises(PipelineError, match=r"0\.\.6"):
        Wavelet("haar", 7)
    with pytest.raises(PipelineError, match=r"0\.\.6"):
        Wavelet("haar", True)  # type: ignore[arg-type]
