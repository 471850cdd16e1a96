"""Named pipeline presets: TOML files in ``pipelines/``, loadable by name or by path.

A preset has a ``description`` and one table per stage, in any order::

    [vae]        model = "default"
    [channel]    transform = "hadamard"          # or "identity"
    [wavelet]    name = "cdf97", levels = 3      # haar, cdf53, cdf97; 0..6 levels
    [quantize]   quality = 50, rounding = 0.375  # or step, target_bpp, target_psnr, max_latent_error (+ max_psnr_drop)
                 allocation = "decoder", rdo = false
    [ans]        coder = "context"                # or "laplace"
    [postfilter] sigma = 0.0                     # optional blur after decoding
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from vaeflow.errors import PipelineError
from vaeflow.pipeline import STAGE_ORDER, Pipeline
from vaeflow.resources import presets_dir
from vaeflow.stages.channel import ChannelTransform
from vaeflow.stages.entropy import ANS
from vaeflow.stages.postfilter import PostFilter
from vaeflow.stages.quantize import Quantize
from vaeflow.stages.vae import VAE
from vaeflow.stages.wavelet import Wavelet

STAGE_TYPES: dict[str, type] = {
    "postfilter": PostFilter,
    "vae": VAE,
    "channel": ChannelTransform,
    "wavelet": Wavelet,
    "quantize": Quantize,
    "ans": ANS,
}


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
        raise PipelineError(f"cannot read pipeline preset {path}: {exc}") from exc
    return pipeline_from_dict(data, str(path))


def pipeline_from_dict(data: dict[str, Any], where: str = "pipeline") -> Pipeline:
    unknown = set(data) - set(STAGE_TYPES) - {"description"}
    if unknown:
        raise PipelineError(f"{where}: unknown sections {sorted(unknown)}; allowed: {['description', *STAGE_TYPES]}")
    stages = []
    for name in STAGE_ORDER:
        if name not in data:
            continue
        cls, table = STAGE_TYPES[name], data[name]
        allowed = [f.name for f in fields(cls)]
        bad = set(table) - set(allowed)
        if bad:
            raise PipelineError(f"{where}: [{name}] has unknown keys {sorted(bad)}; allowed: {allowed}")
        stages.append(cls(**table))
    return Pipeline(tuple(stages), str(data.get("description", "")))
