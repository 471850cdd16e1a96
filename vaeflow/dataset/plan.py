"""The plan of a dataset job: images grouped by padded shape and cut into batches.

A plan is built, and every setting checked, before anything runs; ``str(plan)`` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vaeflow.dataset.scan import Scan, ScannedImage
from vaeflow.errors import PipelineError
from vaeflow.models import RuntimeOptions, load_model
from vaeflow.pipeline import Codec

BATCH_PIXEL_BUDGET = 16_000_000  # pixels per VAE run, so that big images get small batches


@dataclass(frozen=True)
class Item:
    index: int  # position in the store's index
    path: str
    height: int
    width: int
    size_bytes: int = 0


@dataclass(frozen=True)
class Batch:
    key: str  # stable name, e.g. "g0-b3"; it names the batch's tasks and marker
    group: int
    padded_shape: tuple[int, int]
    start: int  # first row of the batch in its group's work arrays
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Group:
    index: int
    padded_shape: tuple[int, int]
    latent_shape: tuple[int, int, int]
    size: int


@dataclass(frozen=True)
class Plan:
    src: Path
    store: Path
    codec: Codec
    settings: dict[str, Any]
    items: tuple[Item, ...]
    failed_at_scan: tuple[tuple[Item, str], ...]
    skipped: tuple[tuple[str, str], ...]
    groups: tuple[Group, ...]
    batches: tuple[Batch, ...]
    batch_size: int
    key_prefix: str = ""

    @property
    def megapixels(self) -> float:
        return sum(b.padded_shape[0] * b.padded_shape[1] * len(b.items) for b in self.batches) / 1e6

    def __str__(self) -> str:
        lines = [
            f"plan: {self.src} -> {self.store}",
            f"  model {self.settings['model']} ({self.settings['fingerprint']}), "
            f"quality {self.settings['codec']['quantize']['quality']}, pipeline {self.settings['pipeline']}",
            f"  images: {len(self.items)} to code, {len(self.failed_at_scan)} unreadable, "
            f"{len(self.skipped)} other files skipped",
            f"  groups: {len(self.groups)} padded shapes; batches: {len(self.batches)} (up to {self.batch_size} each)",
            f"  work: {self.megapixels:.1f} megapixels through the VAE in {len(self.batches)} runs",
        ]
        for g in self.groups[:10]:
            h, w = g.padded_shape
            lines.append(f"    group {g.index}: {g.size} images padded to {w}x{h}, latent {g.latent_shape}")
        if len(self.groups) > 10:
            lines.append(f"    ... and {len(self.groups) - 10} more groups")
        for item, reason in self.failed_at_scan[:10]:
            lines.append(f"  unreadable: {item.path}: {reason}")
        return "\n".join(lines)


def codec_settings(codec: Codec, pipeline_name: str, runtime: RuntimeOptions | None = None) -> dict[str, Any]:
    """What must match for a store to be resumed or extended: model identity and every stage."""
    model = load_model(codec.vae.model, runtime)
    stages = {s.stage_name: asdict(s) for s in codec.pipeline().stages}  # type: ignore[call-overload]
    stages["vae"]["model"] = model.name
    return {"model": model.name, "fingerprint": model.fingerprint, "pipeline": pipeline_name, "codec": stages}


def build_plan(
    scan: Scan,
    src: Path,
    store: Path,
    codec: Codec,
    settings: dict[str, Any],
    batch_size: int,
    first_index: int = 0,
    key_prefix: str = "",
) -> Plan:
    if batch_size < 1:
        raise PipelineError(f"batch size must be at least 1, got {batch_size}")
    model = load_model(codec.vae.model)
    stride = model.downsample
    items: list[Item] = []
    failed: list[tuple[Item, str]] = []
    by_shape: dict[tuple[int, int], list[Item]] = {}
    for i, scanned in enumerate(scan.images):
        item = Item(first_index + i, scanned.path, scanned.height, scanned.width, scanned.size_bytes)
        if scanned.error is not None:
            failed.append((item, scanned.error))
            continue
        items.append(item)
        by_shape.setdefault(_padded(scanned, stride), []).append(item)
    groups, batches = [], []
    for g, shape in enumerate(sorted(by_shape)):
        members = by_shape[shape]
        latent = model.latent_shape(*shape)
        groups.append(Group(g, shape, latent, len(members)))
        per_batch = max(1, min(batch_size, BATCH_PIXEL_BUDGET // (shape[0] * shape[1])))
        for b, start in enumerate(range(0, len(members), per_batch)):
            chunk = tuple(members[start : start + per_batch])
            batches.append(Batch(f"{key_prefix}g{g}-b{b}", g, shape, start, chunk))
    return Plan(
        src=src,
        store=store,
        codec=codec,
        settings=settings,
        items=tuple(items),
        failed_at_scan=tuple(failed),
        skipped=scan.skipped,
        groups=tuple(groups),
        batches=tuple(batches),
        batch_size=batch_size,
        key_prefix=key_prefix,
    )


def _padded(image: ScannedImage, stride: int) -> tuple[int, int]:
    return (-(-image.height // stride) * stride, -(-image.width // stride) * stride)
