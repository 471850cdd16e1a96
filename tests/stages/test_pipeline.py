"""Composing stages, and the one description of a codec: to_dict / from_dict."""

import pytest

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages import (
    VAE,
    ChannelTransform,
    Entropy,
    Hadamard,
    Pipeline,
    PostFilter,
    Quantize,
    RateTarget,
    Stage,
    Wavelet,
)

FULL = PostFilter(0.5) | VAE("default") | Hadamard() | Wavelet("cdf53", 2) | Quantize(step=0.25) | Entropy("laplace")


def test_every_stage_serializes_to_a_dict_and_back() -> None:
    for stage in FULL.stages:
        assert type(stage).from_dict(stage.to_dict()) == stage
        assert Stage.types[stage.stage_name] is type(stage)


def test_a_pipeline_round_trips_through_its_tables_with_its_target() -> None:
    pipeline = FULL.with_target(RateTarget(bpp=0.3))
    tables = pipeline.to_dict()
    assert list(tables) == ["postfilter", "vae", "channel", "wavelet", "quantize", "entropy", "target"]
    assert tables["quantize"] == {"quality": None, "step": 0.25, "rounding": 0.375, "allocation": "uniform",
                                  "rdo": False}  # fmt: skip
    assert Pipeline.from_dict(tables) == pipeline
    shuffled = dict(reversed(list(tables.items())))  # sections in any order
    assert Pipeline.from_dict(shuffled) == pipeline


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"vae": {}, "quantiser": {}}, r"unknown sections \['quantiser'\]"),
        ({"quantize": {"quality": 50, "level": 3}}, r"\[quantize\] has unknown keys \['level'\]"),
        ({"wavelet": "cdf97"}, "must be a table"),
        ({"target": {"bpp": 0.2, "rate": 1}}, r"unknown keys \['rate'\]"),
        ({"entropy": {"coder": "huffman"}}, "unknown entropy coder"),
    ],
)
def test_unknown_sections_keys_and_values_are_refused_naming_them(tables: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        Pipeline.from_dict(tables, "test.toml")


def test_a_second_stage_of_the_same_kind_is_refused() -> None:
    with pytest.raises(PipelineError, match="two channel stages"):
        VAE() | ChannelTransform("identity") | Hadamard() | Wavelet() | Quantize() | Entropy()


def test_pipeline_with_mismatched_stages_is_refused_naming_both() -> None:
    with pytest.raises(PipelineError, match=r"Entropy takes symbols.*Wavelet, produces coefficients"):
        VAE() | Wavelet("haar", 2) | Entropy()
    with pytest.raises(PipelineError, match=r"Quantize takes coefficients.*VAE, produces latent"):
        VAE() | Quantize(quality=10)
    with pytest.raises(PipelineError, match="not a vaeflow stage"):
        Pipeline((VAE(), "wavelet"))  # type: ignore[arg-type]


def test_composition_keeps_the_target_and_prepends_stages() -> None:
    aimed = (VAE() | Hadamard() | Wavelet() | Quantize() | Entropy()).with_target(RateTarget(psnr=30.0))
    blurred = PostFilter(0.25) | aimed
    assert blurred.target == aimed.target and blurred.stage("postfilter") == PostFilter(0.25)
    assert "aiming for" in str(blurred)
