"""Write the golden format-4 streams into tests/golden/v4 and add them to manifest.json.

    python tests/golden/make_v4.py

Run once, when format 4 was made (exact latents, the latent unit, measured or predicted PSNR
drops). It refuses to replace a file or a manifest entry that exists: golden files are never
rewritten (a later format gets a script of its own).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from make_v2 import sources, write

import vaeflow
from vaeflow.codec.api import resolve_codec
from vaeflow.models.registry import ModelRef
from vaeflow.stages import VAE

GOLDEN = Path(__file__).parent
VERSION = 4


def image_streams(images: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, bytes]]:
    """One stream per format-4 feature, with the image it was made from."""
    odd_large = images["large"][:197, :251]
    return {
        "latent-store-odd": (images["odd"], vaeflow.compress(images["odd"], pipeline="latent-store", verify="all")),
        "latent-store-predicted": (
            images["rocket"],
            vaeflow.compress(images["rocket"], pipeline="latent-store", verify="none"),
        ),
        "default-q90-odd-large": (odd_large, vaeflow.compress(odd_large, quality=90)),
        "bands-latent-store-pixel": (images["pixel"], vaeflow.compress(images["pixel"], pipeline="latent-store-fast")),
    }


def unit_stream(images: dict[str, np.ndarray]) -> bytes:
    """A stream of latent unit 2 (a model folding 2x2 patches into channels pads images to 16 pixels),
    decodable to its latent alone: the default model's symbols of a 40 x 56 image padded to 48 x 64,
    under a model that names itself."""
    codec = resolve_codec(None, 50, "default")
    padded = np.pad(images["small"], ((0, 8), (0, 8), (0, 0)), mode="edge")
    symbols = codec.run(padded[None], until="quantize")
    model = ModelRef("golden-patch-2", "00" * 8, 4, 8)
    uniform = replace(codec.quantize, allocation="uniform")
    unit_codec = replace(codec, model=model, latent_unit=2, allocation_table=None).with_stages(VAE(model.name), uniform)
    return unit_codec.entropy_code(symbols, [images["small"].shape[:2]])[0]


def main() -> None:
    images = sources()
    made: dict[str, tuple[np.ndarray | None, bytes]] = dict(image_streams(images))
    made["unit-2"] = (None, unit_stream(images))
    for name, (_, data) in made.items():
        assert vaeflow.info(data)["format_version"] == VERSION, name
    write(made, VERSION)


if __name__ == "__main__":
    main()
