"""The results schema (``results.schema.json``): one document per evaluation.

``{"schema": "vaeflow-results/1", "dataset": {"path", "images"}, "codecs": [entry, ...]}``
where each entry is ``{"name", "description", "codec", "settings", "results",
"per_image"}``; ``results`` holds the mean over images and ``per_image[name]`` each
image's figures, both as one value per setting for ``bpp``, ``psnr-rgb``,
``ms-ssim-rgb``, ``ssim``, ``encode_s`` and ``decode_s``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA_ID = "vaeflow-results/1"
METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "ssim", "encode_s", "decode_s")
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


def codec_entry(
    name: str,
    description: str,
    codec: str,
    settings: list[float],
    per_image: dict[str, dict[str, list[float]]],
    model: str | None = None,
) -> dict[str, Any]:
    """An entry with its means computed from ``per_image``; ``model``: the model a vaeflow entry ran."""
    means = {m: [_mean([per_image[image][m][i] for image in per_image]) for i in range(len(settings))] for m in METRICS}
    return {
        "name": name,
        "description": description,
        "codec": codec,
        **({"model": model} if model is not None else {}),
        "settings": settings,
        "results": means,
        "per_image": per_image,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def document(path: str, images: list[str], entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": SCHEMA_ID, "dataset": {"path": path, "images": images}, "codecs": entries}


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())  # type: ignore[no-any-return]


def validate(doc: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem if ``doc`` does not follow the schema."""
    try:
        import jsonschema  # optional (the dev extra); without it a smaller check runs
    except ImportError:  # the checks that matter most, without the library
        if doc.get("schema") != SCHEMA_ID or not doc.get("codecs"):
            raise ValueError("not a vaeflow results document") from None
        return
    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as exc:
        raise ValueError(f"results do not follow the schema at {list(exc.absolute_path)}: {exc.message}") from exc
    for entry in doc["codecs"]:
        n = len(entry["settings"])
        for table in (entry["results"], *entry["per_image"].values()):
            if any(len(table[m]) != n for m in METRICS):
                raise ValueError(f"{entry['name']}: every metric needs one value per setting ({n})")


def save(doc: dict[str, Any], path: Path) -> None:
    validate(doc)
    path.write_text(json.dumps(doc, indent=1))


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    validate(doc)
    return doc  # type: ignore[no-any-return]
