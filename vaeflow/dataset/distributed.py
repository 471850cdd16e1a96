"""The Dask executor of a dataset job: one ``dask.delayed`` task per batch (``batch-g0-b3-<job>``)
running every stage, its time metered by stage; or, with ``fuse_stages=False``, a chain of tasks
load, each codec stage, write (``tasks.STAGES``), named after the stage and batch
(``vae-g0-b3-<job>``), passing only small ``BatchState`` objects while the arrays stay in the
work store. This is the only module that imports Dask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import dask
from dask.delayed import Delayed, delayed
from distributed import Client, LocalCluster, as_completed, performance_report, span
from distributed.client import ClosedClientError
from distributed.comm.core import CommClosedError
from distributed.metrics import context_meter

from vaeflow.dataset import tasks
from vaeflow.dataset.isolation import code_alone
from vaeflow.dataset.layout import LAYOUT, BatchMarker
from vaeflow.dataset.location import is_url
from vaeflow.dataset.options import ClusterOptions
from vaeflow.dataset.plan import Batch
from vaeflow.dataset.tasks import JOB_ERRORS, TaskContext
from vaeflow.foundations.display import without_remote_icon
from vaeflow.foundations.errors import ClusterLostError, VaeflowError

RETRIES = 2
WINDOW_PER_THREAD = 3  # batches in flight per worker thread: enough to keep every thread busy
CONNECT_TIMEOUT_S = 10
# What a client raises when its cluster, not a task, went away.
_CLUSTER_GONE = (CancelledError, ClosedClientError, CommClosedError)


def cluster_lost(client: Client, exc: BaseException) -> ClusterLostError | None:
    """The error to stop the job with if ``exc`` means the cluster is gone (None if a task failed)."""
    if isinstance(exc, ClusterLostError):
        return exc
    if isinstance(exc, _CLUSTER_GONE) or client.status not in ("running", "connecting"):
        where = getattr(client.scheduler, "address", None) or "the scheduler"
        why = " ".join(str(exc).split())  # one line
        return ClusterLostError(
            f"lost the Dask cluster ({where}: {type(exc).__name__}: {why}). The batches finished so far are "
            "kept: start the cluster again and run the same command to resume"
        )
    return None


def result(client: Client, future: Any) -> Any:
    """A future's result; a lost cluster raises ``ClusterLostError`` rather than the task's error."""
    try:
        return future.result()
    except Exception as exc:
        lost = cluster_lost(client, exc)
        if lost is not None:
            raise lost from exc
        raise


def batch_pixels(batch: Batch) -> int:
    """The pixels a batch encodes: what its tasks' time grows with."""
    return len(batch.items) * batch.padded_shape[0] * batch.padded_shape[1]


@contextlib.contextmanager
def job_performance_report(path: str | None) -> Iterator[None]:
    """Dask's HTML performance report of everything run inside (a whole job, every phase), self-contained."""
    if path is None:
        yield
        return
    with performance_report(filename=path, mode="inline"):  # BokehJS in the page: works offline
        yield
    without_remote_icon(Path(path))


class DaskExecutor:
    """Runs batches on a ``distributed`` client; lost workers' tasks are recomputed elsewhere."""

    def __init__(
        self,
        client: Client,
        dashboard_link: str | None,
        threads_per_task: int | None,
        window: int | None = None,
    ) -> None:
        self.client = client
        self.dashboard_link = dashboard_link
        self.threads_per_task = threads_per_task
        self.window = window  # batches on the scheduler at once (None: WINDOW_PER_THREAD per worker thread)
        self.peak_in_flight = 0

    def run(self, ctx: TaskContext, batches: list[Batch], on_done: Callable[[BatchMarker], None]) -> None:
        """Batches go to the scheduler in a window of a few per worker thread, topped up as they
        finish, so that the client's and the scheduler's memory stay flat however many there are;
        the largest go first, so that the workers finish close together (the order changes no byte)."""
        if not batches:
            return
        token = hashlib.sha1(f"{ctx.store}|{ctx.prefix}|{os.getpid()}".encode()).hexdigest()[:8]
        sources = [] if is_url(ctx.src) else [Path(ctx.src)]  # a source at a URL is read through fsspec
        check_shared_paths(self.client, [*sources, Path(ctx.store)], Path(ctx.store))
        self.window = self.window or max(2, WINDOW_PER_THREAD * sum(self.client.nthreads().values()))
        with span("vaeflow-compress") as job:
            spans = stage_spans(job)
            queue = iter(sorted(batches, key=batch_pixels, reverse=True))  # the largest first: a short tail
            in_flight: dict[str, Batch] = {}
            running = as_completed()

            def submit() -> None:
                batch = next(queue, None)
                if batch is not None:
                    future = self.client.compute(batch_graph(ctx, batch, token, spans), retries=RETRIES)
                    in_flight[future.key] = batch
                    running.add(future)
                    self.peak_in_flight = max(self.peak_in_flight, len(in_flight))

            for _ in range(self.window):
                submit()
            for future in running:
                batch = in_flight.pop(future.key)
                try:
                    marker = result(self.client, future)
                except JOB_ERRORS:
                    raise  # the store, the model or the cluster: the job stops, and the same command resumes it
                except Exception:  # the batch kept failing, or kept killing workers: try image by image
                    marker = self._isolate(ctx, batch, token, spans)
                on_done(marker)
                future.release()
                submit()

    def _isolate(self, ctx: TaskContext, batch: Batch, token: str, spans: Spans) -> BatchMarker:
        """One image at a time, because a dying worker also counts against the tasks queued on it:
        run together, innocent images would share the blame of a poison one."""

        def run_single(single: Batch) -> BatchMarker:
            graph = batch_graph(ctx, single, token, spans)
            return result(self.client, self.client.compute(graph, retries=RETRIES))  # type: ignore[no-any-return]

        return code_alone(ctx, batch, run_single)


Spans = dict[str, dict[str, tuple[str, ...]]]


def stage_spans(job: str) -> Spans:
    """One ``distributed`` span per stage inside the job's, so the dashboard splits time by stage."""
    return {stage: {"name": ("vaeflow-compress", stage), "ids": (job, str(uuid.uuid4()))}
            for stage in (*tasks.STAGES, "batch")}  # fmt: skip


def run_fused_metered(ctx: TaskContext, batch: Batch) -> BatchMarker:
    """A fused batch whose task metrics split its time by stage (the dashboard's span view)."""
    return tasks.run_fused(ctx, batch, context_meter.meter)


def batch_graph(ctx: TaskContext, batch: Batch, token: str, spans: Spans | None = None) -> Delayed:
    """The batch's tasks, keyed and spanned after their stage (``vae-g0-b3-<job>``), or one
    ``batch-...`` task when the context fuses the stages."""
    name = f"{batch.key}-{token}"

    def stage(label: str) -> Any:
        return dask.annotate(span=spans[label]) if spans else contextlib.nullcontext()

    if ctx.fused:
        with stage("batch"):
            return delayed(run_fused_metered, pure=False)(ctx, batch, dask_key_name=f"batch-{name}")  # type: ignore[no-any-return]
    with stage("load"):
        state = delayed(tasks.load_task, pure=False)(ctx, batch, dask_key_name=f"load-{name}")
    for label in tasks.STAGES[1:-1]:
        with stage(label):
            state = delayed(tasks.stage_task, pure=False)(ctx, batch, state, label, dask_key_name=f"{label}-{name}")
    with stage("write"):
        return delayed(tasks.write_task, pure=False)(ctx, batch, state, dask_key_name=f"write-{name}")  # type: ignore[no-any-return]


@contextlib.contextmanager
def cluster_client(client: Client | None, options: ClusterOptions) -> Iterator[tuple[Client, str | None, int | None]]:
    """The client to run on, its dashboard link, and ONNX threads per task.

    A given client is used as it is and left open. An address connects to that scheduler;
    each task then runs one ONNX thread per Dask thread. Otherwise a local cluster of worker
    processes is started, and closed at the end, on Ctrl-C too.
    """
    if client is not None:
        yield client, client.dashboard_link, None
        return
    if options.scheduler:
        try:
            remote = Client(options.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, ValueError, TypeError) as exc:
            raise VaeflowError(
                f"cannot reach a Dask scheduler at {options.scheduler!r} ({exc}); start one (`dask scheduler`) "
                "or check the address, e.g. tcp://host:8786"
            ) from exc
        try:
            yield remote, remote.dashboard_link, 1
        finally:
            remote.close()
        return
    cores = os.cpu_count() or 1
    workers = options.workers or cores
    cluster = local_cluster(workers, options.threads_per_worker, options.memory_limit)
    local = Client(cluster)
    print(f"vaeflow: {workers} workers, dashboard at {local.dashboard_link}", file=sys.stderr)
    try:
        yield local, local.dashboard_link, max(1, cores // (workers * options.threads_per_worker))
    finally:
        local.close()
        cluster.close()


def check_shared_paths(client: Client, paths: list[Path], folder: Path) -> None:
    """Refuse to run unless every worker sees ``paths`` and the very ``folder`` this process sees.

    A probe file with a random token is written in ``folder`` and read back by each worker:
    vaeflow's workers read the source and write the store directly, so they need a file
    system shared with this process at the same paths.
    """
    token = secrets.token_hex(8)
    probe = folder / f"{LAYOUT.probe_prefix}{token}"
    probe.write_text(token)
    try:
        answers = client.run(_probe, [str(p) for p in paths], str(probe), token)
    except Exception as exc:
        lost = cluster_lost(client, exc)
        raise lost or VaeflowError(f"could not ask the Dask workers what they see: {exc}") from exc
    finally:
        probe.unlink(missing_ok=True)
    if not answers:
        raise VaeflowError("the Dask cluster has no workers: start some (`dask worker ADDRESS`)")
    blind = {worker: problem for worker, problem in answers.items() if problem}
    if blind:
        worker, problem = next(iter(sorted(blind.items())))
        raise VaeflowError(
            f"{len(blind)} of {len(answers)} Dask workers do not see this job's files at the same paths "
            f"({worker}: {problem}); vaeflow's workers read the source and write the store themselves, so they "
            "need a file system shared with this machine at the same paths"
        )


def _probe(paths: list[str], probe: str, token: str) -> str:
    """On a worker: what it cannot see of ``paths`` and the probe file ("" if all is there)."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        return f"no {missing[0]}"
    try:
        with open(probe) as fh:
            return "" if fh.read() == token else f"{probe} holds other content (another folder at that path)"
    except OSError:
        return f"no {probe} (another folder at that path)"


DASK_PROFILE_INTERVAL = "10ms"  # distributed's default
PROFILE_INTERVAL = "100ms"


def local_cluster(workers: int, threads_per_worker: int = 1, memory_limit: str = "auto", **kwargs: Any) -> LocalCluster:
    """A local cluster of worker processes tuned for vaeflow's stages.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc hand every
    freed megabyte-sized array back to the system and fault it in again on the next image:
    reading an image's rows from the work store then takes about four times as long. Workers
    started here keep glibc's own adaptive thresholds. Their statistical profiler samples every
    100 ms rather than Dask's 10 ms (unless the Dask config chose otherwise): its Profile page
    still fills, at a tenth of the cost (about 5% of a job's time at 10 ms).
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    config: dict[str, Any] = {"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": environ}
    if dask.config.get("distributed.worker.profile.interval", None) == DASK_PROFILE_INTERVAL:
        config["distributed.worker.profile.interval"] = PROFILE_INTERVAL
    with dask.config.set(config):
        return LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit, processes=True,
            **kwargs,
        )  # fmt: skip


def client_mapper(client: Client, prefix: str) -> Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]:
    """Map a function over items on ``client``, yielding results in order."""

    def run(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        token = hashlib.sha1(f"{prefix}|{os.getpid()}|{id(items)}".encode()).hexdigest()[:8]
        futures = client.map(fn, items, key=[f"{prefix}-{i}-{token}" for i in range(len(items))], retries=RETRIES)
        for future in futures:
            yield result(client, future)
            future.release()

    return run
