"""Named pipeline presets: TOML files in ``pipelines/``, loadable by name or by path.

A preset is ``Pipeline.to_dict()`` written as TOML: a ``description`` and one table per
stage, in any order, and optionally a rate target::

    [vae]        model = "default"
    [channel]    transform = "hadamard"          # or "identity"
    [wavelet]    name = "cdf97", levels = 3      # haar, cdf53, cdf97; 0..6 levels
    [quantize]   quality = 50, rounding = 0.375  # or step; allocation = "decoder"; rdo = false
    [entropy]    coder = "auto"                  # or "sequential" (the others decode older streams only)
    [postfilter] sigma = 0.0                     # optional blur after decoding
    [target]     max_latent_error = 0.5          # or bpp, psnr; max_psnr_drop beside max_latent_error

Unknown sections and keys are refused, naming what is allowed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from vaeflow.foundations.errors import PipelineError
from vaeflow.foundations.resources import presets_dir
from vaeflow.stages import Pipeline


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def load_pipeline(name_or_path: str | Path) -> Pipeline:
    """A preset by name (``default``, ``latent-store``) or from a TOML file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = presets_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise PipelineError(f"unknown pipeline preset {str(name_or_path)!r}; presets: {', '.join(preset_names())}")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline preset {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return Pipeline.from_dict(data, str(path))
