"""Commands that other packages add to ``vaeflow``: ``vaeflow bench`` and ``vaeflow train``.

The command line imports none of them by name; it finds them as dask's finds ``dask_cli``
commands. A package registers a command under the ``vaeflow.commands`` entry-point group,
``NAME = "package.module:register"``, where ``register(commands)`` adds the ``NAME`` subcommand
to vaeflow's subcommands, as each of vaeflow's own command modules does. This project's
``benchmarks`` and ``training`` packages (beside ``vaeflow/`` in a source checkout, installed
by ``pip install -e .``) register ``bench`` and ``train`` in ``pyproject.toml``, and load what a
command runs only when it runs, through :func:`load`, which says what to install when a package
it needs is missing.

The commands of :data:`TOOL_COMMANDS` keep their place in ``vaeflow --help`` when their entry
point is missing or cannot be loaded: ``vaeflow bench ...`` then fails with one line saying
what to install.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, NoReturn

from vaeflow.foundations.errors import VaeflowError

GROUP = "vaeflow.commands"


@functools.cache
def discovered() -> dict[str, EntryPoint]:
    """The installed distributions' commands, by name."""
    return {entry.name: entry for entry in entry_points(group=GROUP)}


@dataclass(frozen=True)
class ToolCommand:
    """A command that this project's tools register, with what to install when they are absent."""

    name: str
    help: str
    package: str  # the source checkout's folder that registers it
    extra: str

    def register(self, commands: Any) -> None:
        install = f"clone the repository and run `pip install -e '.[{self.extra}]'` in it"
        missing = (
            f"`vaeflow {self.name}` comes with the {self.package}/ package of a source checkout of vaeflow, "
            f"which is not installed here: {install}"
        )
        add(commands, self.name, discovered().get(self.name), self.help, missing, self.extra)


TOOL_COMMANDS = (
    ToolCommand("train", "train and export the default f8c4 model (needs torch)", "training", "train"),
    ToolCommand("bench", "benchmarks that print figures against same-run baselines", "benchmarks", "dev"),
)


def register_others(commands: Any) -> None:
    """The commands that other installed distributions register, after vaeflow's own."""
    for name, entry in sorted(discovered().items()):
        if name not in commands.choices:
            missing = f"`vaeflow {name}` comes with {entry.module.split('.')[0]}, which is not installed here"
            add(commands, name, entry, f"(from {entry.value})", missing, "")


def add(commands: Any, name: str, entry: EntryPoint | None, help: str, missing: str, extra: str) -> None:
    """Register ``name`` from its entry point or, where it is missing or cannot be loaded, a command
    that takes any arguments and fails saying why and what to install."""
    if entry is None:
        return _unavailable(commands, name, help, VaeflowError(missing))
    try:
        register = entry.load()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == entry.module.split(".")[0]:
            return _unavailable(commands, name, help, VaeflowError(missing), exc)
        hint = f": run `pip install -e '.[{extra}]'`" if extra else ""
        return _unavailable(commands, name, help, VaeflowError(f"`vaeflow {name}` needs {exc.name}{hint}"), exc)
    except Exception as exc:  # a broken tool must not break the other commands
        error = VaeflowError(f"`vaeflow {name}` could not be loaded from {entry.value}: {type(exc).__name__}: {exc}")
        return _unavailable(commands, name, help, error, exc)
    register(commands)


def _unavailable(commands: Any, name: str, help: str, error: VaeflowError, cause: BaseException | None = None) -> None:
    parser = commands.add_parser(name, help=f"{help} (not installed)", description=str(error), add_help=False)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(run=functools.partial(_fail, error, cause), takes_extra=True, forwards=name)


def _fail(error: VaeflowError, cause: BaseException | None, args: argparse.Namespace) -> NoReturn:
    raise error from cause


def load(module: str, extra: str) -> ModuleType:
    """A tool's ``module`` (``benchmarks.codec``), imported when its command runs; where a package it
    needs is missing, one line saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in (module.split(".")[0], "vaeflow"):
            raise VaeflowError(f"{module} needs {exc.name}: run `pip install -e '.[{extra}]'`") from exc
        raise
