"""The Dask executor of a dataset job: one ``dask.delayed`` task per stage per batch.

Each batch is a chain load -> vae -> transform -> quantize -> entropy -> write, with keys
named after the stage and batch (``vae-g0-b3-<job>``) so that the dashboard shows which
stage runs. Tasks pass only small ``BatchState`` objects; arrays stay in the work store.
This is the only module that imports Dask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import dask
from dask.delayed import Delayed, delayed
from distributed import Client, LocalCluster, as_completed, performance_report, span

from vaeflow.dataset import tasks
from vaeflow.dataset.isolation import code_alone
from vaeflow.dataset.plan import Batch
from vaeflow.dataset.tasks import JOB_ERRORS, TaskContext

RETRIES = 2


class DaskExecutor:
    """Runs batches on a ``distributed`` client; lost workers' tasks are recomputed elsewhere."""

    def __init__(
        self,
        client: Client,
        dashboard_link: str | None,
        threads_per_task: int | None,
        performance_report: str | None = None,
    ) -> None:
        self.client = client
        self.dashboard_link = dashboard_link
        self.threads_per_task = threads_per_task
        self.performance_report = performance_report

    def run(self, ctx: TaskContext, batches: list[Batch], on_done: Callable[[dict[str, Any]], None]) -> None:
        if not batches:
            return
        token = hashlib.sha1(f"{ctx.store}|{ctx.prefix}|{os.getpid()}".encode()).hexdigest()[:8]
        graphs = [batch_graph(ctx, b, token) for b in batches]
        report = (
            performance_report(filename=self.performance_report)
            if self.performance_report
            else contextlib.nullcontext()
        )
        with report, span("vaeflow-compress"):
            futures = self.client.compute(graphs, retries=RETRIES)
            by_key = {f.key: b for f, b in zip(futures, batches, strict=True)}
            for future in as_completed(futures):
                batch = by_key[future.key]
                try:
                    marker = future.result()
                except JOB_ERRORS:
                    raise  # the store cannot be written, or the model differs: the job stops, and can be resumed
                except Exception:  # the batch kept failing, or kept killing workers: try image by image
                    marker = self._isolate(ctx, batch, token)
                on_done(marker)
                future.release()

    def _isolate(self, ctx: TaskContext, batch: Batch, token: str) -> dict[str, Any]:
        """One image at a time, because a dying worker also counts against the tasks queued on it:
        run together, innocent images would share the blame of a poison one."""

        def run_single(single: Batch) -> dict[str, Any]:
            return self.client.compute(batch_graph(ctx, single, token), retries=RETRIES).result()  # type: ignore[no-any-return]

        return code_alone(ctx, batch, run_single)


def batch_graph(ctx: TaskContext, batch: Batch, token: str) -> Delayed:
    name = f"{batch.key}-{token}"
    state = delayed(tasks.load, pure=False)(ctx, batch, dask_key_name=f"load-{name}")
    for task in tasks.STAGE_TASKS:
        state = delayed(task, pure=False)(ctx, batch, state, dask_key_name=f"{task.__name__}-{name}")
    return delayed(tasks.write, pure=False)(ctx, batch, state, dask_key_name=f"write-{name}")  # type: ignore[no-any-return]


@contextlib.contextmanager
def cluster_client(client: Client | None, options: Any) -> Iterator[tuple[Client, str | None, int | None]]:
    """The client to run on, its dashboard link, and ONNX threads per task.

    A given client is used as it is and left open. An address connects to that scheduler;
    each task then runs one ONNX thread per Dask thread. Otherwise a local cluster of worker
    processes is started, and closed at the end, on Ctrl-C too.
    """
    if client is not None:
        yield client, client.dashboard_link, None
        return
    if options.scheduler:
        remote = Client(options.scheduler)
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


def local_cluster(workers: int, threads_per_worker: int = 1, memory_limit: str = "auto", **kwargs: Any) -> LocalCluster:
    """A local cluster of worker processes tuned for vaeflow's stages.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc hand every
    freed megabyte-sized array back to the system and fault it in again on the next image:
    reading an image's rows from the work store then takes about four times as long. Workers
    started here keep glibc's own adaptive thresholds.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    config = {"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": environ}
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
            yield future.result()
            future.release()

    return run
