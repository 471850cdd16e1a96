"""Write tests/golden/pixel_sums.json: each golden stream's and store image's decoded pixel sums, by row and by column.

    python tests/golden/make_pixel_sums.py

The manifest's pixel hashes are what ONNX Runtime decoded on the machine that made each file.
ONNX Runtime's float arithmetic may round differently on another CPU (its kernels differ by
instruction set), which turns a few decoded values sitting within about 1e-3 of a half into
their neighbours: the hash changes, the image does not. These sums (of the uint8 values, per
row and per column) let the golden test tell that apart from a real change: each off by a few
units at most, where any change to the latent, the model or the pixels' places moves them by
far more. It adds entries for new golden files only: a recorded entry is never computed again or replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import vaeflow

GOLDEN = Path(__file__).parent


def line_sums(pixels: np.ndarray) -> dict[str, list[int]]:
    """The sums of an H x W x 3 image's values along each row and each column."""
    values = pixels.astype(np.int64).sum(axis=2)
    return {"rows": values.sum(axis=1).tolist(), "columns": values.sum(axis=0).tolist()}


def main() -> None:
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    path = GOLDEN / "pixel_sums.json"
    sums: dict[str, dict[str, list[int]]] = json.loads(path.read_text()) if path.exists() else {}
    found: dict[str, dict[str, list[int]]] = {}
    for name, entry in manifest["streams"].items():
        if entry["pixels_sha256"] is not None and name not in sums:
            found[name] = line_sums(vaeflow.decompress((GOLDEN / entry["file"]).read_bytes()))
    for store in ("store", "store_v2"):
        reader = vaeflow.open_store(GOLDEN / manifest[store]["path"])
        for image in manifest[store]["images"]:
            if f"{store}/{image}" not in sums:
                found[f"{store}/{image}"] = line_sums(reader.read_image(image))
    path.write_text(json.dumps({**sums, **found}, indent=2, sort_keys=True) + "\n")
    print(f"{len(found)} pixel sums in {path}")


if __name__ == "__main__":
    main()
