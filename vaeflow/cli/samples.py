"""vaeflow samples DIR: sample photos to try vaeflow on, from what is installed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaeflow.cli.messages import note
from vaeflow.foundations.samples import SAMPLES, write_samples


def register(commands: Any) -> None:
    listing = "; ".join(f"{name} ({licence})" for name, (_, licence) in SAMPLES.items())
    p = commands.add_parser(
        "samples",
        help="write sample photos (public domain or CC0, shipped with scikit-image) into a folder",
        description=f"Write sample photos as PNG files into DIR, to try vaeflow on: {listing}.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="folder to write them into (made if needed)")
    p.add_argument("--names", nargs="+", choices=list(SAMPLES), default=None, metavar="NAME",
                   help=f"only these samples, from: {', '.join(SAMPLES)} (default: all)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace sample files that exist in DIR")
    p.set_defaults(run=run_samples)


def run_samples(args: argparse.Namespace) -> int:
    written = write_samples(args.dir, args.names, overwrite=args.overwrite)
    for path in written:
        print(path)
    if not args.quiet:
        note(f"{len(written)} sample photos in {args.dir}; next: vaeflow compress {args.dir} OUT.zarr")
    return 0
