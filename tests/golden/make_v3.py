"""Write the golden format-3 streams into tests/golden/v3 and add them to manifest.json.

    python tests/golden/make_v3.py

Run once, when format 3 was made. It refuses to replace a file or a manifest entry that
exists: golden files are never rewritten (a later format gets a script of its own).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from make_v2 import sources, write

import vaeflow
from vaeflow.codec.api import resolve_codec
from vaeflow.models.registry import ModelRef
from vaeflow.stages import VAE, Entropy, Quantize, Wavelet

GOLDEN = Path(__file__).parent
VERSION = 3


def image_streams(images: dict[str, np.ndarray]) -> dict[str, tuple[str, bytes]]:
    """One stream per format-3 feature (the band coder), with the source it was made from."""
    bands = Entropy("bands")
    store = resolve_codec(None, None, "latent-store")
    default = resolve_codec(None, 50, "default")
    return {
        "bands-latent-store": ("rocket", vaeflow.compress(images["rocket"], pipeline=store.replaced(bands))),
        "bands-q10-odd": ("odd", vaeflow.compress(images["odd"], pipeline=resolve_codec(None, 10, "default").replaced(
            bands))),
        "bands-step-6-levels": ("large", vaeflow.compress(images["large"], pipeline=default.replaced(
            bands, Wavelet("cdf97", 6), Quantize(step=0.05, allocation="uniform")))),
        "bands-one-pixel": ("pixel", vaeflow.compress(images["pixel"], pipeline=default.replaced(bands))),
    }  # fmt: skip


def wide_stream(images: dict[str, np.ndarray]) -> bytes:
    """A 32-channel band-coded stream, decodable to its latent alone: the default model's symbols of a
    photo repeated to 32 channels (each copy shifted and scaled), under a model that names itself."""
    codec = resolve_codec(None, 40, "wide-latent")
    symbols = codec.run(images["coffee"][None], until="quantize")
    wide = np.concatenate([np.roll(symbols, k, axis=-1) * (1 + k % 3) for k in range(8)], axis=1).astype(np.int32)
    model = ModelRef("golden-wide-32", "00" * 8, 32, 8)
    uniform = replace(codec.with_step(0.25).quantize, allocation="uniform")
    wide_codec = replace(codec, model=model, allocation_table=None).with_stages(
        VAE(model.name), Entropy("bands"), uniform
    )
    return wide_codec.entropy_code(wide, [images["coffee"].shape[:2]])[0]


def main() -> None:
    images = sources()
    made: dict[str, tuple[np.ndarray | None, bytes]] = {
        name: (images[source], data) for name, (source, data) in image_streams(images).items()
    }
    made["bands-wide-32"] = (None, wide_stream(images))
    for name, (_, data) in made.items():
        assert vaeflow.info(data)["pipeline"]["entropy"]["coder"] == "bands", name
    write(made, VERSION)


if __name__ == "__main__":
    main()
