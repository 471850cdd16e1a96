"""The command line's conventions: every parser shows its defaults, suggests the command a typo
meant, takes -v/-q before or after the subcommand, and exits 2 on bad usage with its own usage line."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_CODES = """exit codes:
  0  success
  1  an error: the one-line message names the path or value and what to do (-v adds the traceback)
  2  bad usage: a wrong option or value; the command's usage line is printed
  3  partial: the job finished but some images failed (`vaeflow ls OUT.zarr --failed`), verify found
     damaged streams, or decompress skipped damaged ones"""


class UsageError(Exception):
    """Bad usage found after parsing (a missing output path, say): exit 2 with the command's usage."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default, except where the default is 'not given' (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and not isinstance(default, bool)
        if shown and "%(default)" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors name close matches and exit with ``EXIT_USAGE``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser``, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from subparsers(sub)


VERBOSITY = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})  # as add_verbosity spells them


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v/-q on ``parser`` without defaults, so that one given before the subcommand is kept."""
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="say more: INFO logs, Dask's logs, tracebacks of errors (repeat for DEBUG)")  # fmt: skip
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars, notes or summaries: only errors and the command's data")  # fmt: skip


def finish_parser(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand -v/-q, the exit codes, and a reference to itself for usage errors."""
    for sub in subparsers(parser):
        add_verbosity(sub)
        sub.epilog = sub.epilog or EXIT_CODES
        sub.set_defaults(command_parser=sub)


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def quality(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..100 (higher is better and larger), got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], e.g. 0.05, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """``5,10,20`` -> [5, 10, 20]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, e.g. 5,10,20, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("needs at least one value, e.g. 5,10,20")
    return values


def quality_list(text: str) -> list[int]:
    values = int_list(text)
    wrong = [v for v in values if not 1 <= v <= 100]
    if wrong:
        raise argparse.ArgumentTypeError(f"qualities run from 1 to 100, got {wrong[0]}")
    return values


_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]i?b|b)?\s*$", re.IGNORECASE)


def memory_limit(text: str) -> str:
    """Dask's memory limit per worker: 'auto', a size such as 4GB or 512MiB, or a fraction such as 0.5."""
    if text.strip().lower() == "auto":
        return "auto"
    found = _BYTES.match(text)
    if not found or (found.group(2) is None and float(found.group(1)) <= 0):
        raise argparse.ArgumentTypeError(
            f"must be 'auto', a size such as 4GB or 512MiB, or a fraction of the memory such as 0.5, got {text!r}"
        )
    return text.strip()


_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$|^[\w.-]+:\d+$")


def scheduler(text: str) -> str:
    """'sync', or a Dask scheduler's address (tcp://host:8786, host:8786)."""
    if text == "sync" or _ADDRESS.match(text):
        return text
    raise argparse.ArgumentTypeError(f"must be 'sync' or a scheduler address such as tcp://host:8786, got {text!r}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
