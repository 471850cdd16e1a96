"""compress / decompress / info for single images and streams (``.vfl`` files)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import vaeflow
from vaeflow.cli.options import add_codec_options, add_runtime_options, runtime_from
from vaeflow.imageio import load_image, write_png

STREAM_SUFFIX = ".vfl"


def register(commands: Any) -> None:
    p = commands.add_parser("compress", help="compress an image to a .vfl stream")
    p.add_argument("src", type=Path, help="image file")
    p.add_argument("dst", type=Path, nargs="?", help=f"output (default: SRC with {STREAM_SUFFIX})")
    add_codec_options(p)
    add_runtime_options(p)
    p.set_defaults(run=run_compress)

    p = commands.add_parser("decompress", help="decode a .vfl stream to a PNG")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path, nargs="?", help="output PNG (default: SRC with .png)")
    add_runtime_options(p)
    p.set_defaults(run=run_decompress)

    p = commands.add_parser("info", help="describe a .vfl stream")
    p.add_argument("src", type=Path)
    p.set_defaults(run=run_info)


def run_compress(args: argparse.Namespace) -> int:
    loaded = load_image(args.src)
    data = vaeflow.compress(
        loaded.pixels, model=args.model, quality=args.quality, pipeline=args.pipeline, runtime=runtime_from(args)
    )
    dst = args.dst or args.src.with_suffix(STREAM_SUFFIX)
    dst.write_bytes(data)
    meta = vaeflow.info(data)
    notes = f" ({'; '.join(loaded.notes)})" if loaded.notes else ""
    print(f"{args.src} -> {dst}: {len(data)} bytes, {meta['bpp']:.3f} bpp{notes}")
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    image = vaeflow.decompress(args.src.read_bytes(), runtime=runtime_from(args))
    dst = args.dst or args.src.with_suffix(".png")
    write_png(dst, image)
    print(f"{args.src} -> {dst}: {image.shape[1]}x{image.shape[0]}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    print(json.dumps(vaeflow.info(args.src.read_bytes()), indent=2, default=str))
    return 0
