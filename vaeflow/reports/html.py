"""A self-contained HTML report: RD plots, the BD-rate table, per-image rows, crops and residuals."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vaeflow.imageio import read_rgb
from vaeflow.reports import codecs
from vaeflow.reports.plots import figure_svg, rd_figure, residual_png
from vaeflow.reports.tables import bd_table

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


def crops_section(doc: dict[str, Any], image_name: str, model: str, pipeline: str | None = None) -> str:
    """Original, vaeflow at its middle setting, and each baseline at about the same bpp."""
    folder = Path(doc["dataset"]["path"])
    image = read_rgb(folder / image_name)
    vf = next(e for e in doc["codecs"] if e["codec"] == "vaeflow")
    setting_index = len(vf["settings"]) // 2
    target_bpp = vf["per_image"][image_name]["bpp"][setting_index]
    top, left = max(0, (image.shape[0] - CROP) // 2), max(0, (image.shape[1] - CROP) // 2)
    window = np.s_[top : top + CROP, left : left + CROP]
    cells = [("original", image[window], "")]
    residual = b""
    for entry in doc["codecs"]:
        index = setting_index if entry is vf else _nearest(entry, target_bpp, image_name)
        setting = int(entry["settings"][index])
        decoded, n_bytes = codecs.reconstruct(image, entry["codec"], setting, model, pipeline)
        bpp = 8 * n_bytes / (image.shape[0] * image.shape[1])
        psnr = entry["per_image"][image_name]["psnr-rgb"][index]
        cells.append((f"{entry['name']} q{setting}", decoded[window], f"{bpp:.3f} bpp, {psnr:.2f} dB"))
        if entry is vf:
            residual = residual_png(image, decoded)
    figures = "".join(
        f'<figure><img src="{_png_data_uri(_array_png(pixels))}" width="{CROP}"><figcaption>{html.escape(title)}'
        f"<br>{html.escape(caption)}</figcaption></figure>"
        for title, pixels, caption in cells
    )
    return (
        f"<h2>Crops of {html.escape(image_name)} at about {target_bpp:.3f} bpp</h2><div class=row>{figures}</div>"
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
    rows = "".join(
        f"<tr><td>{html.escape(r['test'])}</td><td>{html.escape(r['anchor'])}</td>"
        f"<td>{r['bd_rate_psnr']:+.1f}%</td><td>{r['bd_rate_ms_ssim']:+.1f}%</td>"
        f"<td>{r['common_bpp'][0]:.3f}–{r['common_bpp'][1]:.3f}</td></tr>"
        for r in bd_table(doc)
    )
    return (
        "<table><tr><th>test</th><th>anchor</th><th>BD-rate (PSNR)</th><th>BD-rate (MS-SSIM dB)</th>"
        f"<th>common bpp</th></tr>{rows}</table><p>Bjøntegaard delta rate with piecewise cubic (PCHIP) "
        "interpolation of log rate; negative means vaeflow needs fewer bits for the same quality.</p>"
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
