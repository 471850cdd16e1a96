"""Reports open without a network: Dask's performance report carries BokehJS inline and renders in
a real headless browser whose every request off this machine would fail, and neither it nor the
eval report asks for anything beyond the file itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ..helpers import image_folder, run_cli

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if BROWSER is None and os.environ.get("VAEFLOW_REQUIRE_BROWSER"):  # CI installs one: its absence is a failure
    raise RuntimeError("VAEFLOW_REQUIRE_BROWSER is set but no chromium, chromium-browser or google-chrome is on PATH")
PROBE = """<script>window.addEventListener('load', () => setTimeout(() => {
  const b = window.Bokeh;
  document.title = 'bokeh:' + (b ? b.version + ':' + b.documents.length : 'none');
}, 2000));</script>"""


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    return image_folder(tmp_path_factory.mktemp("photos"), photos[:2], 128, 192)


def _render(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The page's title after load, and every URL the page itself asked for (the browser's own
    background requests, which carry no file:// isolation key, are not the page's)."""
    netlog = tmp_path / f"{page.stem}-net.json"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # nothing leaves this machine
             f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={netlog}", "--virtual-time-budget=20000",
             "--dump-dom", page.as_uri()]  # fmt: skip
    assert BROWSER is not None
    done = subprocess.run([BROWSER, *flags], capture_output=True, text=True, timeout=180)
    title = re.search(r"<title>([^<]*)</title>", done.stdout)
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))
    ]
    return (title.group(1) if title else ""), urls


def _remote(urls: list[str]) -> list[str]:
    local = ("file://", "data:", "blob:", "about:", "http://127.0.0.1", "http://localhost")
    return sorted({u for u in urls if not u.startswith(local)})


@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt-get install chromium)")
def test_the_request_check_sees_what_a_page_asks_for(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text('<!doctype html><title>control</title><img src="https://example.invalid/x.png">')
    title, urls = _render(page, tmp_path)
    assert title == "control" and _remote(urls) == ["https://example.invalid/x.png"]


def test_the_performance_report_embeds_bokehjs(photo_folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "job.html"
    out = run_cli("compress", str(photo_folder), str(tmp_path / "s.zarr"), "--workers", "1", "--report", str(report))
    assert out.returncode == 0, out.stderr
    page = report.read_text()
    assert not re.search(r"<script[^>]+src=\"https?://", page), "BokehJS is inline, not from a CDN"
    assert not re.search(r"<link[^>]+href=\"https?://", page)
    assert "Bokeh" in page and len(page) > 500_000  # BokehJS itself is in the page


@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt-get install chromium)")
def test_the_performance_report_renders_offline_in_a_browser(photo_folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "job.html"
    out = run_cli("compress", str(photo_folder), str(tmp_path / "s.zarr"), "--workers", "1", "--report", str(report))
    assert out.returncode == 0, out.stderr
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    title, urls = _render(probe, tmp_path)
    assert re.fullmatch(r"bokeh:\d+\.\d+\.\d+:[1-9]\d*", title), f"BokehJS did not render the report: {title!r}"
    assert not _remote(urls), _remote(urls)


@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt-get install chromium)")
def test_the_eval_report_asks_for_nothing_off_the_machine(photo_folder: Path, tmp_path: Path) -> None:
    out = run_cli("eval", str(photo_folder), "--qualities", "20,60", "--baselines", "jpeg", "--baseline-qualities",
               "10,50", "--out", str(tmp_path / "eval"), "--scheduler", "sync")  # fmt: skip
    assert out.returncode == 0, out.stderr
    title, urls = _render(tmp_path / "eval" / "report.html", tmp_path)
    assert title == "vaeflow evaluation"
    assert not _remote(urls), _remote(urls)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [e["name"] for e in results["codecs"]][1] == "JPEG"
