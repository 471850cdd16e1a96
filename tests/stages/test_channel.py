import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages.channel import ChannelTransform, hadamard_matrix


def test_hadamard_4_is_the_specified_matrix() -> None:
    expected = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, -1, 1], [1, -1, 1, -1]]) / 2
    np.testing.assert_array_equal(hadamard_matrix(4), expected)


@pytest.mark.parametrize("c", [1, 2, 4, 8, 16, 32, 64])
def test_hadamard_is_orthonormal(c: int) -> None:
    h = hadamard_matrix(c)
    np.testing.assert_allclose(h @ h.T, np.eye(c), atol=1e-12)


@pytest.mark.parametrize("c", [3, 5, 6, 12])
def test_hadamard_refuses_other_channel_counts(c: int) -> None:
    with pytest.raises(PipelineError, match="power-of-two"):
        ChannelTransform("hadamard").forward(np.zeros((1, c, 2, 2), np.float32))
    with pytest.raises(PipelineError, match="identity"):
        ChannelTransform("hadamard").check(c)


def test_unknown_transform_names_the_choices() -> None:
    with pytest.raises(PipelineError, match=r"hadamard.*identity"):
        ChannelTransform("klt")


@settings(max_examples=40, deadline=None)
@given(
    c=st.sampled_from([1, 2, 4, 8, 32]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    n=st.integers(1, 3),
    transform=st.sampled_from(["hadamard", "identity"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(c: int, h: int, w: int, n: int, transform: str, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32) * 5
    p = ChannelTransform(transform)
    y = p.forward(x)
    np.testing.assert_allclose(p.inverse(y), x, atol=1e-5)
    # orthonormal: energy is kept
    np.testing.assert_allclose((y.astype(np.float64) ** 2).sum(), (x.astype(np.float64) ** 2).sum(), rtol=1e-5)


def test_hadamard_round_trips_real_latents(real_latents: np.ndarray) -> None:
    p = ChannelTransform("hadamard")
    latents = real_latents[:, :8]  # a power of two of the default model's twelve channels
    y = p.forward(latents)
    assert y.shape == latents.shape
    np.testing.assert_allclose(p.inverse(y), latents, atol=1e-5)
