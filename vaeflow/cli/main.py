"""Entry point: builds the parser from each command module and maps errors to exit codes.

Exit codes: 0 success; 1 an error (the message says what); 2 bad command-line usage;
3 a dataset job finished but some images failed (they are listed in the store).
"""

from __future__ import annotations

import argparse
import logging
import sys

from vaeflow.cli import bench, evaluate, files, models, train
from vaeflow.errors import VaeflowError
from vaeflow.resources import vaeflow_version

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
COMMAND_MODULES = (files, models, train, bench, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaeflow", description="Learned latent codec for image datasets.")
    parser.add_argument("--version", action="version", version=f"vaeflow {vaeflow_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, providers)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


DASK_LOGGERS = ("distributed", "distributed.client", "distributed.worker", "distributed.nanny",
                "distributed.scheduler", "distributed.core", "bokeh", "tornado", "tornado.application")  # fmt: skip


def quiet_dask() -> None:
    """Dask's own logs (worker tracebacks, lost connections) only with -v: vaeflow says what happened."""
    import dask  # its config only (light), before distributed is imported by any command; workers inherit it

    dask.config.set({"logging": dict.fromkeys(DASK_LOGGERS, "critical")})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "bench") and hasattr(args, "args"):
        args.args = [*args.args, *extra]  # a benchmark's own options go to it
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:  # Dask's loggers log at INFO; show them with -v only
        handler.setLevel(level)
    if not args.verbose:
        quiet_dask()
    try:
        return int(args.run(args) or EXIT_OK)
    except (VaeflowError, ValueError, OSError) as exc:
        print(f"vaeflow: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vaeflow: interrupted", file=sys.stderr)
        return 130
