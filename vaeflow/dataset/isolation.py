"""The one poison-isolation policy, shared by every executor.

A batch whose tasks fail (after the executor's own retries), or whose runs keep killing
the job or its workers, is coded again one image at a time; an image that still fails on
its own is recorded as failed with the reason, and the rest of the batch is kept. Errors of
the job rather than of an image are never per-image failures: a store that cannot be written
(``OSError``: disk full, permissions) or a worker whose registry holds another model than the
plan's (``ModelError``) stops the job, which the same command resumes once that is fixed.
"""

from __future__ import annotations

from collections.abc import Callable

from vaeflow.dataset.layout import BatchMarker
from vaeflow.dataset.plan import Batch
from vaeflow.dataset.tasks import JOB_ERRORS, TaskContext, failed_marker, merged_marker, single_batches
from vaeflow.foundations.errors import VaeflowError


class PoisonInputError(VaeflowError):
    """An image whose coding kept killing the process that coded it."""


def code_alone(ctx: TaskContext, batch: Batch, run_single: Callable[[Batch], BatchMarker]) -> BatchMarker:
    """Code ``batch`` image by image with ``run_single``; the images that fail alone become failed rows."""
    parts = []
    for single in single_batches(batch):
        try:
            parts.append(run_single(single))
        except JOB_ERRORS:
            raise
        except Exception as exc:
            parts.append(failed_marker(ctx, single, failure_reason(exc)))
    return merged_marker(ctx, batch, parts)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, PoisonInputError):
        return str(exc)
    if type(exc).__name__ == "KilledWorker":
        return f"worker processes kept dying on this image (poison input): {exc}"
    return f"failed on its own, as a single-image task ({type(exc).__name__}: {exc})"
