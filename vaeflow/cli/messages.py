"""What the command line prints: one-line errors, escaped names, and JSON."""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import sys
from pathlib import Path
from typing import Any

from vaeflow.foundations.display import escaped  # noqa: F401  (the CLI's name for it)

_ERRNO = re.compile(r"\[Errno \d+\]\s*")
_WRITE_HINTS = {
    errno.ENOSPC: "no space left on the device: free some and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded: free some space and run the same command again",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.EACCES: "permission denied: choose a path you may write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you may write, or fix its permissions",
}


def one_line(text: str) -> str:
    """``text`` without errno prefixes, on one line."""
    return " ".join(_ERRNO.sub("", text).split())


def describe_os_error(exc: OSError) -> str:
    """An ``OSError`` as the path it concerns and what to do."""
    where = exc.filename if exc.filename is not None else ""
    if isinstance(exc, FileNotFoundError):
        return f"{where}: no such file or folder; check the path" if where else one_line(str(exc))
    if isinstance(exc, FileExistsError):
        return f"{where} already exists; choose another path, or remove it first"
    if isinstance(exc, IsADirectoryError):
        return f"{where} is a folder, where a file was expected; give a file path"
    if isinstance(exc, NotADirectoryError):
        return f"{where}: part of this path is a file, where a folder was expected"
    if exc.errno in _WRITE_HINTS:
        return f"{where}: {_WRITE_HINTS[exc.errno]}" if where else _WRITE_HINTS[exc.errno]
    reason = exc.strerror or str(exc)
    return one_line(f"{where}: {reason}" if where else reason)


def error_line(exc: BaseException) -> str:
    """The one line an error is reported with."""
    if isinstance(exc, OSError) and not type(exc).__module__.startswith("vaeflow"):
        return describe_os_error(exc)
    return one_line(str(exc)) or type(exc).__name__


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def print_json(value: Any) -> None:
    """``value`` (dataclasses, paths and NaN included) as indented JSON on stdout."""
    print(json.dumps(_plain(value), indent=2, default=str, ensure_ascii=False))


ERRORS: list[Any] = []  # the stream errors go to while -q silences the rest (see main.quietened)


def error(text: str) -> None:
    """An error line on stderr, which -q never silences."""
    print(text, file=ERRORS[-1] if ERRORS else sys.stderr)


def note(text: str) -> None:
    """A note for the person at the terminal (on stderr; silent with -q)."""
    print(text, file=sys.stderr)
