"""One writer per store: a lock file that a crashed job does not leave stuck.

``STORE/.vaeflow.lock`` holds the owner's host, pid and a heartbeat time refreshed every
few seconds while the job runs. Another job is refused while the owner lives; the lock is
taken over when its process is gone (same host) or its heartbeat is older than
``STALE_AFTER`` seconds (any host).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

from vaeflow.errors import VaeflowError

LOCK_NAME = ".vaeflow.lock"
HEARTBEAT_EVERY = 5.0
STALE_AFTER = 60.0


class StoreLockedError(VaeflowError):
    """Another job is writing the store."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    def __init__(self, store: Path) -> None:
        self.path = Path(store) / LOCK_NAME
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner = {"host": socket.gethostname(), "pid": os.getpid()}

    def _write(self, exclusive: bool) -> None:
        record = json.dumps({**self._owner, "heartbeat": time.time()})
        if exclusive:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(record)
            return
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}")
        tmp.write_text(record)
        tmp.replace(self.path)

    def _stale(self) -> bool:
        try:
            held = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return True  # unreadable or half-written: nobody can be heartbeating it
        if held.get("host") == self._owner["host"] and not _alive(int(held.get("pid", -1))):
            return True
        if time.time() - float(held.get("heartbeat", 0)) > STALE_AFTER:
            return True
        raise StoreLockedError(
            f"{self.path.parent} is being written by process {held.get('pid')} on {held.get('host')}; "
            f"wait for it, or remove {self.path} if that job is gone (it expires {STALE_AFTER:.0f} s after "
            "its last heartbeat)"
        )

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._write(exclusive=True)
        except FileExistsError:
            if self._stale():
                self._write(exclusive=False)
        self._thread = threading.Thread(target=self._beat, name="vaeflow-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            with contextlib.suppress(OSError):  # a full disk must not stop the heartbeat; the job reports it
                self._write(exclusive=False)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
