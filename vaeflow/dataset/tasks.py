"""The codec stages as batch tasks. No Dask here.

Each stage is a function of one batch's rows in memory (``load``, ``vae``, ``transform``,
``quantize``, ``entropy``), isolating failures: when a stage fails on the batch, it runs
again image by image, and an image that fails alone becomes its status row while the rest
of the batch goes on. Two ways to run them over a batch give the same streams and markers:

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
import functools
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from vaeflow.codec import ratecontrol
from vaeflow.codec.codec import Codec
from vaeflow.dataset.plan import Batch, Item
from vaeflow.dataset.work import WorkStore
from vaeflow.errors import ClusterLostError, ImageReadError, ModelError
from vaeflow.imageio import load_image
from vaeflow.models import RuntimeOptions, pad_images

STAGES = ("load", "vae", "transform", "quantize", "entropy", "write")
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


@dataclass(frozen=True)
class BatchState:
    key: str
    ok: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    notes: tuple[tuple[str, ...], ...]
    nbytes: tuple[int, ...] = ()
    spans: tuple[tuple[str, float, float, int], ...] = field(default=())  # (stage, start, end, pid)
    # rate control: (step, achieved, measured drop, predicted drop) of each image
    choices: tuple[tuple[float, float, float | None, float | None] | None, ...] = ()

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
    for pos, item in enumerate(batch.items):
        try:
            loaded = load_image(os.path.join(ctx.src, item.path), ctx.max_pixels)
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
    """An image resized (Lanczos) to cover its bucket and centre-cropped to it, as its plan says."""
    assert item.resized is not None and item.crop is not None
    resized = Image.fromarray(pixels).resize((item.resized[1], item.resized[0]), Image.Resampling.LANCZOS)
    top, left = item.crop
    return np.asarray(resized)[top : top + item.height, left : left + item.width]


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


def vae(ctx: TaskContext, batch: Batch, state: BatchState, rgb: Rows) -> tuple[BatchState, Rows]:
    """The VAE encoder over the padded images: each image's exact latent."""
    return _isolated(state, "vae", rgb, lambda xs: list(ctx.codec.encode_latents(np.stack(xs), ctx.runtime)))


def transform(ctx: TaskContext, batch: Batch, state: BatchState, latents: Rows) -> tuple[BatchState, Rows]:
    """The channel transform and wavelet of each latent."""
    return _per_image(state, "transform", latents, lambda _, latent: ctx.codec.transform(latent[None])[0])


def _per_image(
    state: BatchState, name: str, rows: Rows, run: Callable[[int, np.ndarray], np.ndarray]
) -> tuple[BatchState, Rows]:
    out: Rows = {}
    for pos in sorted(rows):
        try:
            out[pos] = run(pos, rows[pos])
        except JOB_ERRORS:
            raise
        except Exception as exc:
            state = state.fail(pos, f"{name} stage failed: {type(exc).__name__}: {exc}")
    return state, out


def quantize(
    ctx: TaskContext, batch: Batch, state: BatchState, coeffs: Rows, rgb: Rows | None = None
) -> tuple[BatchState, Rows]:
    """Quantize at the codec's step, or, under rate control, search each image's own step (measuring
    its PSNR drop in a verified batch, predicting it in the others)."""
    if ctx.codec.target is None:
        return _per_image(state, "quantize", coeffs, lambda _, c: ctx.codec.quantize_coefficients(c[None])[0])
    choices: list[tuple[float, float, float | None, float | None] | None] = [None] * len(batch.items)
    out: Rows = {}
    for pos in sorted(coeffs):
        item = batch.items[pos]
        image = rgb[pos][: item.height, : item.width] if rgb is not None else None
        try:
            choice = ratecontrol.search(
                ctx.codec, coeffs[pos][None], (item.height, item.width), image, ctx.runtime,
                measure=batch.verified, margin=ctx.margin,
            )  # fmt: skip
        except ValueError as exc:
            state = state.fail(pos, str(exc))
            continue
        out[pos] = choice.symbols[0]
        choices[pos] = (choice.step, choice.achieved, choice.drop, choice.predicted)
    return replace(state, choices=tuple(choices)), out


def entropy(ctx: TaskContext, batch: Batch, state: BatchState, symbols: Rows) -> tuple[BatchState, list[bytes]]:
    """Each image's symbols -> its stream (at its own step and with its record, under rate control)."""
    streams = [b""] * len(batch.items)
    for pos in sorted(symbols):
        item = batch.items[pos]
        size = (item.height, item.width)
        if state.choices:
            step, achieved, drop, predicted = state.choices[pos]  # type: ignore[misc]
            choice = ratecontrol.Choice(step, symbols[pos][None], achieved, drop, predicted)
            streams[pos] = ratecontrol.record(ctx.codec, choice, size)[0]
        else:
            streams[pos] = ctx.codec.entropy_code(symbols[pos][None], [size])[0]
    return replace(state, nbytes=tuple(len(s) for s in streams)), streams


def marker(ctx: TaskContext, batch: Batch, state: BatchState) -> dict[str, Any]:
    """The batch's small marker: each image's row, and where its bytes wait in the work store; under a
    PSNR-drop limit, each image's predicted and measured drop (None where not measured)."""
    offsets = np.concatenate([[0], np.cumsum(state.nbytes, dtype=np.int64)])[:-1]
    drops = [None if c is None else [c[3], c[2]] for c in state.choices] or [None] * len(batch.items)
    items = [
        {
            "index": item.index,
            "path": item.path,
            "ok": ok,
            "reason": reason,
            "notes": list(notes),
            "nbytes": nbytes,
            "shape": [item.height, item.width],
            "stream": [batch.key, int(offset)],
            "drop": drop,
        }
        for item, ok, reason, notes, nbytes, offset, drop in zip(
            batch.items, state.ok, state.reasons, state.notes, state.nbytes, offsets, drops, strict=True
        )
    ]
    return {"key": batch.key, "items": items, "spans": [list(s) for s in state.spans]}


# One task per stage, through the work store.


def _staged(stage: str) -> Callable[[Callable[..., BatchState]], Callable[..., BatchState]]:
    """Record the task's wall-clock span (for traces and the job summary) in its state."""

    def wrap(fn: Callable[..., BatchState]) -> Callable[..., BatchState]:
        @functools.wraps(fn)  # keeps the module-level name, so tasks pickle by reference
        def run(ctx: TaskContext, batch: Batch, *state: BatchState) -> BatchState:
            start = time.time()
            out = fn(ctx, batch, *state)
            return out.timed(stage, start)

        return run

    return wrap


def _read(ctx: TaskContext, batch: Batch, name: str, state: BatchState) -> Rows:
    which = state.ok_positions()
    rows = WorkStore(ctx.store).read_rows(batch, name, ctx.prefix, which)
    return dict(zip(which, rows, strict=True))


def _write(ctx: TaskContext, batch: Batch, name: str, rows: Rows) -> None:
    if rows:
        positions = sorted(rows)
        WorkStore(ctx.store).write_rows(batch, name, ctx.prefix, [rows[p] for p in positions], positions)


@_staged("load")
def load_task(ctx: TaskContext, batch: Batch) -> BatchState:
    state, rgb = load(ctx, batch, BatchState.start(batch))
    _write(ctx, batch, "rgb", rgb)
    return state


@_staged("vae")
def vae_task(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    state, latents = vae(ctx, batch, state, _read(ctx, batch, "rgb", state))
    _write(ctx, batch, "latent", latents)
    return state


@_staged("transform")
def transform_task(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    state, coeffs = transform(ctx, batch, state, _read(ctx, batch, "latent", state))
    _write(ctx, batch, "coefficients", coeffs)
    return state


@_staged("quantize")
def quantize_task(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    coeffs = _read(ctx, batch, "coefficients", state)
    target = ctx.codec.target
    rgb = _read(ctx, batch, "rgb", state) if target is not None and target.searches_with_image else None
    state, symbols = quantize(ctx, batch, state, coeffs, rgb)
    _write(ctx, batch, "symbols", symbols)
    return state


@_staged("entropy")
def entropy_task(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    state, streams = entropy(ctx, batch, state, _read(ctx, batch, "symbols", state))
    WorkStore(ctx.store).write_streams(batch.key, streams)
    return state


def write_task(ctx: TaskContext, batch: Batch, state: BatchState) -> dict[str, Any]:
    """Mark the batch done (durably, last) and return its small marker."""
    work = WorkStore(ctx.store)
    start = time.time()
    if not ctx.keep_intermediates and not ctx.fused:  # fused stages write no rows
        work.drop_rows(batch, ctx.prefix)
    done = marker(ctx, batch, state.timed("write", start))
    work.mark_done(batch.key, done)
    return done


STAGE_TASKS = (vae_task, transform_task, quantize_task, entropy_task)


def run_batch(ctx: TaskContext, batch: Batch) -> dict[str, Any]:
    """Every stage task of one batch in this process, through the work store."""
    state = load_task(ctx, batch)
    for task in STAGE_TASKS:
        state = task(ctx, batch, state)
    return write_task(ctx, batch, state)


def _unmetered(stage: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


def run_fused(
    ctx: TaskContext, batch: Batch, meter: Callable[[str], AbstractContextManager[Any]] = _unmetered
) -> dict[str, Any]:
    """Every stage of one batch in memory, in one task: the same streams and marker as ``run_batch``.
    ``meter(stage)`` wraps each stage (on Dask, the dashboard's per-task metrics by stage)."""
    state = BatchState.start(batch)

    def run(stage: str, step: Callable[..., tuple[BatchState, Any]], *inputs: Any) -> Any:
        nonlocal state
        start = time.time()
        with meter(stage):
            state, out = step(ctx, batch, state, *inputs)
        state = state.timed(stage, start)
        return out

    rgb = run("load", load)
    latents = run("vae", vae, rgb)
    coeffs = run("transform", transform, latents)
    symbols = run("quantize", quantize, coeffs, rgb)
    streams = run("entropy", entropy, symbols)
    with meter("write"):
        work = WorkStore(ctx.store)
        work.write_streams(batch.key, streams)
        if ctx.keep_intermediates:
            for name, rows in (("rgb", rgb), ("latent", latents), ("coefficients", coeffs), ("symbols", symbols)):
                _write(ctx, batch, name, rows)
        return write_task(ctx, batch, state)


def failed_marker(ctx: TaskContext, batch: Batch, reason: str) -> dict[str, Any]:
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


def merged_marker(ctx: TaskContext, batch: Batch, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The marker of a batch coded image by image: its images' entries, marked done under its key."""
    merged = {
        "key": batch.key,
        "items": [item for part in parts for item in part["items"]],
        "spans": [span for part in parts for span in part["spans"]],
    }
    WorkStore(ctx.store).mark_done(batch.key, merged)
    return merged
