"""Rate-distortion plots and residual maps, drawn from the results schema alone."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    try:
        import matplotlib  # optional (the report extra), only for plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # the same optional extra
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'vaeflow[report]'") from exc
    return plt


def rd_figure(doc: dict[str, Any]) -> Any:
    """Two panels: PSNR and MS-SSIM against bpp, one curve per codec."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for entry in doc["codecs"]:
        r = entry["results"]
        style = {"marker": "o", "markersize": 3, "linewidth": 2.2 if entry["codec"] == "vaeflow" else 1.4}
        axes[0].plot(r["bpp"], r["psnr-rgb"], label=entry["name"], **style)
        axes[1].plot(r["bpp"], r["ms-ssim-rgb"], label=entry["name"], **style)
    n = len(doc["dataset"]["images"])
    for ax, label in zip(axes, ("PSNR RGB (dB)", "MS-SSIM RGB"), strict=True):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, _xlimit(doc))
    axes[0].legend()
    fig.suptitle(f"{Path(doc['dataset']['path']).name}: mean of {n} images")
    return fig


def _xlimit(doc: dict[str, Any]) -> float:
    vaeflow_max = max((max(e["results"]["bpp"]) for e in doc["codecs"] if e["codec"] == "vaeflow"), default=1.0)
    return float(min(2.0, max(0.6, 1.6 * vaeflow_max)))


def save_rd_plot(doc: dict[str, Any], out_dir: Path, stem: str = "rd") -> list[Path]:
    plt = _pyplot()
    fig = rd_figure(doc)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def figure_svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def residual_png(original: np.ndarray, decoded: np.ndarray) -> bytes:
    """A heat map of the absolute error (mean over channels), with a colour bar, as PNG bytes."""
    plt = _pyplot()
    error = np.abs(original.astype(np.float32) - decoded.astype(np.float32)).mean(axis=2)
    fig, ax = plt.subplots(figsize=(6, 6 * error.shape[0] / error.shape[1] + 0.3), constrained_layout=True)
    shown = ax.imshow(error, cmap="inferno", vmin=0, vmax=max(8.0, float(np.percentile(error, 99.5))))
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, shrink=0.8, label="|error| (0..255)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
