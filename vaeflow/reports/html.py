"""A self-contained HTML report: RD plots, the BD-rate table, per-image rows, crops and residuals."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vaeflow.foundations import metrics
from vaeflow.foundations.imageio import read_rgb
from vaeflow.reports import codecs, matched
from vaeflow.reports.plots import figure_svg, rd_figure, residual_png
from vaeflow.reports.tables import METRIC_SCALES, NO_COMMON_RANGE, bd_table, integrated, percent

CROP = 256


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _array_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _nearest(entry: dict[str, Any], bpp: float, image: str) -> int:
    series = entry["per_image"][image]["bpp"]
    return int(np.argmin([abs(b - bpp) for b in series]))


def _setting_name(entry: dict[str, Any], setting: int) -> str:
    return f"ratio {setting}:1" if entry["codec"] in codecs.RATIO_SETTINGS else f"q{setting}"


def _model_of(entry: dict[str, Any], model: str) -> str:
    """The model a vaeflow entry ran: its ``model``; in documents written before entries recorded it, the
    model its description names ("vaeflow, model NAME, ..."), else ``model``."""
    if "model" in entry:
        return str(entry["model"])
    found = re.match(r"vaeflow, model (\S+), ", entry["description"]) if entry["codec"] == "vaeflow" else None
    return found.group(1) if found else model


def crops_section(doc: dict[str, Any], image_name: str, model: str, pipeline: str | None = None) -> str:
    """Original and every codec at the setting nearest one target bpp (vaeflow's middle setting),
    each searched over its whole setting range on this image, with the bpp each reached."""
    folder = Path(doc["dataset"]["path"])
    image = read_rgb(folder / image_name)
    vf = next(e for e in doc["codecs"] if e["codec"] == "vaeflow")
    target_bpp = vf["per_image"][image_name]["bpp"][len(vf["settings"]) // 2]
    top, left = max(0, (image.shape[0] - CROP) // 2), max(0, (image.shape[1] - CROP) // 2)
    window = np.s_[top : top + CROP, left : left + CROP]
    cells = [("original", image[window], "")]
    residual = b""
    for entry in doc["codecs"]:
        found = matched.at_bpp(image, entry["codec"], target_bpp, _model_of(entry, model), pipeline)
        caption = f"{found.bpp:.3f} bpp, {metrics.psnr(image, found.decoded):.2f} dB"
        cells.append((f"{entry['name']} {_setting_name(entry, found.setting)}", found.decoded[window], caption))
        if entry is vf:
            residual = residual_png(image, found.decoded)
    figures = "".join(
        f'<figure><img src="{_png_data_uri(_array_png(pixels))}" width="{CROP}"><figcaption>{html.escape(title)}'
        f"<br>{html.escape(caption)}</figcaption></figure>"
        for title, pixels, caption in cells
    )
    return (
        f"<h2>Crops of {html.escape(image_name)} at matched bpp (target {target_bpp:.3f})</h2>"
        "<p>Each codec at the setting, searched over its whole range on this image, whose bpp is nearest the "
        f"target; each caption gives the bpp it reached.</p><div class=row>{figures}</div>"
        f"<h2>Residual of vaeflow on {html.escape(image_name)}</h2>"
        f'<img src="{_png_data_uri(residual)}" style="max-width:720px">'
    )


def per_image_table(doc: dict[str, Any]) -> str:
    """For each image, every codec at the setting nearest vaeflow's middle setting in bpp."""
    vf = next(e for e in doc["codecs"] if e["codec"] == "vaeflow")
    middle = len(vf["settings"]) // 2
    head = "".join(f"<th colspan=3>{html.escape(e['name'])}</th>" for e in doc["codecs"])
    sub = "<th>bpp</th><th>PSNR</th><th>MS-SSIM</th>" * len(doc["codecs"])
    rows = []
    for image in doc["dataset"]["images"]:
        target = vf["per_image"][image]["bpp"][middle]
        cells = []
        for entry in doc["codecs"]:
            i = middle if entry is vf else _nearest(entry, target, image)
            figures = entry["per_image"][image]
            cells.append(f"<td>{figures['bpp'][i]:.3f}</td><td>{figures['psnr-rgb'][i]:.2f}</td>"
                         f"<td>{figures['ms-ssim-rgb'][i]:.4f}</td>")  # fmt: skip
        rows.append(f"<tr><td>{html.escape(image)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th rowspan=2>image</th>{head}</tr><tr>{sub}</tr>{''.join(rows)}</table>"


def bd_section(doc: dict[str, Any]) -> str:
    rows = []
    for r in bd_table(doc):
        short = r["test"]
        rows.append(
            f"<tr><td>{html.escape(r['test'])}</td><td>{html.escape(r['anchor'])}</td>"
            f"<td>{percent(r['bd_rate_psnr'])}</td><td>{html.escape(integrated(r['psnr'], short, r['anchor']))}</td>"
            f"<td>{percent(r['bd_rate_ms_ssim'])}</td>"
            f"<td>{html.escape(integrated(r['ms_ssim'], short, r['anchor']))}</td></tr>"
        )
    return (
        "<table><tr><th>test</th><th>anchor</th><th>BD-rate (PSNR)</th><th>integrated over</th>"
        f"<th>BD-rate (MS-SSIM dB)</th><th>integrated over</th></tr>{''.join(rows)}</table>"
        f"<p>Scales: {html.escape(METRIC_SCALES['psnr'])}; {html.escape(METRIC_SCALES['ms_ssim'])}. "
        "Bjøntegaard delta rate with piecewise cubic (PCHIP) interpolation of log rate over the quality range both "
        "curves reach (the bpp each curve spans there is given); negative means vaeflow needs fewer bits for the "
        f"same quality; {NO_COMMON_RANGE} where the curves share no quality.</p>"
    )


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}figure{display:inline-block;margin:4px}
figcaption{font-size:12px;text-align:center}.row{display:flex;flex-wrap:wrap}"""


def write_report(
    doc: dict[str, Any], path: Path, model: str = "default", crop_image: str | None = None, pipeline: str | None = None
) -> Path:
    image = crop_image or doc["dataset"]["images"][0]
    body = [
        f"<h1>vaeflow evaluation: {html.escape(doc['dataset']['path'])}</h1>",
        f"<p>{len(doc['dataset']['images'])} images; codecs: "
        + ", ".join(html.escape(e["description"]) for e in doc["codecs"])
        + "</p>",
        "<h2>Rate-distortion</h2>",
        figure_svg(rd_figure(doc)),
        "<h2>BD-rate</h2>",
        bd_section(doc),
        crops_section(doc, image, model, pipeline),
        "<h2>Per image, near vaeflow's middle setting</h2>",
        per_image_table(doc),
    ]
    text = f"<!doctype html><html><head><meta charset=utf-8><title>vaeflow evaluation</title><style>{STYLE}</style>"
    path.write_text(text + f"</head><body>{''.join(body)}</body></html>")
    return path
