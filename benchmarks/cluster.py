"""A real Dask cluster of processes: a ``dask scheduler`` and ``dask worker`` processes, the workers in a
working directory of their own (so that relative paths would betray themselves). Used by the reliability
tests and ``vaeflow bench chaos``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class ProcessCluster:
    """Started on construction; ``kill_scheduler`` is SIGKILL of the scheduler, ``close`` of everything."""

    def __init__(self, root: Path, workers: int = 2, prefix: list[str] | None = None) -> None:
        self.root = root
        self.file = root / f"scheduler-{time.monotonic_ns()}.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        self.scheduler = subprocess.Popen(
            [*dask, "--scheduler-file", str(self.file), "--port", "0", "--no-dashboard"],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]
        elsewhere = root / "workers-cwd"
        elsewhere.mkdir(exist_ok=True)
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", str(workers),
                  "--nthreads", "1", "--no-dashboard"]  # fmt: skip
        self.workers = subprocess.Popen(
            [*(prefix or []), *worker], cwd=elsewhere, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=120)

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def close(self) -> None:
        self.scheduler.kill()
        self.scheduler.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.workers.pid, signal.SIGKILL)
        self.workers.wait()
