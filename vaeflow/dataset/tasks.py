"""The codec stages as batch tasks. No Dask here.

A batch's tasks are ``STAGES``: ``load``, then each of the codec's stages (``run_stage``), then
``write``. Each is a function of one batch's rows in memory, isolating failures: when a stage
fails on the batch, it runs again image by image, and an image that fails alone becomes its
status row while the rest of the batch goes on. The quantize and entropy stages go through the
codec's rate strategy (``vaeflow.codec.ratecontrol.strategy_of``), which gives each image its
step. Two ways to run them over a batch give the same streams and markers:

- fused (``fuse_stages``, the default): one task runs every stage in memory, writing only the
  streams (``vaeflow bench scale`` measures it faster);
- one task per stage: each reads its input rows from the work store, runs its stage, writes
  its output rows, and returns only a small ``BatchState``.

A batch holds images of one padded shape (``vaeflow.models.padded_shape``), each encoded
exactly as ``vaeflow.encode_latent`` encodes it alone, so its bytes never depend on its batch.
Under a PSNR-drop limit, a batch of verified images measures each drop by decoding; the other
batches predict it, aiming by ``TaskContext.margin``.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from vaeflow.codec import ratecontrol
from vaeflow.codec.codec import CODING, TO_SYMBOLS, Codec
from vaeflow.dataset.layout import BatchMarker, ImageMarker
from vaeflow.dataset.members import read_batch, read_member
from vaeflow.dataset.plan import Batch, Item
from vaeflow.dataset.work import LOAD, STAGE_ARRAYS, WorkStore
from vaeflow.foundations.errors import ClusterLostError, ImageReadError, ModelError
from vaeflow.foundations.imageio import load_image
from vaeflow.models import RuntimeOptions, pad_images
from vaeflow.stages import StageSpec

WRITE = "write"
# A batch's tasks, in order: each stage from the encoder to the quantizer, then the stages that code the
# symbols (at each image's own step, through the rate strategy) as one task named after the last of them.
CODED = CODING[-1]
STAGES = (LOAD, *TO_SYMBOLS, CODED, WRITE)
# Errors of the job, not of an image: every image would fail the same way, so the job stops and says why.
JOB_ERRORS = (OSError, ModelError, ClusterLostError)
Rows = dict[int, np.ndarray]  # position in the batch -> that image's array


@dataclass(frozen=True)
class TaskContext:
    """Everything a task needs, small and picklable: the model travels as its ``ModelRef``."""

    src: str
    store: str
    codec: Codec
    runtime: RuntimeOptions
    max_pixels: int
    prefix: str = ""
    keep_intermediates: bool = False
    fused: bool = True  # a batch's stages in one task (``run_fused``), or one task per stage
    margin: float | None = None  # under a PSNR-drop limit, unverified images aim this far below it
    source_options: dict[str, Any] | None = None  # for a source at a URL: its fsspec options


@dataclass(frozen=True)
class BatchState:
    key: str
    ok: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    notes: tuple[tuple[str, ...], ...]
    nbytes: tuple[int, ...] = ()
    spans: tuple[tuple[str, float, float, int], ...] = field(default=())  # (stage, start, end, pid)
    # each image's step as its rate strategy chose it (None where the image failed)
    choices: tuple[ratecontrol.ChosenStep | None, ...] = ()

    @classmethod
    def start(cls, batch: Batch) -> BatchState:
        n = len(batch.items)
        return cls(batch.key, (True,) * n, (None,) * n, ((),) * n)

    def ok_positions(self) -> list[int]:
        return [i for i, ok in enumerate(self.ok) if ok]

    def fail(self, pos: int, reason: str) -> BatchState:
        ok, reasons = list(self.ok), list(self.reasons)
        ok[pos], reasons[pos] = False, reason
        return replace(self, ok=tuple(ok), reasons=tuple(reasons))

    def timed(self, stage: str, start: float) -> BatchState:
        return replace(self, spans=(*self.spans, (stage, start, time.time(), os.getpid())))


# The stages, in memory.


def load(ctx: TaskContext, batch: Batch, state: BatchState) -> tuple[BatchState, Rows]:
    """Decode each file (bring it to its bucket when the job has buckets) and pad it to the batch's shape."""
    rows: Rows = {}
    notes = list(state.notes)
    fetched = read_batch(ctx.src, batch.items, ctx.source_options)
    for pos, item in enumerate(batch.items):
        try:
            if pos in fetched:  # parquet rows, and anything on object storage: the batch's reads made at once
                loaded = load_image(io.BytesIO(fetched[pos]()), ctx.max_pixels)
            elif item.member is not None:  # read in place from its shard or parquet file
                encoded = read_member(ctx.src, item.member, item.mtime_ns, ctx.source_options)
                loaded = load_image(io.BytesIO(encoded), ctx.max_pixels)
            else:
                loaded = load_image(os.path.join(ctx.src, item.file or item.path), ctx.max_pixels)
        except ImageReadError as exc:
            state = state.fail(pos, str(exc))
            continue
        pixels, expected = loaded.pixels, item.source or (item.height, item.width)
        h, w = pixels.shape[:2]
        if (h, w) != expected:
            state = state.fail(pos, f"image is {w}x{h} but its header said {expected[1]}x{expected[0]}")
            continue
        if item.source is not None:
            pixels = fit(pixels, item)
        rows[pos] = pad_images(pixels[None], ctx.codec.model.downsample * ctx.codec.latent_unit)[0]
        notes[pos] = loaded.notes
    return replace(state, notes=tuple(notes)), rows


def fit(pixels: np.ndarray, item: Item) -> np.ndarray:
    """An image resized (Lanczos) to cover its bucket and centre-cropped to it, as its plan says: only the crop's
    region is resampled (PIL's ``box``), so memory stays the bucket's whatever the resized size (within one grey
    level of resizing whole, then cropping)."""
    assert item.resized is not None and item.crop is not None
    (h, w), (rh, rw), (top, left) = pixels.shape[:2], item.resized, item.crop
    box = (left * w / rw, top * h / rh, (left + item.width) * w / rw, (top + item.height) * h / rh)
    return np.asarray(Image.fromarray(pixels).resize((item.width, item.height), Image.Resampling.LANCZOS, box=box))


def _isolated(
    state: BatchState, name: str, rows: Rows, run: Callable[[list[np.ndarray]], list[np.ndarray]]
) -> tuple[BatchState, Rows]:
    """``run`` over every row at once; if that fails, over each row alone, failing only its image."""
    positions = sorted(rows)
    if not positions:
        return state, {}
    try:
        return state, dict(zip(positions, run([rows[p] for p in positions]), strict=True))
    except JOB_ERRORS:
        raise
    except Exception:  # one bad image must not sink the batch: retry image by image
        out: Rows = {}
        for pos in positions:
            try:
                out[pos] = run([rows[pos]])[0]
            except JOB_ERRORS:
                raise
            except Exception as exc:
                state = state.fail(pos, f"{name} stage failed: {type(exc).__name__}: {exc}")
        return state, out


def batch_spec(ctx: TaskContext, batch: Batch) -> StageSpec:
    """The spec of the batch's padded shape, which every image of the batch has."""
    first = batch.items[0]
    return ctx.codec.spec(ctx.codec.padded_shape(first.height, first.width), ctx.runtime, steps=False)


def run_stage(
    ctx: TaskContext, batch: Batch, state: BatchState, name: str, rows: Rows, images: Rows | None = None
) -> tuple[BatchState, Any]:
    """The codec stage ``name`` over the batch's rows: the rows it gives (the quantizer through the rate
    strategy; the last task, ``CODED``, every coding stage at once: each image's stream). ``images`` are
    the loaded images, which a rate strategy may compare with."""
    if name == TO_SYMBOLS[-1]:
        return quantize(ctx, batch, state, rows, images)
    if name == CODED:
        return entropy(ctx, batch, state, rows)
    stage, spec = ctx.codec.pipeline.by_name[name], batch_spec(ctx, batch)
    return _isolated(state, name, rows, lambda xs: list(stage.forward(np.stack(xs), spec)))


def quantize(
    ctx: TaskContext, batch: Batch, state: BatchState, coeffs: Rows, rgb: Rows | None = None
) -> tuple[BatchState, Rows]:
    """Each image's symbols at the step the codec's rate strategy chooses: its own fixed step, or
    under rate control the one searched for it (measuring its PSNR drop in a verified batch,
    predicting it in the others)."""
    strategy = ratecontrol.strategy_of(ctx.codec)
    choices: list[ratecontrol.ChosenStep | None] = [None] * len(batch.items)
    out: Rows = {}
    for pos in sorted(coeffs):
        item = batch.items[pos]
        image = rgb[pos][: item.height, : item.width] if rgb is not None else None
        try:
            (choice,) = strategy.choose(
                ctx.codec, coeffs[pos][None], [(item.height, item.width)], [image], ctx.runtime,
                measure=batch.verified, margin=ctx.margin,
            )  # fmt: skip
        except strategy.own_failures as exc:  # a target out of reach says so itself
            state = state.fail(pos, str(exc))
            continue
        except JOB_ERRORS:
            raise
        except strategy.stage_failures as exc:
            state = state.fail(pos, f"quantize stage failed: {type(exc).__name__}: {exc}")
            continue
        out[pos] = choice.symbols[0]
        choices[pos] = choice.chosen
    return replace(state, choices=tuple(choices)), out


def entropy(ctx: TaskContext, batch: Batch, state: BatchState, symbols: Rows) -> tuple[BatchState, list[bytes]]:
    """Each image's symbols -> its stream, at its own step and with its record."""
    strategy = ratecontrol.strategy_of(ctx.codec)
    streams = [b""] * len(batch.items)
    for pos in sorted(symbols):
        item = batch.items[pos]
        choice = state.choices[pos].with_symbols(symbols[pos][None])  # type: ignore[union-attr]
        streams[pos] = strategy.streams(ctx.codec, [choice], [(item.height, item.width)])[0]
    return replace(state, nbytes=tuple(len(s) for s in streams)), streams


def marker(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchMarker:
    """The batch's small marker: each image's row, and where its bytes wait in the work store; under a
    PSNR-drop limit, each image's predicted and measured drop (None where not measured)."""
    offsets = np.concatenate([[0], np.cumsum(state.nbytes, dtype=np.int64)])[:-1]
    drops = [None if c is None else c.drops for c in state.choices]
    drops = drops or [None] * len(batch.items)
    items = tuple(
        ImageMarker(
            index=item.index,
            path=item.path,
            ok=ok,
            reason=reason,
            notes=tuple(notes),
            nbytes=nbytes,
            shape=(item.height, item.width),
            stream=(batch.key, int(offset)),
            drop=drop,
        )
        for item, ok, reason, notes, nbytes, offset, drop in zip(
            batch.items, state.ok, state.reasons, state.notes, state.nbytes, offsets, drops, strict=True
        )
    )
    return BatchMarker(batch.key, items, state.spans)


# One task per stage, through the work store.


def _read(ctx: TaskContext, batch: Batch, name: str, state: BatchState) -> Rows:
    which = state.ok_positions()
    rows = WorkStore(ctx.store).read_rows(batch, name, ctx.prefix, which)
    return dict(zip(which, rows, strict=True))


def _write(ctx: TaskContext, batch: Batch, name: str, rows: Rows) -> None:
    if rows:
        positions = sorted(rows)
        WorkStore(ctx.store).write_rows(batch, name, ctx.prefix, [rows[p] for p in positions], positions)


def load_task(ctx: TaskContext, batch: Batch) -> BatchState:
    start = time.time()
    state, rgb = load(ctx, batch, BatchState.start(batch))
    _write(ctx, batch, LOAD, rgb)
    return state.timed(LOAD, start)


def stage_task(ctx: TaskContext, batch: Batch, state: BatchState, name: str) -> BatchState:
    """The codec stage ``name``: its input rows read from the work store (the stage before it wrote
    them), its output written there, or, for the last stage, the batch's streams."""
    start = time.time()
    rows = _read(ctx, batch, STAGES[STAGES.index(name) - 1], state)
    needs_image = name == TO_SYMBOLS[-1] and ratecontrol.strategy_of(ctx.codec).needs_image
    state, out = run_stage(ctx, batch, state, name, rows, _read(ctx, batch, LOAD, state) if needs_image else None)
    if name in STAGE_ARRAYS:
        _write(ctx, batch, name, out)
    else:
        WorkStore(ctx.store).write_streams(batch.key, out)
    return state.timed(name, start)


def write_task(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchMarker:
    """Mark the batch done (durably, last) and return its small marker."""
    work = WorkStore(ctx.store)
    start = time.time()
    if not ctx.keep_intermediates and not ctx.fused:  # fused stages write no rows
        work.drop_rows(batch, ctx.prefix)
    done = marker(ctx, batch, state.timed(WRITE, start))
    work.mark_done(done)
    return done


def run_batch(ctx: TaskContext, batch: Batch) -> BatchMarker:
    """Every stage task of one batch in this process, through the work store."""
    state = load_task(ctx, batch)
    for name in STAGES[1:-1]:
        state = stage_task(ctx, batch, state, name)
    return write_task(ctx, batch, state)


def _unmetered(stage: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


def run_fused(
    ctx: TaskContext, batch: Batch, meter: Callable[[str], AbstractContextManager[Any]] = _unmetered
) -> BatchMarker:
    """Every stage of one batch in memory, in one task: the same streams and marker as ``run_batch``.
    ``meter(stage)`` wraps each stage (on Dask, the dashboard's per-task metrics by stage)."""
    state = BatchState.start(batch)

    def timed(stage: str, step: Callable[..., tuple[BatchState, Any]], *inputs: Any) -> Any:
        nonlocal state
        start = time.time()
        with meter(stage):
            state, out = step(ctx, batch, state, *inputs)
        state = state.timed(stage, start)
        return out

    kept = {LOAD: timed(LOAD, load)}
    out = kept[LOAD]
    for name in STAGES[1:-1]:
        out = timed(name, run_stage, name, out, kept[LOAD])
        kept[name] = out
    with meter(WRITE):
        work = WorkStore(ctx.store)
        work.write_streams(batch.key, out)
        if ctx.keep_intermediates:
            for name in STAGE_ARRAYS:
                _write(ctx, batch, name, kept[name])
        return write_task(ctx, batch, state)


def failed_marker(ctx: TaskContext, batch: Batch, reason: str) -> BatchMarker:
    """The marker of a batch whose tasks could not run: every image failed with ``reason``."""
    n = len(batch.items)
    state = BatchState(batch.key, (False,) * n, (reason,) * n, ((),) * n, (0,) * n)
    WorkStore(ctx.store).write_streams(batch.key, [])
    return write_task(ctx, batch, state)


def single_batches(batch: Batch) -> list[Batch]:
    """One batch per image, to find which image keeps failing (a poison input)."""
    return [
        replace(batch, key=f"{batch.key}-i{pos}", start=batch.start + pos, items=(item,))
        for pos, item in enumerate(batch.items)
    ]


def merged_marker(ctx: TaskContext, batch: Batch, parts: list[BatchMarker]) -> BatchMarker:
    """The marker of a batch coded image by image: its images' entries, marked done under its key."""
    merged = BatchMarker(
        batch.key,
        tuple(item for part in parts for item in part.items),
        tuple(span for part in parts for span in part.spans),
    )
    WorkStore(ctx.store).mark_done(merged)
    return merged
