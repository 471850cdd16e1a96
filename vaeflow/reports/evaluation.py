"""``vaeflow eval``: every image through every codec at every setting, into one results document.

Each (image, codec) pair is one task, mapped in this process or on a Dask client; tasks
read their image from disk and return only figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeflow.codec.codec import Codec
from vaeflow.foundations.imageio import list_images
from vaeflow.foundations.progressbar import progress_bar
from vaeflow.models import load_model
from vaeflow.reports import codecs
from vaeflow.reports.results import codec_entry, document

Mapper = Callable[[Callable[[codecs.RunSpec], dict[str, list[float]]], list[codecs.RunSpec]], Iterable[Any]]


@dataclass(frozen=True)
class Variant:
    """One vaeflow configuration to evaluate: a label, a preset name or codec, and a model (else ``model``'s)."""

    label: str
    pipeline: str | Codec | None = None
    model: str | None = None


def evaluate(
    folder: Path,
    qualities: list[int],
    baselines: list[str],
    *,
    model: str = "default",
    pipeline: str | None = None,
    baseline_qualities: list[int] | None = None,
    limit: int | None = None,
    mapper: Mapper | None = None,
    variants: list[Variant] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every image through each vaeflow variant (by default ``pipeline`` on ``model``) and each baseline.

    ``baselines`` are names from ``codecs.BASELINES`` (jpeg, webp, avif, jxl, jp2), each at its
    default settings (qualities 5 to 90; JPEG 2000 at compression ratios 400:1 to 12:1), or at
    ``baseline_qualities`` for those set by a quality. ``progress`` shows a bar of the
    (image, codec) runs on a terminal or in a notebook.
    """
    codecs.check_baselines(baselines)
    paths = list_images(folder, limit)
    variants = variants or [Variant(f"vaeflow ({load_model(model).name})", pipeline)]
    plan: list[tuple[str, tuple[int, ...], Variant | None]] = [("vaeflow", tuple(qualities), v) for v in variants]
    for b in baselines:
        own = codecs.BASELINES[b].settings
        plan.append((b, own if b in codecs.RATIO_SETTINGS else tuple(baseline_qualities or own), None))
    specs = [
        codecs.RunSpec(str(p), codec, settings, _model_of(variant, model), variant.pipeline if variant else None)
        for codec, settings, variant in plan
        for p in paths
    ]
    results = iter((mapper or _local)(codecs.run, specs))
    entries = []
    with progress_bar(enabled=progress, total=len(specs), desc="eval", unit="run") as bar:
        for codec, settings, variant in plan:
            per_image = {}
            for p in paths:
                per_image[p.name] = next(results)
                bar.set_postfix_str(f"{codec} {p.name}", refresh=False)
                bar.update()
            model_name = None
            if variant is not None:
                shown = variant.pipeline if isinstance(variant.pipeline, str) or variant.pipeline is None else "custom"
                model_name = load_model(variant.model or model).name
                name, description = variant.label, f"vaeflow, model {model_name}, pipeline {shown or 'default'}"
            else:
                baseline = codecs.BASELINES[codec]
                name, description = (
                    baseline.label,
                    f"{baseline.label} ({baseline.library}), {baseline.setting} per point",
                )
            entries.append(codec_entry(name, description, codec, list(settings), per_image, model_name))
    return document(str(folder), [p.name for p in paths], entries)


def _model_of(variant: Variant | None, model: str) -> str:
    return (variant.model if variant else None) or model


def _local(fn: Callable[[codecs.RunSpec], Any], items: list[codecs.RunSpec]) -> Iterator[Any]:
    return map(fn, items)
