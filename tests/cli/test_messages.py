"""How errors read: the OS's errors as the path and what to do, never an errno or a second line."""

from __future__ import annotations

import errno
import os

import pytest

from vaeflow.cli.messages import error_line, escaped
from vaeflow.foundations.errors import StoreWriteError


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "in/a.png"), "in/a.png: no such file or folder"),
        (FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), "out.zarr"), "out.zarr already exists; choose"),
        (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "out"), "out is a folder, where a file"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "s.zarr"), "s.zarr: no space left on the device: free"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/ro"), "/ro: permission denied: choose"),
        (StoreWriteError("writing s.zarr failed: [Errno 28] No space left on device.\nRun again."), "failed: No space"),
    ],
    ids=["ENOENT", "EEXIST", "EISDIR", "ENOSPC", "EACCES", "store"],
)
def test_errors_read_as_one_line_with_the_path(error: BaseException, says: str) -> None:
    line = error_line(error)
    assert says in line and "[Errno" not in line and "\n" not in line


def test_names_are_escaped_for_one_line() -> None:
    assert escaped("a\tb\nc\\d\x1be\u0085") == "a\\tb\\nc\\\\d\\x1be\\x85"
    assert escaped("plain ünïcode.png") == "plain ünïcode.png"
