"""Entry point: builds the parser from each command module and maps errors to exit codes.

Exit codes: 0 success; 1 an error (one line naming the path or value and what to do);
2 bad command-line usage (with the command's usage); 3 partial (a job finished but some
images failed, verify found damaged streams, decompress skipped damaged ones). Output cut
short by a closed pipe (``vaeflow ls OUT.zarr | head``) ends quietly with 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from vaeflow.cli import evaluate, files, messages, models, samples, tools
from vaeflow.cli.messages import error_line
from vaeflow.cli.parsing import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    VERBOSITY,
    Parser,
    UsageError,
    add_verbosity,
    finish_parser,
)  # fmt: skip
from vaeflow.foundations.errors import VaeflowError
from vaeflow.foundations.resources import vaeflow_version

# `train` and `bench` come from the benchmarks and training packages, through entry points (cli/tools.py)
COMMAND_MODULES = (samples, files, models, *tools.TOOL_COMMANDS, evaluate)
LATE_POSITIONALS = ("dst",)  # optional positionals that may also come after the options


def build_parser() -> Parser:
    parser = Parser(prog="vaeflow", description="Learned latent codec for image datasets.", epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"vaeflow {vaeflow_version()}")
    add_verbosity(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(commands)
    tools.register_others(commands)
    finish_parser(parser)
    return parser


DASK_LOGGERS = ("distributed", "distributed.client", "distributed.worker", "distributed.nanny",
                "distributed.scheduler", "distributed.core", "bokeh", "tornado", "tornado.application")  # fmt: skip


def quiet_dask() -> None:
    """Dask's own logs (worker tracebacks, lost connections) only with -v: vaeflow says what happened.

    Worker processes read the environment when they start, before any config reaches them, so
    their loggers are quietened there too.
    """
    import dask  # its config only (light), before distributed is imported by any command; workers inherit it

    dask.config.set({"logging": dict.fromkeys(DASK_LOGGERS, "critical")})
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    os.environ.setdefault("DASK_LOGGING__TORNADO", "critical")
    os.environ.setdefault("DASK_LOGGING__BOKEH", "critical")


def parse(parser: Parser, argv: list[str] | None) -> Any:
    """Parse, letting an optional output path come after the options (``compress SRC --opt DST``)."""
    args, extra = parser.parse_known_args(argv)
    command_parser = getattr(args, "command_parser", parser)
    for token in list(extra):
        slot = next((name for name in LATE_POSITIONALS if getattr(args, name, "") is None), None)
        if slot is None or token.startswith("-"):
            break
        convert = next((a.type for a in command_parser._actions if a.dest == slot), None)
        setattr(args, slot, convert(token) if callable(convert) else token)  # a URL stays a string
        extra.remove(token)
    forwards = getattr(args, "forwards", None) if getattr(args, "takes_extra", False) else None
    if forwards is not None:  # a command that passes what follows its name on (a benchmark with its own options)
        tokens = list(sys.argv[1:] if argv is None else argv)
        at = tokens.index(forwards)  # no option before the name takes a value, so this is the name
        parser.parse_args(tokens[: at + 1])  # an unknown option before it is an error
        args.args = [token for token in tokens[at + 1 :] if token not in VERBOSITY]  # -v and -q stay vaeflow's
    elif extra:
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


@contextlib.contextmanager
def quietened(quiet: bool) -> Iterator[None]:
    """With -q, what commands print on stderr (notes, the dashboard link) goes nowhere; errors are
    printed afterwards, on the real stderr."""
    if not quiet:
        yield
        return
    os.environ["VAEFLOW_PROGRESS"] = "0"
    messages.ERRORS.append(sys.stderr)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink):
            yield
    except SystemExit as exc:  # a parser of a forwarded command (vaeflow bench NAME) refused its arguments
        if exc.code not in (0, None):
            messages.ERRORS[-1].write(sink.getvalue()[-4096:])
        raise
    finally:
        messages.ERRORS.pop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    verbose, quiet = int(getattr(args, "verbose", 0) or 0), bool(getattr(args, "quiet", False))
    args.verbose, args.quiet = verbose, quiet and not verbose
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:  # Dask's loggers log at INFO; show them with -v only
        handler.setLevel(level)
    if not verbose:
        quiet_dask()
    try:
        with quietened(args.quiet):
            code = int(args.run(args) or EXIT_OK)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except UsageError as exc:
        args.command_parser.print_usage(sys.stderr)
        print(f"{args.command_parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (VaeflowError, ValueError, OSError, ImportError) as exc:
        return _failed(exc, verbose)
    except KeyboardInterrupt:
        print("vaeflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, and how to see more
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else "; run again with -v for the traceback"
        print(f"vaeflow: internal error: {type(exc).__name__}: {error_line(exc)}{hint}", file=sys.stderr)
        return EXIT_ERROR


def _failed(exc: BaseException, verbose: int) -> int:
    if verbose:
        traceback.print_exc()
    print(f"vaeflow: error: {error_line(exc)}", file=sys.stderr)
    return EXIT_ERROR


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop quietly, and keep Python from complaining at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK
