"""Write the golden format-5 streams into tests/golden/v5 and add them to manifest.json.

    python tests/golden/make_v5.py

Run once, when format 5 was made (the sequential coder, every new stream's). It refuses to
replace a file or a manifest entry that exists: golden files are never rewritten (a later format
gets a script of its own). Streams of the default model (f8c12-v2, 12 channels) and of f8c4-v1
(4 channels), and a 32-channel stream whose model exists only to name it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from make_v2 import sources, write

import vaeflow
from vaeflow.codec.api import resolve_codec
from vaeflow.models.registry import ModelRef
from vaeflow.stages import VAE, Quantize, Wavelet

GOLDEN = Path(__file__).parent
VERSION = 5


def image_streams(images: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, bytes]]:
    """One stream per format-5 case, with the image it was made from."""
    default = resolve_codec(None, 50, "default")
    fine = default.replaced(Wavelet("cdf53", 2), Quantize(step=0.004, allocation="uniform"))
    return {
        "default-q90": (images["coffee"], vaeflow.compress(images["coffee"], quality=90)),
        "default-q10-odd": (images["odd"], vaeflow.compress(images["odd"], quality=10)),
        "latent-store-odd": (images["odd"], vaeflow.compress(images["odd"], pipeline="latent-store", verify="all")),
        "latent-store-predicted": (
            images["rocket"],
            vaeflow.compress(images["rocket"], pipeline="latent-store", verify="none"),
        ),
        "f8c4-v1-q50": (images["astronaut"], vaeflow.compress(images["astronaut"], model="f8c4-v1", quality=50)),
        "fine-step-long-tokens": (images["square"], vaeflow.compress(images["square"], pipeline=fine)),
        "one-pixel": (images["pixel"], vaeflow.compress(images["pixel"], pipeline="latent-store")),
    }


def wide_stream(images: dict[str, np.ndarray]) -> bytes:
    """A 32-channel stream, decodable to its latent alone: the default model's symbols of a photo repeated
    (shifted) to 32 channels, under a model that names itself."""
    codec = resolve_codec(None, 40, "wide-latent")
    symbols = codec.run(images["coffee"][None], until="quantize")
    wide = np.concatenate([np.roll(symbols, k, axis=-1) for k in range(3)], axis=1)[:, :32]
    model = ModelRef("golden-wide-32", "00" * 8, 32, 8)
    uniform = replace(codec.with_step(0.25).quantize, allocation="uniform")
    wide_codec = replace(codec, model=model, allocation_table=None).with_stages(VAE(model.name), uniform)
    return wide_codec.entropy_code(wide, [images["coffee"].shape[:2]])[0]


def main() -> None:
    images = sources()
    made: dict[str, tuple[np.ndarray | None, bytes]] = dict(image_streams(images))
    made["sequential-wide-32"] = (None, wide_stream(images))
    for name, (_, data) in made.items():
        info = vaeflow.info(data)
        assert info["format_version"] == VERSION and info["pipeline"]["entropy"]["coder"] == "sequential", name
    write(made, VERSION)


if __name__ == "__main__":
    main()
