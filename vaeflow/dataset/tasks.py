"""The codec stages as batch tasks: each reads its input rows from the work store, runs one
stage, writes its output rows, and returns only a small ``BatchState``. No Dask here.

A failure of one image becomes its status row; the rest of the batch goes on.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vaeflow.codec import ratecontrol
from vaeflow.codec.codec import Codec
from vaeflow.dataset.plan import Batch
from vaeflow.dataset.work import WorkStore
from vaeflow.errors import ClusterLostError, ImageReadError, ModelError
from vaeflow.imageio import load_image
from vaeflow.models import RuntimeOptions

STAGES = ("load", "vae", "transform", "quantize", "entropy", "write")
# Errors of the job, not of an image: every image would fail the same way, so the job stops and says why.
JOB_ERRORS = (OSError, ModelError, ClusterLostError)


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


@dataclass(frozen=True)
class BatchState:
    key: str
    ok: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    notes: tuple[tuple[str, ...], ...]
    nbytes: tuple[int, ...] = ()
    spans: tuple[tuple[str, float, float, int], ...] = field(default=())  # (stage, start, end, pid)
    choices: tuple[tuple[float, float] | None, ...] = ()  # rate control: (step, achieved) per image

    def ok_positions(self) -> list[int]:
        return [i for i, ok in enumerate(self.ok) if ok]

    def fail(self, pos: int, reason: str) -> BatchState:
        ok, reasons = list(self.ok), list(self.reasons)
        ok[pos], reasons[pos] = False, reason
        return replace(self, ok=tuple(ok), reasons=tuple(reasons))


@contextmanager
def _span(spans: list[tuple[str, float, float, int]], stage: str) -> Iterator[None]:
    start = time.time()
    try:
        yield
    finally:
        spans.append((stage, start, time.time(), os.getpid()))


def _timed(stage: str) -> Callable[[Callable[..., BatchState]], Callable[..., BatchState]]:
    """Record the task's wall-clock span (for traces and the job summary) in its state."""

    def wrap(fn: Callable[..., BatchState]) -> Callable[..., BatchState]:
        @functools.wraps(fn)  # keeps the module-level name, so tasks pickle by reference
        def run(ctx: TaskContext, batch: Batch, *state: BatchState) -> BatchState:
            spans: list[tuple[str, float, float, int]] = []
            with _span(spans, stage):
                out = fn(ctx, batch, *state)
            previous = state[0].spans if state else ()
            return replace(out, spans=previous + tuple(spans))

        return run

    return wrap


@_timed("load")
def load(ctx: TaskContext, batch: Batch) -> BatchState:
    """Decode each file, pad it to the group's shape (edge pixels) and store it."""
    n = len(batch.items)
    state = BatchState(batch.key, (True,) * n, (None,) * n, ((),) * n)
    work = WorkStore(ctx.store)
    rows, which, notes = [], [], list(state.notes)
    height, width = batch.padded_shape
    for pos, item in enumerate(batch.items):
        try:
            loaded = load_image(os.path.join(ctx.src, item.path), ctx.max_pixels)
        except ImageReadError as exc:
            state = state.fail(pos, str(exc))
            continue
        h, w = loaded.pixels.shape[:2]
        if (h, w) != (item.height, item.width):
            state = state.fail(pos, f"image is {w}x{h} but its header said {item.width}x{item.height}")
            continue
        rows.append(np.pad(loaded.pixels, ((0, height - h), (0, width - w), (0, 0)), mode="edge"))
        which.append(pos)
        notes[pos] = loaded.notes
    if rows:
        work.write_rows(batch, "rgb", ctx.prefix, np.stack(rows), which)
    return replace(state, notes=tuple(notes))


def _stage(
    attribute: str, name: str, source: str, target: str, run: Callable[[TaskContext, np.ndarray], np.ndarray]
) -> Any:
    """A task that maps the ok rows of ``source`` to ``target`` in one call, isolating failures.

    ``name`` labels its Dask keys; ``attribute`` is the module name it is bound to, so that
    it pickles by reference (workers then run their own module's code and globals).
    """

    @_timed(name)
    def task(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
        which = state.ok_positions()
        if not which:
            return state
        work = WorkStore(ctx.store)
        rows = work.read_rows(batch, source, ctx.prefix, which)
        try:
            out = run(ctx, rows)
        except JOB_ERRORS:
            raise
        except Exception:  # one bad image must not sink the batch: retry image by image
            out_rows, kept = [], []
            for row, pos in zip(rows, which, strict=True):
                try:
                    out_rows.append(run(ctx, row[None])[0])
                    kept.append(pos)
                except JOB_ERRORS:
                    raise
                except Exception as exc:
                    state = state.fail(pos, f"{name} stage failed: {type(exc).__name__}: {exc}")
            if not kept:
                return state
            out, which = np.stack(out_rows), kept
        work.write_rows(batch, target, ctx.prefix, out, which)
        return state

    task.__name__, task.__qualname__ = name, attribute
    return task


def _encode_latents(ctx: TaskContext, x: np.ndarray) -> np.ndarray:
    return ctx.codec.encode_latents(x, ctx.runtime)


def _transform(ctx: TaskContext, x: np.ndarray) -> np.ndarray:
    return ctx.codec.transform(x)


def _quantize(ctx: TaskContext, x: np.ndarray) -> np.ndarray:
    return ctx.codec.quantize_coefficients(x)


encode = _stage("encode", "vae", "rgb", "latent", _encode_latents)
transform = _stage("transform", "transform", "latent", "coefficients", _transform)
_fixed_quantize = _stage("_fixed_quantize", "quantize", "coefficients", "symbols", _quantize)


def quantize(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    """Quantize at the codec's step, or, under rate control, search each image's own step."""
    if ctx.codec.target is None:
        return _fixed_quantize(ctx, batch, state)
    return _searched_quantize(ctx, batch, state)


@_timed("quantize")
def _searched_quantize(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    which = state.ok_positions()
    if not which:
        return state
    work = WorkStore(ctx.store)
    coeffs = work.read_rows(batch, "coefficients", ctx.prefix, which)
    needs_image = ctx.codec.target is not None and ctx.codec.target.searches_with_image
    rgb = work.read_rows(batch, "rgb", ctx.prefix, which) if needs_image else None
    choices: list[tuple[float, float] | None] = [None] * len(batch.items)
    rows, kept = [], []
    for k, pos in enumerate(which):
        item = batch.items[pos]
        image = rgb[k, : item.height, : item.width] if rgb is not None else None
        try:
            choice = ratecontrol.search(ctx.codec, coeffs[k : k + 1], (item.height, item.width), image, ctx.runtime)
        except ValueError as exc:
            state = state.fail(pos, str(exc))
            continue
        rows.append(choice.symbols[0])
        kept.append(pos)
        choices[pos] = (choice.step, choice.achieved)
    if rows:
        work.write_rows(batch, "symbols", ctx.prefix, np.stack(rows), kept)
    return replace(state, choices=tuple(choices))


@_timed("entropy")
def entropy(ctx: TaskContext, batch: Batch, state: BatchState) -> BatchState:
    """Code each image's symbols into a stream; the batch's streams go to the work store."""
    work = WorkStore(ctx.store)
    which = state.ok_positions()
    streams = [b""] * len(batch.items)
    if which:
        symbols = work.read_rows(batch, "symbols", ctx.prefix, which)
        sizes = [(batch.items[p].height, batch.items[p].width) for p in which]
        if state.choices:  # rate control: each image at its own step, with its record
            for k, pos in enumerate(which):
                step, achieved = state.choices[pos]  # type: ignore[misc]
                choice = ratecontrol.Choice(step, symbols[k : k + 1], achieved)
                streams[pos] = ratecontrol.record(ctx.codec, choice, sizes[k])[0]
        else:
            for pos, stream in zip(which, ctx.codec.entropy_code(symbols, sizes), strict=True):
                streams[pos] = stream
    work.write_streams(batch.key, streams)
    return replace(state, nbytes=tuple(len(s) for s in streams))


def write(ctx: TaskContext, batch: Batch, state: BatchState) -> dict[str, Any]:
    """Mark the batch done (durably, last) and return its small marker."""
    work = WorkStore(ctx.store)
    start = time.time()
    if not ctx.keep_intermediates:
        work.drop_rows(batch, ctx.prefix)
    spans = [*state.spans, ("write", start, time.time(), os.getpid())]
    offsets = np.concatenate([[0], np.cumsum(state.nbytes, dtype=np.int64)])[:-1]
    items = [
        {
            "index": item.index,
            "path": item.path,
            "ok": ok,
            "reason": reason,
            "notes": list(notes),
            "nbytes": nbytes,
            "shape": [item.height, item.width],
            "stream": [batch.key, int(offset)],  # where its bytes wait in the work store
        }
        for item, ok, reason, notes, nbytes, offset in zip(
            batch.items, state.ok, state.reasons, state.notes, state.nbytes, offsets, strict=True
        )
    ]
    marker = {"key": batch.key, "items": items, "spans": [list(s) for s in spans]}
    work.mark_done(batch.key, marker)
    return marker


STAGE_TASKS = (encode, transform, quantize, entropy)


def run_batch(ctx: TaskContext, batch: Batch) -> dict[str, Any]:
    """Every stage of one batch in this process: what the in-process executor runs."""
    state = load(ctx, batch)
    for task in STAGE_TASKS:
        state = task(ctx, batch, state)
    return write(ctx, batch, state)


def failed_marker(ctx: TaskContext, batch: Batch, reason: str) -> dict[str, Any]:
    """The marker of a batch whose tasks could not run: every image failed with ``reason``."""
    n = len(batch.items)
    state = BatchState(batch.key, (False,) * n, (reason,) * n, ((),) * n, (0,) * n)
    WorkStore(ctx.store).write_streams(batch.key, [])
    return write(ctx, batch, state)


def single_batches(batch: Batch) -> list[Batch]:
    """One batch per image, to find which image keeps failing (a poison input)."""
    return [
        replace(batch, key=f"{batch.key}-i{pos}", start=batch.start + pos, items=(item,))
        for pos, item in enumerate(batch.items)
    ]


def merged_marker(ctx: TaskContext, batch: Batch, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The marker of a batch coded image by image: its images' entries, marked done under its key."""
    marker = {
        "key": batch.key,
        "items": [item for part in parts for item in part["items"]],
        "spans": [span for part in parts for span in part["spans"]],
    }
    WorkStore(ctx.store).mark_done(batch.key, marker)
    return marker
