import itertools

import numpy as np
import pytest

import vaeflow
from vaeflow import metrics
from vaeflow.errors import ModelError, PipelineError
from vaeflow.stages.channel import Hadamard
from vaeflow.stages.entropy import ANS
from vaeflow.stages.quantize import Quantize
from vaeflow.stages.vae import VAE
from vaeflow.stages.wavelet import Wavelet

QUALITIES = (10, 30, 50, 70, 90)


@pytest.fixture(scope="module")
def rd_points(kodak: list[np.ndarray]) -> dict[int, tuple[float, float]]:
    out = {}
    for q in QUALITIES:
        bpps, psnrs = [], []
        for image in kodak:
            data = vaeflow.compress(image, quality=q)
            decoded = vaeflow.decompress(data)
            assert decoded.shape == image.shape and decoded.dtype == np.uint8
            bpps.append(vaeflow.info(data)["bpp"])
            psnrs.append(metrics.psnr(image, decoded))
        out[q] = (float(np.mean(bpps)), float(np.mean(psnrs)))
    return out


def test_rate_and_quality_rise_with_quality(rd_points: dict[int, tuple[float, float]]) -> None:
    bpps = [rd_points[q][0] for q in QUALITIES]
    psnrs = [rd_points[q][1] for q in QUALITIES]
    assert all(a < b for a, b in itertools.pairwise(bpps)), bpps
    assert all(a < b for a, b in itertools.pairwise(psnrs)), psnrs


def test_real_images_reach_useful_quality(rd_points: dict[int, tuple[float, float]], kodak: list[np.ndarray]) -> None:
    model = vaeflow.load_model("default")
    ceiling = np.mean([metrics.psnr(im, model.decode(model.encode(im[None]))[0]) for im in kodak])
    assert ceiling > 24.0
    assert rd_points[90][1] > ceiling - 0.15  # near-lossless latent coding at quality 90
    assert rd_points[50][1] > ceiling - 1.0
    assert rd_points[10][0] < 0.1 < rd_points[90][0]


def test_same_input_same_bytes(kodak: list[np.ndarray]) -> None:
    a = vaeflow.compress(kodak[1], quality=40)
    b = vaeflow.compress(kodak[1].copy(), quality=40)
    assert a == b
    batch = vaeflow.compress_batch([kodak[1], kodak[0], kodak[1]], quality=40)
    assert batch[0] == a and batch[2] == a
    assert batch[1] == vaeflow.compress(kodak[0], quality=40)


def test_batched_vae_run_is_bit_exact_per_image(kodak: list[np.ndarray]) -> None:
    model = vaeflow.load_model("default")
    same = np.stack([im for im in kodak if im.shape == kodak[0].shape])
    together = model.encode(same)
    for i, image in enumerate(same):
        np.testing.assert_array_equal(model.encode(image[None])[0], together[i])


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 3), (17, 31), (64, 64)])
def test_any_size_round_trips(shape: tuple[int, int], kodak: list[np.ndarray]) -> None:
    image = kodak[2][100 : 100 + shape[0], 200 : 200 + shape[1]]
    decoded = vaeflow.decompress(vaeflow.compress(image))
    assert decoded.shape == (*shape, 3)
    if min(shape) >= 17:
        assert metrics.psnr(image, decoded) > 18


def test_greyscale_becomes_rgb(kodak: list[np.ndarray]) -> None:
    grey = kodak[0][:64, :64, 1]
    a = vaeflow.decompress(vaeflow.compress(grey))
    b = vaeflow.decompress(vaeflow.compress(grey[:, :, None]))
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.float32), "dtype float32"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(2, 8, 8, 3\)"),
        (np.zeros(8, np.uint8), r"shape \(8,\)"),
        ([[1, 2], [3, 4]], "numpy array, got list"),
    ],
)
def test_bad_images_say_what_was_given_and_accepted(image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        vaeflow.compress(image)  # type: ignore[arg-type]
    assert "accepted" in str(info.value)


def test_info_describes_the_stream(kodak: list[np.ndarray]) -> None:
    data = vaeflow.compress(kodak[0], quality=30)
    meta = vaeflow.info(data)
    assert meta["model"] == vaeflow.load_model("default").name
    assert meta["shape"] == kodak[0].shape[:2]
    assert meta["quality"] == 30
    assert meta["n_bytes"] == len(data)
    assert meta["bpp"] == pytest.approx(8 * len(data) / (kodak[0].shape[0] * kodak[0].shape[1]))
    assert meta["pipeline"]["wavelet"] == {"name": "cdf97", "levels": 3}


def test_composed_pipelines_match_the_presets(kodak: list[np.ndarray]) -> None:
    image = kodak[0][:128, :192]
    plain = VAE("default") | Hadamard() | Wavelet("cdf97", 3) | Quantize(quality=50) | ANS()
    assert vaeflow.compress(image, pipeline=plain) == vaeflow.compress(image, pipeline="plain")
    best = VAE() | Hadamard() | Wavelet("cdf97", 3) | Quantize(quality=50, allocation="decoder") | ANS("context")
    assert vaeflow.compress(image, pipeline=best) == vaeflow.compress(image)


def test_pipeline_with_mismatched_stages_is_refused_naming_both() -> None:
    with pytest.raises(PipelineError, match=r"ANS takes symbols.*Wavelet, produces coefficients"):
        VAE() | Wavelet("haar", 2) | ANS()
    with pytest.raises(PipelineError, match=r"Quantize takes coefficients.*VAE, produces latent"):
        VAE() | Quantize(quality=10)


def test_intermediates_are_inspectable(kodak: list[np.ndarray]) -> None:
    pipeline = vaeflow.load_pipeline("default")
    image = kodak[0][None, :64, :96]
    latent = pipeline.run(image, until="vae")
    coeffs = pipeline.run(image, until="wavelet")
    symbols = pipeline.run(image, until="quantize")
    assert latent.shape == coeffs.shape == symbols.shape == (1, 4, 8, 12)
    assert symbols.dtype == np.int32
    np.testing.assert_array_equal(pipeline.run(image[0], until="quantize"), symbols[0])  # one image, one result
    assert pipeline.run(image[0]) == pipeline.run(image)[0] == vaeflow.compress(image[0])
    with pytest.raises(PipelineError, match="choose one of"):
        pipeline.run(image, until="bogus")


def test_presets_load_by_name_and_unknown_lists_them(kodak: list[np.ndarray]) -> None:
    image = kodak[0][:64, :64]
    store = vaeflow.compress(image, pipeline="latent-store")
    assert vaeflow.info(store)["quality"] == vaeflow.load_pipeline("latent-store").codec().quantize.quality
    with pytest.raises(PipelineError, match=r"default.*latent-store"):
        vaeflow.compress(image, pipeline="nope")


def test_latent_store_takes_the_largest_step_within_its_psnr_drop(kodak: list[np.ndarray]) -> None:
    from dataclasses import replace

    from vaeflow.api import resolve_codec

    model = vaeflow.load_model("default")
    codec = resolve_codec(None, None, "latent-store")
    limit, bound = codec.quantize.max_psnr_drop, codec.quantize.max_latent_error
    assert limit is not None and bound is not None
    for image in kodak[:3]:
        exact = model.encode(image[None])
        reference = metrics.psnr(image, model.decode(exact)[0])
        data = vaeflow.compress(image, pipeline="latent-store")
        assert reference - metrics.psnr(image, vaeflow.decompress(data)) <= limit + 1e-3  # float round trip
        assert np.abs(vaeflow.decompress_latent(data) - exact[0]).max() <= bound + 1e-6
        # a step 10% coarser breaks the drop limit or the bound: the search did not stop short
        step = vaeflow.info(data)["pipeline"]["quantize"]["step"]
        coarser = vaeflow.compress(image, pipeline=replace(codec, quantize=codec.quantize.with_step(step * 1.1)))
        drop = reference - metrics.psnr(image, vaeflow.decompress(coarser))
        assert drop > limit or np.abs(vaeflow.decompress_latent(coarser) - exact[0]).max() > bound


def test_postfilter_is_off_by_default_and_recorded_when_on(kodak: list[np.ndarray]) -> None:
    image = kodak[0][:128, :128]
    plain = vaeflow.compress(image)
    assert vaeflow.info(plain)["pipeline"]["postfilter"]["sigma"] == 0.0
    blurred_pipeline = vaeflow.PostFilter(0.75) | vaeflow.load_pipeline("default")
    blurred = vaeflow.compress(image, pipeline=blurred_pipeline)
    assert vaeflow.info(blurred)["pipeline"]["postfilter"]["sigma"] == 0.75
    a, b = vaeflow.decompress(plain), vaeflow.decompress(blurred)
    assert not np.array_equal(a, b)
    assert np.abs(np.diff(b.astype(int), axis=1)).mean() < np.abs(np.diff(a.astype(int), axis=1)).mean()


def test_latents_decode_from_the_stream_alone_within_the_recorded_bound(kodak: list[np.ndarray]) -> None:
    image = kodak[0]
    model = vaeflow.load_model("default")
    exact = model.encode(image[None])[0]
    data = vaeflow.compress(image, pipeline="latent-store")
    latent = vaeflow.decompress_latent(data)
    assert latent.shape == exact.shape
    record = vaeflow.info(data)["target"]
    bound = vaeflow.load_pipeline("latent-store").codec().quantize.max_latent_error
    assert record["kind"] == "latent" and record["value"] == pytest.approx(bound)
    error = float(np.abs(latent - exact).max())
    assert error <= bound + 1e-6
    assert record["achieved"] == pytest.approx(error, abs=1e-5)


def test_stream_from_a_different_model_is_refused(kodak: list[np.ndarray], vaeflow_home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from vaeflow.models.registry import Registry, register

    entry = Registry.load().resolve("default")
    data = vaeflow.compress(kodak[0][:64, :64])
    # register a model of the same name whose decoder differs by one byte
    decoder = tmp_path / "decoder.onnx"
    shutil.copy(entry.decoder, decoder)
    with decoder.open("ab") as fh:
        fh.write(b"\0")
    from dataclasses import replace

    register(replace(entry, decoder=decoder))
    with pytest.raises(ModelError, match="fingerprint"):
        vaeflow.decompress(data)
