"""The plan of a dataset job: what happens to the store, and the images grouped by padded
shape (``vaeflow.models.padded_shape``: images share a VAE run only at one shape, so that
each latent is the model's own) and cut into batches. Under a PSNR-drop limit verified on a
sample, the sampled images (chosen from their names, ``sampled``) form batches of their own,
which run first.

A plan is built, and every setting checked, before anything runs, and building it changes
nothing on disk; ``str(plan)`` prints it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vaeflow.codec import shapes
from vaeflow.codec.codec import Codec
from vaeflow.dataset.layout import SETTINGS
from vaeflow.dataset.members import Member
from vaeflow.dataset.policy import COMPLETE, StorePolicy
from vaeflow.dataset.scan import NAME_NOTE, Scan, Sidecar
from vaeflow.foundations.display import escaped, html_list_table, html_table
from vaeflow.foundations.errors import PipelineError
from vaeflow.foundations.imageio import DEFAULT_MAX_PIXELS

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
    mtime_ns: int = 0  # the file's modification time when scanned
    file: str | None = None  # the file's relative path where ``path`` (its name in the store) differs
    member: Member | None = None  # where it lies inside a shard or parquet file of the source

    @property
    def source_file(self) -> tuple[int, int]:
        """(size in bytes, modification time in ns) of the file as scanned: what the index records."""
        return self.size_bytes, self.mtime_ns


@dataclass(frozen=True, slots=True)
class Batch:
    key: str  # stable name, e.g. "g0-b3"; it names the batch's tasks and marker
    group: int
    padded_shape: tuple[int, int]
    start: int  # first row of the batch in its group's work arrays
    items: tuple[Item, ...]
    verified: bool = False  # under a PSNR-drop limit: its images' drops are measured by decoding


@dataclass(frozen=True)
class Group:
    index: int
    padded_shape: tuple[int, int]
    latent_shape: tuple[int, int, int]
    size: int


@dataclass(frozen=True)
class Plan:
    src: Path | str  # a folder, or the URL of a prefix on object storage
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
    changed: tuple[str, ...] = ()  # stored images whose file changed since (size or modification time)
    renamed: tuple[str, ...] = ()  # images whose file names are not UTF-8, by their escaped names

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
    def verified(self) -> int:
        """Images whose PSNR drop is measured by decoding (under a PSNR-drop limit)."""
        return sum(len(b.items) for b in self.batches if b.verified)

    def __str__(self) -> str:
        codec = self.codec
        setting = f"target {codec.target}" if codec.target else f"quality {codec.quantize.quality}"
        if codec.target is None and codec.quantize.quality is None:
            setting = f"step {codec.quantize.step}"
        preset = self.settings[SETTINGS.pipeline]
        lines = [
            f"plan: {self.src} -> {self.store} ({self.policy.action} the store)",
            f"  model {codec.model.name} ({codec.model.fingerprint}), {setting}, pipeline {preset}",
            f"  images: {len(self.items)} to code, {len(self.failed_at_scan)} unreadable, "
            f"{len(self.skipped)} other files skipped",
            f"  groups: {len(self.groups)} padded shapes; batches: {len(self.batches)} (up to {self.batch_size} "
            f"each), mean fill {100 * self.batch_fill:.0f}%",
            f"  work: {self.megapixels:.1f} megapixels through the VAE in {len(self.batches)} runs",
        ]
        target = codec.target
        if target is not None and target.max_psnr_drop is not None:
            how = {"all": "every image", "sample": f"a sample ({100 * target.verify_fraction:.3g}%)", "none": "none"}
            then = "; their batches run first, the rest predicted with the margin they give"
            lines.append(
                f"  verify: {how[target.verify]}: {self.verified} of {len(self.items)} images decoded to check their "
                f"PSNR drop{then if target.verify == 'sample' else ''}"
            )
        if self.buckets:
            sides = ", ".join(f"{b.width}x{b.height}" for b in shapes.buckets(self.buckets))
            lines.append(f"  aspect-ratio buckets of about {self.buckets}x{self.buckets} (width x height): {sides}")
        for g in self.groups[:10]:
            h, w = g.padded_shape
            lines.append(f"    group {g.index}: {g.size} images padded to {w}x{h}, latent {g.latent_shape}")
        if len(self.groups) > 10:
            lines.append(f"    ... and {len(self.groups) - 10} more groups")
        for item, reason in self.failed_at_scan[:10]:
            lines.append(f"  unreadable: {escaped(item.path)}: {escaped(reason)}")
        if self.changed:
            lines.append(f"  {changed_note(self.changed)}")
        if self.renamed:
            names = ", ".join(escaped(n) for n in self.renamed[:5]) + (" ..." if len(self.renamed) > 5 else "")
            lines.append(f"  file names not UTF-8: {len(self.renamed)} images stored under escaped names ({names})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head, *rest = str(self).splitlines()
        groups = [(g.index, g.size, f"{g.padded_shape[1]}x{g.padded_shape[0]}", g.latent_shape) for g in self.groups]
        table = html_list_table(["group", "images", "padded to", "latent"], groups)
        return html_table(head, [(line.split(":", 1)[0].strip(), line.split(":", 1)[-1].strip()) for line in rest
                                 if not line.startswith("    ")]) + table  # fmt: skip


def sampled(name: str, fraction: float) -> bool:
    """Whether an image is in a verified sample of ``fraction`` of a dataset: from its name alone (its
    hash), so that every run and every executor picks the same images."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


def changed_note(changed: tuple[str, ...]) -> str:
    """What a run says of stored images whose files changed since they were coded."""
    names = ", ".join(escaped(n) for n in changed[:5]) + (" ..." if len(changed) > 5 else "")
    return (
        f"changed since they were coded: {len(changed)} stored images ({names}) have another size or modification "
        "time; the store keeps them as coded (write a new store, or --overwrite, to code them again)"
    )


def _over_resized(fitted: shapes.Fit, max_pixels: int) -> str:
    (h, w), (rh, rw), (bh, bw) = fitted.source, fitted.resized, fitted.target
    return (
        f"resizing {w}x{h} to cover its {bw}x{bh} bucket needs {rw}x{rh} pixels, over the limit of {max_pixels} "
        "(--max-pixels); crop the image nearer its bucket's aspect ratio, or raise --max-pixels"
    )


def build_plan(
    scan: Scan,
    src: Path | str,
    store: Path,
    codec: Codec,
    settings: dict[str, Any],
    policy: StorePolicy,
    batch_size: int,
    buckets: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Plan:
    if batch_size < 1:
        raise PipelineError(f"batch size must be at least 1, got {batch_size}")
    images = [] if policy.action == COMPLETE else [i for i in scan.images if i.path not in policy.known]
    if policy.only_retried:
        images = [i for i in images if i.path in policy.retried]
    first = policy.first_row
    items: list[Item] = []
    failed: list[tuple[Item, str]] = []
    by_shape: dict[tuple[int, int], list[Item]] = {}
    verify = codec.target.verify if codec.target is not None and codec.target.max_psnr_drop is not None else None
    sidecars: dict[int, Sidecar] = {}
    for i, scanned in enumerate(images):
        item = Item(first + i, scanned.path, scanned.height, scanned.width, scanned.size_bytes,
                    mtime_ns=scanned.mtime_ns, file=scanned.file, member=scanned.member)  # fmt: skip
        if scanned.sidecar is not None:
            sidecars[item.index] = scanned.sidecar
        if scanned.file is not None:  # the row says how its name was escaped
            sidecar = sidecars.get(item.index, Sidecar())
            sidecars[item.index] = replace(sidecar, notes=(*sidecar.notes, NAME_NOTE))
        if scanned.error is not None:
            failed.append((item, scanned.error))
            continue
        if buckets is not None:
            fitted = shapes.fit_bucket(scanned.height, scanned.width, buckets)
            if fitted.resized[0] * fitted.resized[1] > max_pixels:
                failed.append((item, _over_resized(fitted, max_pixels)))
                continue
            item = Item(item.index, item.path, *fitted.target, item.size_bytes, fitted.source, fitted.resized,
                        fitted.crop_top_left, item.mtime_ns, item.file, item.member)  # fmt: skip
        items.append(item)
        by_shape.setdefault(codec.padded_shape(item.height, item.width), []).append(item)
    fraction = codec.target.verify_fraction if codec.target is not None else 1.0
    groups, batches = [], []
    for g, shape in enumerate(sorted(by_shape)):
        checked: list[Item] = []
        rest: list[Item] = []
        for item in by_shape[shape]:
            verified = verify == "all" or (verify == "sample" and sampled(item.path, fraction))
            (checked if verified else rest).append(item)
        groups.append(Group(g, shape, codec.latent_shape(*shape), len(checked) + len(rest)))
        per_batch = max(1, min(batch_size, BATCH_PIXEL_BUDGET // (shape[0] * shape[1])))
        for kind, members, start in (("v", checked, 0), ("b", rest, len(checked))):
            for b, first in enumerate(range(0, len(members), per_batch)):
                chunk = tuple(members[first : first + per_batch])
                key = f"{policy.key_prefix}g{g}-{kind}{b}"
                batches.append(Batch(key, g, shape, start + first, chunk, verified=kind == "v"))
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
        renamed=tuple(i.path for i in images if i.file is not None),
        changed=tuple(
            i.path for i in scan.images if i.error is None and policy.changed(i.path, (i.size_bytes, i.mtime_ns))
        ),
    )
