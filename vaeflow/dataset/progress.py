"""The job's progress bar: images done and failed, and images per second (on a terminal or in a notebook)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vaeflow.dataset.layout import BatchMarker
from vaeflow.dataset.plan import Plan
from vaeflow.foundations.progressbar import progress_bar


@contextmanager
def progress(plan: Plan, enabled: bool) -> Iterator[Callable[[BatchMarker], None]]:
    """A callback to give each finished batch's marker; a bar when ``enabled``."""
    if not enabled:
        yield lambda marker: None
        return
    failed = len(plan.failed_at_scan)
    done = [0, failed]
    started = time.perf_counter()
    with progress_bar(total=len(plan.items) + failed, unit="img", desc="compress", initial=failed) as bar:

        def advance(marker: BatchMarker) -> None:
            done[0] += len(marker.items) - marker.failed
            done[1] += marker.failed
            rate = done[0] / max(1e-9, time.perf_counter() - started)
            bar.set_postfix(done=done[0], failed=done[1], img_s=f"{rate:.2f}", refresh=False)
            bar.update(len(marker.items))

        yield advance
