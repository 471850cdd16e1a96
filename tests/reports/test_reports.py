"""Evaluation, the results schema, BD-rate, traces and performance reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vaeflow.foundations.bdrate import bd_rate, rate_at
from vaeflow.models import load_model
from vaeflow.reports import results
from vaeflow.reports.evaluation import evaluate
from vaeflow.reports.html import _model_of
from vaeflow.reports.tables import bd_table, crossover_bpp

from ..helpers import image_folder, run_cli


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Three real photos, 128 x 192, as PNG files."""
    return image_folder(tmp_path_factory.mktemp("photos"), photos[:3], 128, 192)


@pytest.fixture(scope="module")
def small_eval(photo_folder: Path) -> dict:
    return evaluate(photo_folder, [20, 60], ["jpeg"], baseline_qualities=[5, 30, 70], limit=2)


def test_results_follow_the_schema(small_eval: dict, tmp_path: Path) -> None:
    results.validate(small_eval)
    path = tmp_path / "results.json"
    results.save(small_eval, path)
    again = results.load(path)
    assert again == json.loads(path.read_text())
    assert [e["name"] for e in again["codecs"]][1] == "JPEG"
    entry = again["codecs"][0]
    assert set(entry["results"]) == set(results.METRICS)
    means = entry["results"]["bpp"]
    assert means[0] == pytest.approx(np.mean([entry["per_image"][n]["bpp"][0] for n in entry["per_image"]]))


def test_results_that_break_the_schema_are_refused(small_eval: dict) -> None:
    broken = json.loads(json.dumps(small_eval))
    del broken["codecs"][0]["results"]["ms-ssim-rgb"]
    with pytest.raises(ValueError, match="ms-ssim-rgb"):
        results.validate(broken)
    short = json.loads(json.dumps(small_eval))
    short["codecs"][1]["results"]["bpp"].pop()
    with pytest.raises(ValueError, match="one value per setting"):
        results.validate(short)


def test_bd_rate_hand_computed_cases() -> None:
    rates = [0.1, 0.2, 0.4, 0.8]
    psnr = [28.0, 31.0, 34.0, 37.0]
    assert bd_rate(rates, psnr, [r * 0.8 for r in rates], psnr) == pytest.approx(-20.0)
    assert bd_rate(rates, psnr, [r * 2 for r in rates], psnr) == pytest.approx(100.0)
    assert bd_rate(rates, psnr, rates, psnr) == pytest.approx(0.0)
    # log2-linear curves 3 dB per doubling; the test curve is 1.5 dB better everywhere, i.e. half
    # a doubling: its rate is 2**-0.5 of the anchor's at equal PSNR (-29.29%), over the overlap.
    better = [p + 1.5 for p in psnr]
    assert bd_rate(rates, psnr, rates, better) == pytest.approx((2**-0.5 - 1) * 100, abs=1e-6)
    assert np.isnan(bd_rate(rates, psnr, rates, [p + 20 for p in psnr]))
    assert rate_at(rates, psnr, 32.5) == pytest.approx(0.4 * 2**-0.5)


def test_bd_table_and_crossover(small_eval: dict) -> None:
    rows = bd_table(small_eval)
    assert rows[0]["test"].startswith("vaeflow") and rows[0]["anchor"] == "JPEG"
    vf, jpeg = small_eval["codecs"]
    assert crossover_bpp(vf, vf) == pytest.approx(min(vf["results"]["bpp"]))
    low, high = rows[0]["common_bpp"]
    cross = crossover_bpp(vf, jpeg)
    assert cross is None or low <= cross <= high


def test_trace_of_one_image_lists_every_stage(photo_folder: Path, tmp_path: Path) -> None:
    out = run_cli("compress", str(photo_folder / "0.png"), str(tmp_path / "a.vfl"), "--trace", str(tmp_path / "t.json"))
    assert out.returncode == 0, out.stderr
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert {e["name"] for e in events if e["ph"] == "X"} == {"vae", "channel", "wavelet", "quantize", "entropy"}
    assert all(e["dur"] >= 0 for e in events if e["ph"] == "X")


def test_job_trace_and_performance_report(photo_folder: Path, tmp_path: Path) -> None:
    out = run_cli("compress", str(photo_folder), str(tmp_path / "s.zarr"), "--workers", "2", "--no-progress",
               "--trace", str(tmp_path / "job.json"), "--report", str(tmp_path / "job.html"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "slowest stage" in out.stdout and "vae" in out.stdout
    events = json.loads((tmp_path / "job.json").read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in spans} == {"load", "vae", "channel", "wavelet", "quantize", "entropy", "write"}
    assert len(spans) == 7 * 1  # one batch of three same-shape images, seven tasks
    assert "bokeh" in (tmp_path / "job.html").read_text().lower()


def test_eval_cli_writes_results_plots_and_a_self_contained_report(photo_folder: Path, tmp_path: Path) -> None:
    args = ["eval", str(photo_folder), "--limit", "2", "--qualities", "20,60", "--baselines", "jpeg,webp",
            "--baseline-qualities", "5,40", "--out", str(tmp_path), "--scheduler", "sync"]  # fmt: skip
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    for name in ("results.json", "rd.png", "rd.svg", "report.html", "bd_rate.txt"):
        assert (tmp_path / name).stat().st_size > 0
    results.load(tmp_path / "results.json")
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "data:image/png;base64," in page and "BD-rate" in page
    assert 'src="http' not in page
    (tmp_path / "rd.png").unlink()
    again = run_cli(*args, "--reuse")
    assert again.returncode == 0 and (tmp_path / "rd.png").exists()


def test_eval_compares_several_models_in_one_run(photo_folder: Path, tmp_path: Path) -> None:
    args = ["eval", str(photo_folder), "--limit", "1", "--qualities", "30,90", "--baselines", "", "--model",
            "f8c4-v1,default", "--out", str(tmp_path), "--scheduler", "sync"]  # fmt: skip
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    doc = results.load(tmp_path / "results.json")
    entries = [e for e in doc["codecs"] if e["codec"] == "vaeflow"]
    default = load_model("default").name
    assert [e["name"] for e in entries] == ["vaeflow (f8c4-v1)", f"vaeflow ({default})"]
    assert [e["description"].split(",")[1] for e in entries] == [" model f8c4-v1", f" model {default}"]
    assert entries[0]["results"]["bpp"] != entries[1]["results"]["bpp"]  # each through its own model
    assert f"vaeflow (f8c4-v1)        vaeflow ({default})" in (tmp_path / "bd_rate.txt").read_text()

    assert [e["model"] for e in entries] == ["f8c4-v1", default]  # each entry records its model
    assert all("model" not in e for e in doc["codecs"] if e["codec"] != "vaeflow")
    for entry in entries:  # the report's crops run each entry through its own model
        assert _model_of(entry, "default") == entry["model"]
    for entry in entries:  # documents written before entries recorded it: the description names the model
        older = {k: v for k, v in entry.items() if k != "model"}
        assert _model_of(older, "default") == entry["model"]
    assert _model_of({"codec": "jpeg", "description": "JPEG (Pillow), quality per point"}, "x") == "x"
