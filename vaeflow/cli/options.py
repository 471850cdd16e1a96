"""Command-line options shared by several commands."""

from __future__ import annotations

import argparse

from vaeflow.models import RuntimeOptions


def add_codec_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("codec")
    group.add_argument("--model", default=None, help="registered model name (default: the preset's, 'default')")
    group.add_argument("--quality", type=int, default=None, help="1..100, higher is better and larger (default 50)")
    group.add_argument("--pipeline", default=None, help="preset name or TOML file (default: 'default')")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    group.add_argument(
        "--providers",
        "--provider",
        default="CPUExecutionProvider",
        help="comma-separated: cuda[:N] (needs onnxruntime-gpu), cpu, ONNX Runtime names, 'auto' (CUDA if present)",
    )
    group.add_argument("--tile", type=int, default=RuntimeOptions.tile, help="tile size in pixels for large images")


def runtime_from(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(threads=args.threads, providers=tuple(args.providers.split(",")), tile=args.tile)
