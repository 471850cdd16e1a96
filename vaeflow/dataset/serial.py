"""The in-process executor: every batch's stages in order, in this process (the reference).

Its stores are byte-identical to the Dask executor's. Attempts are counted on disk, because
a poison input kills this very process: a batch whose runs died ``MAX_ATTEMPTS`` times is then
coded image by image, and an image whose own runs, alone, died that often is recorded as
failed, so that resuming always makes progress (``--retry-failed`` codes such images again
later). A run stopped from outside that the process sees (Ctrl-C) is not counted.
"""

from __future__ import annotations

from collections.abc import Callable

from vaeflow.dataset.isolation import PoisonInputError, code_alone
from vaeflow.dataset.layout import BatchMarker
from vaeflow.dataset.plan import Batch
from vaeflow.dataset.tasks import TaskContext, run_batch, run_fused
from vaeflow.dataset.work import WorkStore

MAX_ATTEMPTS = 2


class SerialExecutor:
    dashboard_link: str | None = None
    threads_per_task: int | None = None

    def run(self, ctx: TaskContext, batches: list[Batch], on_done: Callable[[BatchMarker], None]) -> None:
        work = WorkStore(ctx.store)

        def attempt(batch: Batch) -> BatchMarker:
            try:
                return (run_fused if ctx.fused else run_batch)(ctx, batch)
            except KeyboardInterrupt:
                work.forget_attempt(batch.key)  # stopped from outside: not this batch's doing
                raise

        def run_single(single: Batch) -> BatchMarker:
            done = work.done(single.key)
            if done is not None:
                return done
            deaths = work.count_attempt(single.key) - 1
            if deaths >= MAX_ATTEMPTS:
                raise PoisonInputError(f"the job died {deaths} times while coding this image alone (poison input)")
            return attempt(single)

        for batch in batches:
            if work.count_attempt(batch.key) <= MAX_ATTEMPTS:
                on_done(attempt(batch))
            else:
                on_done(code_alone(ctx, batch, run_single))
