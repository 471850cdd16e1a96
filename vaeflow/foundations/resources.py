"""Where the shipped data lives: inside the installed package, or beside it in a source tree."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # vaeflow/


def data_dir(packaged: str, source: str, marker: str) -> Path:
    """``vaeflow/<packaged>`` in a wheel install, else ``<repo>/<source>`` in a checkout."""
    for candidate in (_PACKAGE / packaged, _PACKAGE.parent / source):
        if (candidate / marker).exists():
            return candidate
    return _PACKAGE / packaged


def vaeflow_version() -> str:
    try:
        return version("vaeflow")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def shipped_models_dir() -> Path:
    return data_dir("shipped", "models", "models.toml")


def presets_dir() -> Path:
    return data_dir("presets_data", "pipelines", "default.toml")
