"""Running a dataset job: plan (reading only), then apply the store policy, execute the
batches and assemble the store.

Executors: ``serial.SerialExecutor`` runs every batch in this process (the reference);
``distributed.DaskExecutor`` runs the same tasks on a Dask cluster. Both give byte-identical
stores, because every byte depends only on the plan, never on the order in which batches
finish.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from vaeflow.codec.api import PipelineLike, resolve_codec
from vaeflow.codec.codec import Codec
from vaeflow.codec.ratecontrol import DropSummary, learned_margin
from vaeflow.dataset import policy as store_policy
from vaeflow.dataset import store as store_io
from vaeflow.dataset.assemble import assemble, finish
from vaeflow.dataset.layout import EXACT_LATENTS, LAYOUT, META, SETTINGS, BatchMarker
from vaeflow.dataset.location import is_url
from vaeflow.dataset.lock import StoreLock
from vaeflow.dataset.options import ClusterOptions, JobOptions
from vaeflow.dataset.plan import Batch, Plan, build_plan, changed_note
from vaeflow.dataset.progress import progress
from vaeflow.dataset.reader import open_store
from vaeflow.dataset.serial import SerialExecutor
from vaeflow.dataset.sources import scan_source, split_glob
from vaeflow.dataset.tasks import TaskContext
from vaeflow.dataset.upload import UploadReport, check_writable, download, staging_dir, upload
from vaeflow.dataset.work import WorkStore
from vaeflow.foundations.display import html_table
from vaeflow.foundations.errors import StoreWriteError, VaeflowError
from vaeflow.foundations.resources import vaeflow_version
from vaeflow.stages import RateTarget

WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


def write_error(store: Path, exc: OSError) -> StoreWriteError:
    return StoreWriteError(
        f"writing {store} failed: {exc}. The batches finished so far are kept: free space or fix "
        "permissions, then run the same command again to resume."
    )


class Executor(Protocol):
    dashboard_link: str | None
    threads_per_task: int | None  # ONNX threads per task, when the executor knows best

    def run(self, ctx: TaskContext, batches: list[Batch], on_done: Callable[[BatchMarker], None]) -> None: ...


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
    upload: UploadReport | None = None  # for a store on object storage
    drops: DropSummary | None = None  # under a PSNR-drop limit: how this run's drops were kept
    changed: tuple[str, ...] = ()  # stored images whose files changed since they were coded (kept as coded)

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
        if self.drops is not None:
            lines.append(f"  verify: {self.drops}")
        if self.changed:
            lines.append(f"  {changed_note(self.changed)}")
        if self.upload is not None:
            up = self.upload
            lines.append(f"  uploaded to {up.url}: {up.uploaded} objects ({up.bytes_sent:,} bytes) sent and verified, "
                         f"{up.kept} already there, {up.removed} stale ones removed")  # fmt: skip
        if self.failed:
            lines.append(f"  failed images are listed by `vaeflow ls {self.store} --failed` (index/status, index/note)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        ratio = f"{self.bytes_in / self.bytes_out:.1f}x" if self.bytes_out else "-"
        total = sum(self.stage_seconds.values()) or 1.0
        shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in self.stage_seconds.items()) or "-"
        rows = [("images stored", f"{self.stored} of {self.images}"), ("failed", self.failed),
                ("other files skipped", self.skipped), ("batches resumed", self.resumed_batches),
                ("bytes in / out", f"{self.bytes_in:,} / {self.bytes_out:,} ({ratio})"),
                ("mean bpp", f"{self.mean_bpp:.3f}" if self.bytes_out else "-"), ("wall time", f"{self.wall_s:.1f} s"),
                ("stage time", shares), ("verify", str(self.drops) if self.drops else "-"),
                ("dashboard", self.dashboard_link or "-")]  # fmt: skip
        footer = f"failed images: vaeflow ls {self.store} --failed" if self.failed else ""
        return html_table(f"vaeflow job: {self.store}", rows, footer)


def compress_dataset(
    src: str | Path,
    store: str | Path,
    *,
    model: str | None = None,
    quality: int | None = None,
    pipeline: PipelineLike = None,
    target: RateTarget | None = None,
    client: Any = None,
    resume: bool = True,
    options: JobOptions | None = None,
    cluster: ClusterOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    staging: str | Path | None = None,
    verify: str | None = None,
    verify_fraction: float | None = None,
    **option_fields: Any,
) -> JobReport:
    """Compress every image under ``src`` into the zarr store ``store``.

    ``src`` is a folder of image files, of webdataset ``.tar`` shards or of parquet files (found from its files,
    or named by ``options.source``: ``vaeflow.dataset.sources``), a glob of such files (``data/train-*.parquet``),
    or an fsspec URL of such a prefix (``s3://bucket/shards/``, read with ``storage_options``).

    ``pipeline`` is a preset name or a pipeline; ``model``, ``quality`` and ``target`` override
    its own, as in ``vaeflow.compress``. Under a PSNR-drop limit (the latent-store presets),
    ``verify`` says how it is kept: ``"all"`` decodes every image to check its step, ``"sample"``
    only ``verify_fraction`` of them (chosen from their names; the others' steps are predicted
    with a margin learned from them), ``"none"`` predicts every step (``vaeflow.codec.ratecontrol``).

    Runs on ``client`` when given (a ``dask.distributed.Client``), else as ``cluster`` says: a new
    local cluster of worker processes by default, ``"sync"`` in this process, or an existing
    scheduler's address. A store left by an interrupted run with the same settings is resumed
    (``resume=False`` starts over).

    Every field of ``options`` (``JobOptions``) and ``cluster`` (``ClusterOptions``) may also be given
    as a keyword, which replaces it (``None`` leaves it as it is): ``batch_size``, ``buckets``,
    ``fuse_stages``, ``overwrite``, ``add``, ``retry_failed`` (code again the images a finished store
    records as failed), ``keep_intermediates``, ``max_pixels``, ``progress``, ``runtime``, ``source`` (a
    ``SourceOptions``: the source's format and parquet columns); ``scheduler`` (``"sync"``, or a scheduler's
    address), ``workers`` (of a new local cluster), ``threads_per_worker``, ``memory_limit``,
    ``performance_report``. Any other keyword is a ``TypeError``.

    ``store`` may be an fsspec URL (``s3://bucket/out.zarr``, with ``storage_options``): the job
    then writes a local copy at ``staging`` (default ``$VAEFLOW_HOME/staging/...``) and uploads it
    when complete, verifying every object (``vaeflow.dataset.upload``); the same call resumes an
    interrupted job or upload. The staged copy is removed once the upload is verified.
    """
    options, cluster = with_fields(options or JobOptions(), cluster or ClusterOptions(), option_fields)
    if client is None and cluster.scheduler == "sync" and cluster.performance_report:
        raise VaeflowError("a Dask performance report (--report) needs a Dask scheduler, not --scheduler sync")
    codec, preset, options = job_codec(store, model, quality, pipeline, target, options, verify, verify_fraction)
    src, options = job_source(src, options, storage_options)
    if is_url(store):
        url, local = str(store), Path(staging or staging_dir(str(store))).absolute()
        check_writable(url, storage_options)  # before any image is coded
        if not (local / LAYOUT.zarr_json).exists():  # no staged copy: continue from the remote store, if any
            download(url, local, storage_options)
        report = compress_dataset(
            src, local, model=model, quality=quality, pipeline=pipeline, target=target, client=client,
            resume=resume, options=options, cluster=cluster, verify=verify, verify_fraction=verify_fraction,
        )  # fmt: skip
        report.upload = upload(local, url, storage_options)
        report.store = url  # type: ignore[assignment]
        shutil.rmtree(local, ignore_errors=True)
        return report
    store = Path(store).absolute()
    with StoreLock(store):
        plan = plan_job(src, store, codec, preset, options, resume)
        with _executor(cluster, client, plan) as executor:
            try:
                return execute(plan, options, executor)
            except OSError as exc:
                if exc.errno in WRITE_ERRORS:
                    raise write_error(store, exc) from exc
                raise


JOB_FIELDS = tuple(f.name for f in fields(JobOptions))
CLUSTER_FIELDS = tuple(f.name for f in fields(ClusterOptions))


def with_fields(
    options: JobOptions, cluster: ClusterOptions, given: dict[str, Any]
) -> tuple[JobOptions, ClusterOptions]:
    """``options`` and ``cluster`` with the fields ``given`` by name (those given as None left as they are)."""
    unknown = sorted(set(given) - {*JOB_FIELDS, *CLUSTER_FIELDS})
    if unknown:
        raise TypeError(
            f"compress_dataset() got unexpected keyword arguments {', '.join(map(repr, unknown))}; besides its own, "
            f"it takes the fields of JobOptions ({', '.join(JOB_FIELDS)}) and of ClusterOptions "
            f"({', '.join(CLUSTER_FIELDS)})"
        )
    chosen = {name: value for name, value in given.items() if value is not None}
    options = replace(options, **{k: v for k, v in chosen.items() if k in JOB_FIELDS})
    cluster = replace(cluster, **{k: v for k, v in chosen.items() if k in CLUSTER_FIELDS})
    return options, cluster


def job_codec(
    store: str | Path,
    model: str | None,
    quality: int | None,
    pipeline: PipelineLike,
    target: RateTarget | None,
    options: JobOptions,
    verify: str | None = None,
    verify_fraction: float | None = None,
) -> tuple[Codec, str, JobOptions]:
    """The job's codec and preset name. ``--add`` and ``--retry-failed`` continue with the store's
    own settings when none are asked for (a store written by an earlier default keeps it)."""
    preset = pipeline if isinstance(pipeline, str) else ("custom" if pipeline is not None else "default")
    recorded = None
    if (options.add or options.retry_failed) and not is_url(store):
        recorded = store_policy.recorded_codec(Path(store))
    if recorded is not None and model is None and quality is None and pipeline is None and target is None:
        pipeline, model, preset, buckets = recorded
        options = replace(options, buckets=options.buckets or buckets)
    return resolve_codec(model, quality, pipeline, target, verify, verify_fraction), preset, options


def job_source(
    src: str | Path, options: JobOptions, storage_options: dict[str, Any] | None = None
) -> tuple[str | Path, JobOptions]:
    """The source's folder (absolute: workers elsewhere see the same paths) or URL, and the options that say how
    to read it: a glob's pattern, a URL's storage options."""
    src, pattern = split_glob(src)
    if pattern is not None:  # a glob: its folder, and the files that match
        options = replace(options, source=replace(options.source, pattern=pattern))
    if is_url(src):  # read through fsspec: with its own storage options, else those given for the job
        if options.source.storage_options is None:
            options = replace(options, source=replace(options.source, storage_options=storage_options or {}))
        return src, options
    return Path(src).absolute(), options


def plan_job(src: Path | str, store: Path, codec: Codec, preset: str, options: JobOptions, resume: bool = True) -> Plan:
    """Check the settings against any existing store and build the plan; nothing on disk changes."""
    settings = {**codec.settings(), SETTINGS.pipeline: preset, SETTINGS.buckets: options.buckets,
                SETTINGS.latents: EXACT_LATENTS}  # fmt: skip
    decided = store_policy.decide(
        store, settings, add=options.add, overwrite=options.overwrite, resume=resume, retry_failed=options.retry_failed
    )
    scanned = scan_source(src, options.max_pixels, store, options.source)
    return build_plan(
        scanned, src, store, codec, settings, decided, options.batch_size, options.buckets, options.max_pixels
    )


def execute(plan: Plan, options: JobOptions, executor: Executor) -> JobReport:
    start = time.perf_counter()
    report = JobReport(plan.store, dashboard_link=executor.dashboard_link)
    if plan.policy.action == store_policy.COMPLETE:
        finish(plan.store, options.keep_intermediates)  # in case an earlier run stopped between its last steps
        report.wall_s = time.perf_counter() - start
        return report_from_store(report, plan)
    store_policy.apply(plan.policy, plan.store)
    meta = {**plan.policy.meta, META.vaeflow_version: vaeflow_version()}
    store_io.write_meta(plan.store, meta)
    work = WorkStore(plan.store)
    work.create(plan, stage_arrays=not options.fuse_stages or options.keep_intermediates)
    markers: dict[str, BatchMarker] = {}
    pending = []
    for batch in plan.batches:
        marker = work.done(batch.key)
        if marker is not None and [m.path for m in marker.items] == [i.path for i in batch.items]:
            markers[batch.key] = marker
        else:
            pending.append(batch)
    report.resumed_batches = len(markers)
    runtime = options.runtime
    if runtime.threads is None and executor.threads_per_task is not None:
        runtime = replace(runtime, threads=executor.threads_per_task)
    ctx = TaskContext(
        str(plan.src), str(plan.store), plan.codec, runtime, options.max_pixels, plan.key_prefix,
        options.keep_intermediates, options.fuse_stages, source_options=options.source.storage_options,
    )  # fmt: skip
    with progress(plan, options.progress) as advance:
        for marker in markers.values():
            advance(marker)

        def on_done(marker: BatchMarker) -> None:
            markers[marker.key] = marker
            advance(marker)

        if _learns_margin(plan):  # the sample's drops are measured first: the rest aim with the margin they give
            executor.run(ctx, [b for b in pending if b.verified], on_done)
            ctx = replace(ctx, margin=_margin(plan, markers))
            pending = [b for b in pending if not b.verified]
        executor.run(ctx, pending, on_done)
    drops = _drop_summary(plan, markers, ctx.margin)
    if drops is not None:  # merged with the earlier generations' (an --add, or its resumption)
        earlier = DropSummary.from_dict(meta.get(META.verification))
        meta = {**meta, META.verification: (earlier.merged(drops) if earlier else drops).to_dict()}
    assemble(plan, meta, markers, work)
    finish(plan.store, options.keep_intermediates)
    report.wall_s = time.perf_counter() - start
    report.drops = drops
    for marker in markers.values():
        for stage, begin, end, _pid in marker.spans:
            report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + end - begin
        report.spans += [[*span, marker.key] for span in marker.spans]
    return report_from_store(report, plan)


def _learns_margin(plan: Plan) -> bool:
    target = plan.codec.target
    return target is not None and target.max_psnr_drop is not None and target.verify == "sample"


def _pairs(
    plan: Plan, markers: dict[str, BatchMarker], verified: bool | None = None
) -> list[tuple[float, float | None]]:
    """Each coded image's (predicted, measured or None) drop, in index order; only those of verified
    (or unverified) batches when asked."""
    chosen = {b.key for b in plan.batches if verified is None or b.verified == verified}
    found = [
        (item.index, predicted, measured)
        for key, marker in markers.items()
        if key in chosen
        for item in marker.items
        if item.drop is not None
        for predicted, measured in [item.drop]
        if predicted is not None
    ]
    found.sort(key=lambda drop: drop[0])
    return [(float(predicted), None if measured is None else float(measured)) for _, predicted, measured in found]


def _margin(plan: Plan, markers: dict[str, BatchMarker]) -> float | None:
    """The margin learned from the verified batches of this run (the plan's, done or resumed)."""
    model = plan.codec.drop_model
    if model is None:
        return None
    measured = [(p, m) for p, m in _pairs(plan, markers, verified=True) if m is not None]
    return learned_margin(model, measured)


def _drop_summary(plan: Plan, markers: dict[str, BatchMarker], margin: float | None) -> DropSummary | None:
    target = plan.codec.target
    if target is None or target.max_psnr_drop is None:
        return None
    return DropSummary.of(target.max_psnr_drop, _pairs(plan, markers), margin)


def report_from_store(report: JobReport, plan: Plan) -> JobReport:
    """The summary of the finished store, with bytes in and out and bpp of this run's images
    (an ``--add`` codes only some; a rerun none)."""
    reader = open_store(plan.store)
    report.changed = plan.changed
    summary = reader.summary()
    report.stored, report.failed, report.skipped = summary["images"], summary["failed"], summary["skipped"]
    report.images = report.stored + report.failed
    planned = {i.path: i.size_bytes for i in plan.items}
    coded = [(planned[name], nbytes, h * w) for name, (h, w), nbytes, _ in reader.entries() if name in planned]
    report.bytes_in, report.bytes_out, report.pixels = (sum(c[k] for c in coded) for k in range(3))
    return report


@contextmanager
def _executor(cluster: ClusterOptions, client: Any, plan: Plan) -> Iterator[Executor]:
    if plan.policy.action == store_policy.COMPLETE or (client is None and cluster.scheduler == "sync"):
        yield SerialExecutor()  # nothing to code needs no cluster
        return
    # Dask is imported only for jobs that run on it
    from vaeflow.dataset.distributed import DaskExecutor, cluster_client, job_performance_report

    with (
        cluster_client(client, cluster) as (dask_client, link, threads),
        job_performance_report(cluster.performance_report),
    ):
        yield DaskExecutor(dask_client, link, threads)
