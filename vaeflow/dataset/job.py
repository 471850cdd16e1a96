"""Running a dataset job: check the store, plan, execute the batches, assemble the store.

Executors: ``SerialExecutor`` runs every batch in this process (the reference);
``vaeflow.dataset.graph.DaskExecutor`` runs the same tasks on a Dask cluster. Both give
byte-identical stores, because every byte depends only on the plan, never on the order
in which batches finish.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from vaeflow.api import PipelineLike, resolve_codec
from vaeflow.dataset import store as store_io
from vaeflow.dataset.plan import Batch, Plan, build_plan, codec_settings
from vaeflow.dataset.scan import Scan, scan
from vaeflow.dataset.tasks import TaskContext, failed_marker, merged_marker, run_batch, single_batches
from vaeflow.dataset.work import WorkStore
from vaeflow.errors import VaeflowError
from vaeflow.imageio import DEFAULT_MAX_PIXELS
from vaeflow.models import RuntimeOptions

Marker = dict[str, Any]
MAX_ATTEMPTS = 2
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


class StoreWriteError(VaeflowError):
    """The store could not be written (disk full, permissions); finished batches are kept."""


def write_error(store: Path, exc: OSError) -> StoreWriteError:
    return StoreWriteError(
        f"writing {store} failed: {exc}. The batches finished so far are kept: free space or fix "
        "permissions, then run the same command again to resume."
    )


class Executor(Protocol):
    dashboard_link: str | None
    threads_per_task: int | None  # ONNX threads per task, when the executor knows best

    def run(self, ctx: TaskContext, batches: list[Batch], on_done: Callable[[Marker], None]) -> None: ...


class SerialExecutor:
    """Runs each batch's stages in order, in this process.

    Each batch's attempts are counted on disk. A batch whose runs killed the job
    ``MAX_ATTEMPTS`` times is then coded image by image, and an image that kills the job
    ``MAX_ATTEMPTS`` times on its own is recorded as failed (a poison input), so that
    resuming always makes progress.
    """

    dashboard_link: str | None = None
    threads_per_task: int | None = None

    def run(self, ctx: TaskContext, batches: list[Batch], on_done: Callable[[Marker], None]) -> None:
        work = WorkStore(ctx.store)
        for batch in batches:
            if work.count_attempt(batch.key) <= MAX_ATTEMPTS:
                on_done(run_batch(ctx, batch))
                continue
            parts = []
            for single in single_batches(batch):
                done = work.done(single.key)
                if done is not None:
                    parts.append(done)
                elif work.count_attempt(single.key) <= MAX_ATTEMPTS:
                    parts.append(run_batch(ctx, single))
                else:
                    reason = f"the job died {MAX_ATTEMPTS} times while coding this image (poison input)"
                    parts.append(failed_marker(ctx, single, reason))
            on_done(merged_marker(ctx, batch, parts))


@dataclass(frozen=True)
class JobOptions:
    """How a job runs (what it produces is set by model, quality and pipeline)."""

    batch_size: int = 8
    overwrite: bool = False
    add: bool = False
    keep_intermediates: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    scheduler: str | None = None  # None: a local cluster; "sync": in-process; or a scheduler address
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    progress: bool = True
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    performance_report: str | None = None  # Dask's HTML performance report of the run


@dataclass
class JobReport:
    store: Path
    images: int = 0
    stored: int = 0
    failed: int = 0
    skipped: int = 0
    resumed_batches: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pixels: int = 0
    wall_s: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    dashboard_link: str | None = None
    spans: list[list[Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def mean_bpp(self) -> float:
        return 8.0 * self.bytes_out / self.pixels if self.pixels else float("nan")

    def __str__(self) -> str:
        ratio = self.bytes_in / self.bytes_out if self.bytes_out else float("nan")
        total = sum(self.stage_seconds.values()) or 1.0
        shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in self.stage_seconds.items())
        slowest = max(self.stage_seconds, key=self.stage_seconds.__getitem__) if self.stage_seconds else "-"
        lines = [
            f"{self.store}: {self.stored} of {self.images} images stored, {self.failed} failed, "
            f"{self.skipped} other files skipped"
            + (f" ({self.resumed_batches} batches resumed from a previous run)" if self.resumed_batches else ""),
            f"  bytes in {self.bytes_in:,}, out {self.bytes_out:,}, ratio {ratio:.1f}x, {self.mean_bpp:.3f} bpp"
            if self.bytes_out
            else "  nothing new to code",
            f"  wall time {self.wall_s:.1f} s; slowest stage {slowest}; stage time: {shares or '-'}",
        ]
        if self.failed:
            lines.append(f"  failed images are listed by `vaeflow ls {self.store} --failed` (index/status, index/note)")
        return "\n".join(lines)


def compress_dataset(
    src: str | Path,
    store: str | Path,
    *,
    model: str | None = None,
    quality: int | None = None,
    pipeline: PipelineLike = None,
    client: Any = None,
    workers: int | None = None,
    resume: bool = True,
    options: JobOptions | None = None,
) -> JobReport:
    """Compress every image under ``src`` into the zarr store ``store``.

    Runs on ``client`` when given (a ``dask.distributed.Client``), else as
    ``options.scheduler`` says: a new local cluster of ``workers`` processes by default,
    ``"sync"`` in this process, or an existing scheduler's address. A store left by an
    interrupted run with the same settings is resumed (``resume=False`` starts over).
    """
    options = options or JobOptions()
    if workers is not None:
        options = JobOptions(**{**options.__dict__, "workers": workers})
    if client is None and options.scheduler == "sync" and options.performance_report:
        raise VaeflowError("a Dask performance report (--report) needs a Dask scheduler, not --scheduler sync")
    from vaeflow.dataset.lock import StoreLock

    with StoreLock(Path(store)):
        plan, meta = prepare(Path(src), Path(store), model, quality, pipeline, options, resume)
        with _executor(options, client) as executor:
            try:
                return execute(plan, meta, options, executor)
            except OSError as exc:
                if exc.errno in WRITE_ERRORS:
                    raise write_error(Path(store), exc) from exc
                raise


def prepare(
    src: Path,
    store: Path,
    model: str | None,
    quality: int | None,
    pipeline: PipelineLike,
    options: JobOptions,
    resume: bool = True,
    dry_run: bool = False,
) -> tuple[Plan, dict[str, Any]]:
    """Check settings against any existing store and build the plan; nothing runs yet.

    With ``dry_run``, a store that the job would replace is left as it is.
    """
    codec = resolve_codec(model, quality, pipeline)
    name = pipeline if isinstance(pipeline, str) else ("custom" if pipeline is not None else "default")
    settings = codec_settings(codec, name, options.runtime)
    existing = _existing_store(store, settings, options, resume, dry_run)
    scanned = scan(src, options.max_pixels)
    if existing is None:
        meta: dict[str, Any] = {"format": store_io.STORE_FORMAT, "version": store_io.STORE_VERSION}
        meta.update(settings=settings, complete=False, generation=0, stored_bytes=0, rows=0)
    elif not existing.get("complete"):
        meta = existing  # an interrupted run: resume it, without the rows stored before an --add
        known = set(store_io.previous_index(store, int(meta["rows"]))["paths"])
        scanned = Scan(tuple(i for i in scanned.images if i.path not in known), scanned.skipped)
    elif options.add:
        known = set(store_io.previous_index(store, int(existing["rows"]))["paths"])
        scanned = Scan(tuple(i for i in scanned.images if i.path not in known), scanned.skipped)
        meta = {**existing, "complete": False, "generation": int(existing["generation"]) + 1}
    else:
        meta = existing  # finished, and nothing to add
        scanned = Scan((), scanned.skipped)
    prefix = f"a{meta['generation']}-" if meta["generation"] else ""
    plan = build_plan(scanned, src, store, codec, settings, options.batch_size, int(meta["rows"]), prefix)
    return plan, meta


def _existing_store(
    store: Path, settings: dict[str, Any], options: JobOptions, resume: bool, dry_run: bool = False
) -> dict[str, Any] | None:
    """The existing store's attributes if it can be resumed or extended; None to start afresh
    (emptying the store, unless ``dry_run``)."""
    existing = store_io.read_meta(store)
    if existing is None:
        from vaeflow.dataset.lock import LOCK_NAME

        if store.exists() and (not store.is_dir() or any(p.name != LOCK_NAME for p in store.iterdir())):
            raise VaeflowError(f"{store} exists and is not a vaeflow store; choose another path")
        if options.add:
            raise VaeflowError(f"--add needs a finished store at {store}")
        return None
    changed = _differences(_given(existing.get("settings")), _given(settings))
    earlier_rows = int(existing.get("rows") or 0) > 0  # finished images from earlier runs
    if options.add and changed:
        raise VaeflowError(f"--add needs the store's own settings; {store} differs in {changed}")
    if options.add and not (existing.get("complete") or existing.get("generation")):
        raise VaeflowError(f"--add needs a finished store, or an interrupted --add, at {store}")
    if changed:
        if not options.overwrite:
            raise VaeflowError(
                f"{store} was written with other settings ({changed}); "
                "pass --overwrite to replace it, or choose another path"
            )
    elif resume or existing.get("complete"):
        return existing
    elif earlier_rows and not options.overwrite:  # --no-resume on an interrupted --add: finished images too
        raise VaeflowError(
            f"{store} holds images from earlier runs; run the same command again to finish the interrupted "
            "--add, or pass --overwrite with --no-resume to start the whole store over"
        )
    if not dry_run:
        _remove_store(store)
    return None


def _given(settings: Any) -> Any:
    """Settings without the keys left at None, so that options added later compare equal when unused."""
    if isinstance(settings, dict):
        return {k: _given(v) for k, v in settings.items() if v is not None}
    return settings


def _differences(old: Any, new: Any, prefix: str = "") -> str:
    """The settings that differ, as dotted paths: ``codec.quantize.quality: 50 -> 30``."""
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [_differences(old.get(k), new.get(k), f"{prefix}{k}.") for k in sorted(set(old) | set(new))]
        return "; ".join(p for p in parts if p)
    return f"{prefix[:-1]}: {old!r} -> {new!r}" if old != new else ""


def _remove_store(store: Path) -> None:
    """Empty the store folder, keeping the lock file of the job that is about to refill it."""
    import shutil

    from vaeflow.dataset.lock import LOCK_NAME

    for child in store.iterdir():
        if child.name != LOCK_NAME:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def execute(plan: Plan, meta: dict[str, Any], options: JobOptions, executor: Executor) -> JobReport:
    start = time.perf_counter()
    report = JobReport(plan.store, dashboard_link=executor.dashboard_link)
    if meta.get("complete"):
        _finish(plan.store, options)  # in case an earlier run stopped between its last steps
        report.wall_s = time.perf_counter() - start
        return _report_from_store(report, plan.store, plan)
    from vaeflow import __version__

    meta = {**meta, "vaeflow_version": __version__}
    store_io.write_meta(plan.store, meta)
    work = WorkStore(plan.store)
    work.create(plan)
    markers: dict[str, Marker] = {}
    pending = []
    for batch in plan.batches:
        marker = work.done(batch.key)
        if marker is not None and [m["path"] for m in marker["items"]] == [i.path for i in batch.items]:
            markers[batch.key] = marker
        else:
            pending.append(batch)
    report.resumed_batches = len(markers)
    runtime = options.runtime
    if runtime.threads is None and executor.threads_per_task is not None:
        runtime = replace(runtime, threads=executor.threads_per_task)
    ctx = TaskContext(
        str(plan.src), str(plan.store), plan.codec, runtime, options.max_pixels,
        plan.key_prefix, options.keep_intermediates,
    )  # fmt: skip
    with _progress(plan, options.progress) as advance:
        for marker in markers.values():
            advance(marker)

        def on_done(marker: Marker) -> None:
            markers[marker["key"]] = marker
            advance(marker)

        executor.run(ctx, pending, on_done)
    _assemble(plan, meta, markers, work)
    _finish(plan.store, options)
    report.wall_s = time.perf_counter() - start
    for marker in markers.values():
        for stage, begin, end, _pid in marker["spans"]:
            report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + end - begin
        report.spans += [[*span, marker["key"]] for span in marker["spans"]]
    return _report_from_store(report, plan.store, plan)


def _assemble(plan: Plan, meta: dict[str, Any], markers: dict[str, Marker], work: WorkStore) -> None:
    """Write streams and index in index order, whatever order the batches finished in."""
    entries = {item["index"]: item for marker in markers.values() for item in marker["items"]}
    failed_at_scan = {item.index: (item, reason) for item, reason in plan.failed_at_scan}
    first = meta["rows"]
    count = len(plan.items) + len(plan.failed_at_scan)

    def rows() -> Iterator[store_io.Row]:
        cached: tuple[str, bytes] = ("", b"")
        for index in range(first, first + count):
            if index in failed_at_scan:
                item, reason = failed_at_scan[index]
                yield store_io.Row(item.path, (item.height, item.width), False, reason, b"")
                continue
            entry = entries[index]
            key, offset = entry["stream"]
            if cached[0] != key:
                cached = (key, work.read_streams(key))
            note = entry["reason"] if not entry["ok"] else "; ".join(entry["notes"])
            shape = (entry["shape"][0], entry["shape"][1])
            data = cached[1][offset : offset + entry["nbytes"]]
            yield store_io.Row(entry["path"], shape, entry["ok"], note, data)

    new_bytes = sum(entry["nbytes"] for entry in entries.values())
    total = store_io.write_index(plan.store, rows(), new_bytes, plan.skipped, meta["stored_bytes"], first)
    for part in ("streams", "index", "skipped"):  # durable before the store says it is complete
        store_io.sync_files(plan.store / part)
    store_io.consolidate(plan.store)  # readers see the new shapes as soon as it is complete
    store_io.write_meta(plan.store, {**meta, "complete": True, "stored_bytes": total, "rows": first + count})
    store_io.fsync(plan.store / "zarr.json")


def _finish(store: Path, options: JobOptions) -> None:
    """Drop the work store (unless kept) and consolidate what is left; safe to repeat."""
    if not options.keep_intermediates:
        WorkStore(store).remove()
    store_io.consolidate(store)


def _report_from_store(report: JobReport, store: Path, plan: Plan | None = None) -> JobReport:
    from vaeflow.dataset.reader import open_store

    reader = open_store(store)
    summary = reader.summary()
    report.stored, report.failed, report.skipped = summary["images"], summary["failed"], summary["skipped"]
    report.images = report.stored + report.failed
    report.bytes_out, report.pixels = summary["bytes"], summary["pixels"]
    if plan is not None:  # bytes in, out and bpp of this run's images (an --add codes only some; a rerun none)
        planned = {i.path: i.size_bytes for i in plan.items}
        coded = [(planned[name], nbytes, h * w) for name, (h, w), nbytes, _ in reader.entries() if name in planned]
        report.bytes_in, report.bytes_out, report.pixels = (sum(c[k] for c in coded) for k in range(3))
    return report


class _NullProgress:
    def __call__(self, marker: Marker) -> None:
        pass


def _progress(plan: Plan, enabled: bool) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def bar() -> Iterator[Callable[[Marker], None]]:
        if not enabled:
            yield _NullProgress()
            return
        from tqdm.auto import tqdm

        failed = len(plan.failed_at_scan)
        done = [0, failed]
        started = time.perf_counter()
        with tqdm(total=len(plan.items) + failed, unit="img", desc="compress", initial=failed) as pbar:

            def advance(marker: Marker) -> None:
                ok = sum(1 for i in marker["items"] if i["ok"])
                done[0] += ok
                done[1] += len(marker["items"]) - ok
                rate = done[0] / max(1e-9, time.perf_counter() - started)
                pbar.set_postfix(done=done[0], failed=done[1], img_s=f"{rate:.2f}", refresh=False)
                pbar.update(len(marker["items"]))

            yield advance

    return bar()


def _executor(options: JobOptions, client: Any) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def chosen() -> Iterator[Executor]:
        if client is None and options.scheduler == "sync":
            yield SerialExecutor()
            return
        from vaeflow.dataset.graph import DaskExecutor, cluster_client

        with cluster_client(client, options) as (dask_client, link, threads):
            yield DaskExecutor(dask_client, link, threads, options.performance_report)

    return chosen()
