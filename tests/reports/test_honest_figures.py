"""What the eval's figures say: baselines from a practical quality, the metric scale and the range
each BD-rate integrates, "no common range" rather than NaN, JPEG XL and JPEG 2000 baselines,
and crops at matched bpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaeflow import reports
from vaeflow.foundations.bdrate import bd_rate_detail
from vaeflow.reports import codecs
from vaeflow.reports.results import codec_entry, document
from vaeflow.reports.tables import NO_COMMON_RANGE, bd_table, format_bd_table

from ..helpers import image_folder


def _entry(name: str, codec: str, bpp: list[float], psnr: list[float], ms_ssim: list[float]) -> dict:
    figures = {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": ms_ssim, "ssim": ms_ssim,
               "encode_s": [0.0] * len(bpp), "decode_s": [0.0] * len(bpp)}  # fmt: skip
    return codec_entry(name, name, codec, list(range(len(bpp))), {"a.png": figures})


def test_default_baselines_start_at_a_practical_quality() -> None:
    for name in ("jpeg", "webp", "avif", "jxl"):
        assert codecs.BASELINES[name].settings[0] == 5
    assert codecs.DEFAULT_BASELINES == ("jpeg", "webp", "avif")


def test_a_bd_rate_says_what_it_integrated_and_when_there_is_nothing_in_common() -> None:
    rates, psnr = [0.1, 0.2, 0.4, 0.8], [28.0, 31.0, 34.0, 37.0]
    detail = bd_rate_detail(rates, psnr, [r * 0.8 for r in rates], [p + 1.0 for p in psnr])
    assert detail.quality_range == (29.0, 37.0)
    assert detail.anchor_rates == pytest.approx((0.2 * 2 ** (-2 / 3), 0.8))
    assert detail.test_rates == pytest.approx((0.08, 0.8 * 0.8 * 2 ** (-1 / 3)))
    apart = bd_rate_detail(rates, psnr, rates, [p + 20 for p in psnr])
    assert apart.percent is None and apart.quality_range is None
    doc = document("x", ["a.png"], [
        _entry("vaeflow (m)", "vaeflow", [0.05, 0.1, 0.2], [24.0, 26.0, 27.0], [0.80, 0.90, 0.93]),
        _entry("WEBP", "webp", [0.2, 0.4, 0.8], [28.0, 31.0, 34.0], [0.92, 0.95, 0.97]),
    ])  # fmt: skip
    row = bd_table(doc)[0]
    assert row["bd_rate_psnr"] is None and row["bd_rate_ms_ssim"] is not None
    text = format_bd_table([row])
    assert NO_COMMON_RANGE in text and "nan" not in text.lower()
    assert "-10 log10(1 - MS-SSIM)" in text and "PSNR-RGB in dB" in text
    low, high = row["ms_ssim"]["quality_range"]
    assert f"{low:.2f}..{high:.2f} dB" in text  # the range integrated, in the metric's own scale


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    return image_folder(tmp_path_factory.mktemp("honest"), photos[:2], 128, 192)


def test_jpeg_xl_and_jpeg_2000_baselines(photo_folder: Path) -> None:
    pytest.importorskip("imagecodecs", reason="JPEG XL needs the baselines extra (imagecodecs)")
    doc = reports.evaluate(photo_folder, [30, 60], ["jxl", "jp2"], baseline_qualities=[10, 60], progress=False)
    jxl, jp2 = doc["codecs"][1:]
    assert (jxl["name"], jxl["settings"]) == ("JPEG XL", [10, 60])
    assert jp2["name"] == "JPEG 2000" and jp2["settings"] == list(codecs.BASELINES["jp2"].settings)
    assert jxl["results"]["bpp"][0] < jxl["results"]["bpp"][1]  # a higher quality costs more
    assert jp2["results"]["bpp"] == sorted(jp2["results"]["bpp"])  # a lower ratio costs more
    for entry in (jxl, jp2):  # real codecs: more bits, better pictures, and good ones at the top
        order = np.argsort(entry["results"]["bpp"])
        assert list(np.diff(np.asarray(entry["results"]["psnr-rgb"])[order]) > 0) == [True] * (len(order) - 1)
        assert max(entry["results"]["psnr-rgb"]) > 30


def test_crops_are_at_matched_bpp(photos: list[np.ndarray]) -> None:
    image = np.ascontiguousarray(photos[1][:256, :384])
    target = reports.at_bpp(image, "vaeflow", 0.3).bpp
    for codec in ("jpeg", "webp", "jp2"):
        found = reports.at_bpp(image, codec, target)
        others = [abs(8 * len(codecs.baseline_encode(image, codec, s)) / image[..., 0].size - target)
                  for s in codecs.BASELINES[codec].settings]  # fmt: skip
        assert abs(found.bpp - target) <= min(others) + 1e-9, codec  # at least as close as any evaluated setting
        assert abs(found.bpp - target) / target < 0.15, (codec, found)
        assert found.decoded.shape == image.shape
