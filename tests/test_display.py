"""Rich display in notebooks (job report, plan, store) and progress bars only where they are seen."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow.codec.api import resolve_codec
from vaeflow.dataset.job import plan_job
from vaeflow.foundations import progressbar

from .helpers import image_folder, sync_job


def test_the_job_report_plan_and_store_display_as_tables(photos: list[np.ndarray], tmp_path: Path) -> None:
    src = image_folder(tmp_path, photos[:2], 64, 96)
    (src / "<odd>.png").write_bytes(b"not a PNG")
    store = tmp_path / "s.zarr"
    plan = plan_job(src, store, resolve_codec(), "default", vaeflow.JobOptions())
    page = plan._repr_html_()
    assert "<table" in page and "2 to code" in page and "96x64" in page
    report = sync_job(src, store, options=vaeflow.JobOptions(progress=False))
    page = report._repr_html_()
    assert "<table" in page and "2 of 3" in page and "ls " in page
    page = vaeflow.open_store(store)._repr_html_()
    assert "<table" in page and "0.png" in page and "f8c12-v2" in page
    assert "<odd>" not in page  # names are escaped


def test_bars_are_drawn_on_a_terminal_or_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAEFLOW_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", open("/dev/null", "w"))  # noqa: SIM115  # not a terminal
    assert not progressbar.wanted() and progressbar.progress_bar(total=1).disable
    monkeypatch.setenv("VAEFLOW_PROGRESS", "1")
    assert progressbar.wanted()
    monkeypatch.setenv("VAEFLOW_PROGRESS", "0")
    assert not progressbar.wanted()
    assert not progressbar.in_notebook()
