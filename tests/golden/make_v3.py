"""Write the golden format-3 streams into tests/golden/v3 and add them to manifest.json.

    python tests/golden/make_v3.py

Run once, when format 3 was made. It refuses to replace a file or a manifest entry that
exists: golden files are never rewritten (a later format gets a script of its own).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from make_v2 import sha, sources

import vaeflow
from vaeflow import metrics
from vaeflow.codec.api import resolve_codec
from vaeflow.models.registry import ModelRef
from vaeflow.stages import Entropy, Quantize, Wavelet

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
    wide_codec = replace(codec, model=model, entropy=Entropy("bands"), allocation_table=None,
                         quantize=replace(codec.with_step(0.25).quantize, allocation="uniform"))  # fmt: skip
    return wide_codec.entropy_code(wide, [images["coffee"].shape[:2]])[0]


def entry(name: str, data: bytes, source: np.ndarray | None) -> dict[str, object]:
    latent = vaeflow.decompress_latent(data)
    info = vaeflow.info(data)
    assert info["format_version"] == VERSION and info["pipeline"]["entropy"]["coder"] == "bands", (name, info)
    out: dict[str, object] = {"file": f"v{VERSION}/{name}.vfl", "format_version": VERSION,
                              "stream_sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    if source is not None:
        pixels = vaeflow.decompress(data)
        out |= {"pixels_shape": list(pixels.shape), "pixels_sha256": sha(pixels),
                "source_psnr": round(metrics.psnr(source, pixels), 3)}  # fmt: skip
    else:
        out |= {"pixels_shape": None, "pixels_sha256": None}
    return out | {"latent_shape": list(latent.shape), "latent_dtype": str(latent.dtype),
                  "latent_sha256": sha(latent), "info": info}  # fmt: skip


def main() -> None:
    manifest_path = GOLDEN / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    folder = GOLDEN / f"v{VERSION}"
    folder.mkdir(exist_ok=True)
    images = sources()
    made = {name: (images[source], data) for name, (source, data) in image_streams(images).items()}
    made["bands-wide-32"] = (None, wide_stream(images))  # type: ignore[assignment]
    for name, (source, data) in made.items():
        key = f"v{VERSION}-{name}"
        path = folder / f"{name}.vfl"
        if key in manifest["streams"] or path.exists():
            sys.exit(f"{path} or manifest entry {key} exists: golden files are never rewritten")
        path.write_bytes(data)
        manifest["streams"][key] = entry(name, data, source)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=GOLDEN).stdout.strip()
    manifest.setdefault("made_by_version", {})[str(VERSION)] = f"vaeflow at commit {commit} (format {VERSION})"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(made)} format-{VERSION} streams to {folder}")


if __name__ == "__main__":
    main()
