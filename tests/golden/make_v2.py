"""Write the golden format-2 streams into tests/golden/v2 and add them to manifest.json.

    python tests/golden/make_v2.py

Run once, when format 2 was made. It refuses to replace a file or a manifest entry that
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
import skimage.data

import vaeflow
from vaeflow.codec.api import resolve_codec
from vaeflow.foundations import metrics
from vaeflow.models.registry import ModelRef
from vaeflow.stages import VAE, ChannelTransform, Entropy, PostFilter, Quantize, Wavelet

GOLDEN = Path(__file__).parent
VERSION = 2


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def sources() -> dict[str, np.ndarray]:
    coffee, chelsea = skimage.data.coffee(), skimage.data.chelsea()
    astronaut, rocket = skimage.data.astronaut(), skimage.data.rocket()
    return {
        "coffee": coffee[100:196, 200:328],
        "astronaut": astronaut[40:168, 180:308],
        "odd": chelsea[60:97, 120:173],
        "square": astronaut[40:136, 180:276],
        "rocket": rocket[150:214, 200:296],
        "small": coffee[200:240, 300:356],
        "large": astronaut[100:300, 100:356],
        "pixel": chelsea[150:151, 200:201],
    }


def image_streams(images: dict[str, np.ndarray]) -> dict[str, tuple[str, bytes]]:
    """One stream per format-2 feature, with the source it was made from."""
    default = resolve_codec(None, 50, "default")
    return {
        "default-q50": ("coffee", vaeflow.compress(images["coffee"], quality=50)),
        "default-q10": ("astronaut", vaeflow.compress(images["astronaut"], quality=10)),
        "default-q90-odd": ("odd", vaeflow.compress(images["odd"], quality=90)),
        "plain-q30": ("rocket", vaeflow.compress(images["rocket"], pipeline="plain", quality=30)),
        "wide-latent-q40": ("square", vaeflow.compress(images["square"], pipeline="wide-latent", quality=40)),
        "latent-store": ("rocket", vaeflow.compress(images["rocket"], pipeline="latent-store")),
        "target-bpp": ("rocket", vaeflow.compress(images["rocket"], target_bpp=0.4)),
        "target-psnr": ("rocket", vaeflow.compress(images["rocket"], target_psnr=28.0)),
        "haar2-rdo-postfilter": ("rocket", vaeflow.compress(images["rocket"], pipeline=default.replaced(
            Wavelet("haar", 2), replace(default.quantize, quality=40, rdo=True), PostFilter(0.75)))),
        "cdf53-step-identity": ("rocket", vaeflow.compress(images["rocket"], pipeline=default.replaced(
            Wavelet("cdf53", 1), ChannelTransform("identity"), Quantize(step=0.3, allocation="uniform")))),
        "no-wavelet": ("small", vaeflow.compress(images["small"], pipeline=default.replaced(Wavelet("haar", 0)))),
        "cdf97-6-levels": ("large", vaeflow.compress(images["large"], pipeline=default.replaced(Wavelet("cdf97", 6)))),
        "one-pixel": ("pixel", vaeflow.compress(images["pixel"], quality=50)),
    }  # fmt: skip


def wide_stream(images: dict[str, np.ndarray]) -> bytes:
    """A 32-channel stream (the class coder's wide weight set), decodable to its latent alone: the
    default model's symbols of a photo repeated to 32 channels, under a model that names itself."""
    codec = resolve_codec(None, 40, "wide-latent")
    symbols = codec.run(images["coffee"][None], until="quantize")
    wide = np.concatenate([np.roll(symbols, k, axis=-1) for k in range(8)], axis=1)
    model = ModelRef("golden-wide-32", "00" * 8, 32, 8)
    uniform = replace(codec.with_step(0.25).quantize, allocation="uniform")
    wide_codec = replace(codec, model=model, allocation_table=None).with_stages(
        VAE(model.name), Entropy("classes"), uniform
    )
    return wide_codec.entropy_code(wide, [images["coffee"].shape[:2]])[0]


def entry(name: str, data: bytes, source: np.ndarray | None, version: int = VERSION) -> dict[str, object]:
    latent = vaeflow.decompress_latent(data)
    info = vaeflow.info(data)
    assert info["format_version"] == version, (name, info["format_version"])
    out: dict[str, object] = {"file": f"v{version}/{name}.vfl", "format_version": version,
                              "stream_sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    if source is not None:
        pixels = vaeflow.decompress(data)
        out |= {"pixels_shape": list(pixels.shape), "pixels_sha256": sha(pixels),
                "source_psnr": round(metrics.psnr(source, pixels), 3)}  # fmt: skip
    else:
        out |= {"pixels_shape": None, "pixels_sha256": None}
    return out | {"latent_shape": list(latent.shape), "latent_dtype": str(latent.dtype),
                  "latent_sha256": sha(latent), "info": info}  # fmt: skip


def write(made: dict[str, tuple[np.ndarray | None, bytes]], version: int = VERSION) -> None:
    """Write each stream into v{version}/ and its entry into the manifest, refusing to replace either."""
    manifest_path = GOLDEN / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    folder = GOLDEN / f"v{version}"
    folder.mkdir(exist_ok=True)
    for name, (source, data) in made.items():
        key = f"v{version}-{name}"
        path = folder / f"{name}.vfl"
        if key in manifest["streams"] or path.exists():
            sys.exit(f"{path} or manifest entry {key} exists: golden files are never rewritten")
        path.write_bytes(data)
        manifest["streams"][key] = entry(name, data, source, version)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=GOLDEN).stdout.strip()
    manifest.setdefault("made_by_version", {})[str(version)] = f"vaeflow on top of commit {commit} (format {version})"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(made)} format-{version} streams to {folder}")


def main() -> None:
    images = sources()
    made: dict[str, tuple[np.ndarray | None, bytes]] = {
        name: (images[source], data) for name, (source, data) in image_streams(images).items()
    }
    made["classes-wide-32"] = (None, wide_stream(images))
    write(made)


if __name__ == "__main__":
    main()
