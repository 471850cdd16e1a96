"""Command-line options shared by several commands."""

from __future__ import annotations

import argparse

from vaeflow.cli.parsing import positive_int, quality
from vaeflow.models import RuntimeOptions


def add_codec_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("codec")
    group.add_argument("--model", default=None, help="registered model name (default: the preset's, 'default')")
    group.add_argument("--quality", type=quality, default=None,
                       help="1..100, higher is better and larger (default: the preset's, 50)")  # fmt: skip
    group.add_argument("--pipeline", default=None, help="preset name or TOML file (default: 'default')")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="ONNX Runtime intra-op threads (default: the cores shared among workers)")  # fmt: skip
    group.add_argument(
        "--providers",
        "--provider",
        default="CPUExecutionProvider",
        help="comma-separated: cuda[:N] (needs onnxruntime-gpu), cpu, ONNX Runtime names, 'auto' (CUDA if present)",
    )
    group.add_argument("--tile", type=positive_int, default=RuntimeOptions.tile,
                       help="tile size in pixels for large images")  # fmt: skip


def runtime_from(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(threads=args.threads, providers=tuple(args.providers.split(",")), tile=args.tile)
