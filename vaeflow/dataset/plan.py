"""The plan of a dataset job: what happens to the store, and the images grouped by batch
shape (``vaeflow.codec.shapes``) and cut into batches.

A plan is built, and every setting checked, before anything runs, and building it changes
nothing on disk; ``str(plan)`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaeflow.codec import shapes
from vaeflow.codec.codec import Codec
from vaeflow.dataset.policy import StorePolicy
from vaeflow.dataset.scan import Scan, Sidecar
from vaeflow.display import html_list_table, html_table
from vaeflow.errors import PipelineError

BATCH_PIXEL_BUDGET = 16_000_000  # pixels per VAE run, so that big images get small batches


@dataclass(frozen=True, slots=True)
class Item:
    index: int  # position in the store's index
    path: str
    height: int  # the size the image is stored at (its bucket's, with aspect-ratio buckets)
    width: int
    size_bytes: int = 0
    source: tuple[int, int] | None = None  # with buckets: the size as read, resized to ``resized``,
    resized: tuple[int, int] | None = None  # then cropped at ``crop`` (top, left) to (height, width)
    crop: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
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
    policy: StorePolicy
    items: tuple[Item, ...]
    failed_at_scan: tuple[tuple[Item, str], ...]
    skipped: tuple[tuple[str, str], ...]
    groups: tuple[Group, ...]
    batches: tuple[Batch, ...]
    batch_size: int
    buckets: int | None = None  # the area side of aspect-ratio buckets, or None to keep sizes
    sidecars: dict[int, Sidecar] = field(default_factory=dict, repr=False)  # by index: captions, metadata

    @property
    def key_prefix(self) -> str:
        return self.policy.key_prefix

    @property
    def first_index(self) -> int:
        return self.policy.first_row

    @property
    def megapixels(self) -> float:
        return sum(b.padded_shape[0] * b.padded_shape[1] * len(b.items) for b in self.batches) / 1e6

    @property
    def batch_fill(self) -> float:
        """Images per VAE run, as a share of what the batch size allows."""
        if not self.batches:
            return float("nan")
        capacity = [max(1, min(self.batch_size, BATCH_PIXEL_BUDGET // (b.padded_shape[0] * b.padded_shape[1])))
                    for b in self.batches]  # fmt: skip
        return sum(len(b.items) for b in self.batches) / sum(capacity)

    @property
    def padding_overhead(self) -> float:
        """Pixels coded beyond the images' own (rounded to the model's stride), as a share of those."""
        s = self.codec.model.downsample
        own = sum(-(-i.height // s) * s * (-(-i.width // s) * s) for i in self.items)
        return self.megapixels * 1e6 / own - 1 if own else 0.0

    def __str__(self) -> str:
        codec = self.codec
        setting = f"target {codec.target}" if codec.target else f"quality {codec.quantize.quality}"
        if codec.target is None and codec.quantize.quality is None:
            setting = f"step {codec.quantize.step}"
        lines = [
            f"plan: {self.src} -> {self.store} ({self.policy.action} the store)",
            f"  model {codec.model.name} ({codec.model.fingerprint}), {setting}, pipeline {self.settings['pipeline']}",
            f"  images: {len(self.items)} to code, {len(self.failed_at_scan)} unreadable, "
            f"{len(self.skipped)} other files skipped",
            f"  groups: {len(self.groups)} batch shapes; batches: {len(self.batches)} (up to {self.batch_size} each), "
            f"mean fill {100 * self.batch_fill:.0f}%",
            f"  work: {self.megapixels:.1f} megapixels through the VAE in {len(self.batches)} runs, "
            f"{100 * self.padding_overhead:.1f}% of them padding",
        ]
        if self.buckets:
            sides = ", ".join(f"{b.width}x{b.height}" for b in shapes.buckets(self.buckets))
            lines.append(f"  aspect-ratio buckets of about {self.buckets}x{self.buckets} (width x height): {sides}")
        for g in self.groups[:10]:
            h, w = g.padded_shape
            lines.append(f"    group {g.index}: {g.size} images padded to {w}x{h}, latent {g.latent_shape}")
        if len(self.groups) > 10:
            lines.append(f"    ... and {len(self.groups) - 10} more groups")
        for item, reason in self.failed_at_scan[:10]:
            lines.append(f"  unreadable: {item.path}: {reason}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head, *rest = str(self).splitlines()
        groups = [(g.index, g.size, f"{g.padded_shape[1]}x{g.padded_shape[0]}", g.latent_shape) for g in self.groups]
        table = html_list_table(["group", "images", "padded to", "latent"], groups)
        return html_table(head, [(line.split(":", 1)[0].strip(), line.split(":", 1)[-1].strip()) for line in rest
                                 if not line.startswith("    ")]) + table  # fmt: skip


def build_plan(
    scan: Scan,
    src: Path,
    store: Path,
    codec: Codec,
    settings: dict[str, Any],
    policy: StorePolicy,
    batch_size: int,
    buckets: int | None = None,
) -> Plan:
    if batch_size < 1:
        raise PipelineError(f"batch size must be at least 1, got {batch_size}")
    images = [] if policy.action == "complete" else [i for i in scan.images if i.path not in policy.known]
    if policy.only_retried:
        images = [i for i in images if i.path in policy.retried]
    first = policy.first_row
    items: list[Item] = []
    failed: list[tuple[Item, str]] = []
    by_shape: dict[tuple[int, int], list[Item]] = {}
    sidecars: dict[int, Sidecar] = {}
    for i, scanned in enumerate(images):
        item = Item(first + i, scanned.path, scanned.height, scanned.width, scanned.size_bytes)
        if scanned.sidecar is not None:
            sidecars[item.index] = scanned.sidecar
        if scanned.error is not None:
            failed.append((item, scanned.error))
            continue
        if buckets is not None:
            fitted = shapes.fit_bucket(scanned.height, scanned.width, buckets)
            item = Item(item.index, item.path, *fitted.target, item.size_bytes, fitted.source, fitted.resized,
                        fitted.crop_top_left)  # fmt: skip
        items.append(item)
        by_shape.setdefault(codec.batch_shape(item.height, item.width), []).append(item)
    groups, batches = [], []
    for g, shape in enumerate(sorted(by_shape)):
        members = by_shape[shape]
        latent = codec.model.latent_shape(*shape)
        groups.append(Group(g, shape, latent, len(members)))
        per_batch = max(1, min(batch_size, BATCH_PIXEL_BUDGET // (shape[0] * shape[1])))
        for b, start in enumerate(range(0, len(members), per_batch)):
            chunk = tuple(members[start : start + per_batch])
            batches.append(Batch(f"{policy.key_prefix}g{g}-b{b}", g, shape, start, chunk))
    return Plan(
        src=src,
        store=store,
        codec=codec,
        settings=settings,
        policy=policy,
        items=tuple(items),
        failed_at_scan=tuple(failed),
        skipped=scan.skipped,
        groups=tuple(groups),
        batches=tuple(batches),
        batch_size=batch_size,
        buckets=buckets,
        sidecars=sidecars,
    )
