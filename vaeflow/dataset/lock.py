"""One writer per store: a lock file that a crashed job does not leave stuck.

``STORE/.vaeflow.lock`` holds the owner's host, pid and a heartbeat time refreshed every
few seconds while the job runs. Another job is refused while the owner lives; the lock is
taken over when its process is gone (same host) or its heartbeat is older than
``STALE_AFTER`` seconds (any host). The lock file is created with its content in one step,
and takeovers pass one at a time through ``.vaeflow.lock.breaker``.
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

from vaeflow.dataset.layout import LAYOUT
from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.errors import VaeflowError

LOCK_NAME = LAYOUT.lock
HEARTBEAT_EVERY = 5.0
STALE_AFTER = 60.0
EMPTY_STALE_AFTER = 10.0  # an empty lock file older than this was left by a crash
BREAKER_STALE_AFTER = 30.0


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
        self._created = False

    def _record(self) -> str:
        return json.dumps({**self._owner, "heartbeat": time.time()})

    def _create(self) -> bool:
        """Create the lock file with its content in one step (a hard link); False if it exists."""
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(self._record())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: create exclusively, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(self._record())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _refresh(self) -> None:
        atomic_write(self.path, self._record())  # a replace: the lock path never disappears

    def _stale(self, raw: bytes) -> bool:
        """Whether the lock whose content is ``raw`` may be taken over; raises while its owner lives."""
        if not raw:  # being written (file systems without hard links), or left so by a crash
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            if age > EMPTY_STALE_AFTER:
                return True
            raise StoreLockedError(f"{self.path.parent} is being locked by another job")
        try:
            held = json.loads(raw)
            pid, heartbeat = int(held.get("pid", -1)), float(held.get("heartbeat", 0))
        except (ValueError, TypeError, AttributeError):
            return True  # unreadable: nobody can be heartbeating it
        if held.get("host") == self._owner["host"] and not _alive(pid):
            return True
        if time.time() - heartbeat > STALE_AFTER:
            return True
        raise StoreLockedError(
            f"{self.path.parent} is being written by process {held.get('pid')} on {held.get('host')}; "
            f"wait for it, or remove {self.path} if that job is gone (it expires {STALE_AFTER:.0f} s after "
            "its last heartbeat)"
        )

    def acquire(self) -> None:
        self._created = not self.path.parent.exists()  # a job that fails before writing leaves no folder
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            self._take_over()
        self._thread = threading.Thread(target=self._beat, name="vaeflow-lock", daemon=True)
        self._thread.start()

    def _take_over(self) -> None:
        """Replace a stale lock. Takeovers go one at a time through a breaker file, and the lock is
        judged again under it, so of jobs racing for a stale lock exactly one gets it."""
        breaker = self.path.with_name(LAYOUT.lock_breaker)
        if not self._claim(breaker):
            raise StoreLockedError(f"{self.path.parent} is being taken over by another job")
        try:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                raw = b"{}"  # released meanwhile: free to take
            self._stale(raw)
            self._refresh()  # an atomic replace: the lock path never disappears
        finally:
            breaker.unlink(missing_ok=True)

    @staticmethod
    def _claim(breaker: Path) -> bool:
        for _ in range(2):
            try:
                os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return True
            except FileExistsError:
                try:
                    age = time.time() - breaker.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age <= BREAKER_STALE_AFTER:
                    return False
                breaker.unlink(missing_ok=True)  # left by a job that died while taking over
        return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            with contextlib.suppress(OSError):  # a full disk must not stop the heartbeat; the job reports it
                self._refresh()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.path.unlink(missing_ok=True)
        if self._created:
            with contextlib.suppress(OSError):  # kept when anything was written into it
                self.path.parent.rmdir()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
