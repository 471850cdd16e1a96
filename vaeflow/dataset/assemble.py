"""Assembling the store once every batch is done: streams and index in index order, whatever
order the batches finished in, then made durable and marked complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vaeflow.dataset import store as store_io
from vaeflow.dataset.layout import LAYOUT, META, BatchMarker
from vaeflow.dataset.plan import Plan
from vaeflow.dataset.scan import NAME_NOTE
from vaeflow.dataset.work import WorkStore
from vaeflow.foundations.durable import fsync, sync_tree


def assemble(plan: Plan, meta: dict[str, Any], markers: dict[str, BatchMarker], work: WorkStore) -> None:
    entries = {item.index: item for marker in markers.values() for item in marker.items}
    failed_at_scan = {item.index: (item, reason) for item, reason in plan.failed_at_scan}
    first = plan.first_index
    count = len(plan.items) + len(plan.failed_at_scan)

    items = {item.index: item for item in plan.items}

    def rows() -> Iterator[store_io.Row]:
        for index in range(first, first + count):
            sidecar = plan.sidecars.get(index)
            caption, metadata = (sidecar.caption or "", sidecar.metadata or "") if sidecar else ("", "")
            side_notes = list(sidecar.notes) if sidecar else []
            if index in failed_at_scan:
                item, reason = failed_at_scan[index]
                reason = f"{reason}; {NAME_NOTE}" if item.file is not None else reason
                yield store_io.Row(item.path, (item.height, item.width), False, reason, b"", caption, metadata,
                                   source=item.source_file)  # fmt: skip
                continue
            entry, item = entries[index], items[index]
            key, offset = entry.stream
            note = (entry.reason or "") if not entry.ok else "; ".join([*entry.notes, *side_notes])
            note = f"{note}; {NAME_NOTE}" if not entry.ok and item.file is not None else note
            data = work.read_stream(key, offset, entry.nbytes)  # index order interleaves the batches
            yield store_io.Row(
                entry.path,
                entry.shape,
                entry.ok,
                note,
                data,
                caption,
                metadata,
                item.source,
                item.crop or (0, 0),
                item.source_file,
            )

    new_bytes = sum(entry.nbytes for entry in entries.values())
    total = store_io.write_index(
        plan.store, rows(), new_bytes, plan.skipped, meta[META.stored_bytes], meta[META.rows], plan.policy.retried
    )
    for part in (LAYOUT.streams, LAYOUT.index, LAYOUT.skipped):  # durable before the store says it is complete
        sync_tree(plan.store / part)
    store_io.consolidate(plan.store)  # readers see the new shapes as soon as it is complete
    done = {k: v for k, v in meta.items() if k not in (META.retrying, META.adding)}
    finished = {META.complete: True, META.stored_bytes: total, META.rows: first + count,
                META.version: store_io.data_version(meta)}  # fmt: skip
    store_io.write_meta(plan.store, {**done, **finished})
    fsync(plan.store / LAYOUT.zarr_json)


def finish(store: Path, keep_intermediates: bool) -> None:
    """Drop the work store (unless kept) and consolidate what is left; safe to repeat."""
    if not keep_intermediates:
        WorkStore(store).remove()
    store_io.consolidate(store)
