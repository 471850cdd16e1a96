"""``vaeflow bench ...``: benchmarks that print figures against same-run baselines.

Registered under the ``vaeflow.commands`` entry points (``pyproject.toml``); each benchmark's module
is imported only when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vaeflow.cli.parsing import positive_int
from vaeflow.cli.tools import load


def register(commands: Any) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print figures against same-run baselines")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    p = sub.add_parser("codec", help="rate, quality, stage times, coder efficiency, old design")
    p.add_argument("images", type=Path, help="folder of images, e.g. ../shared/data/kodak")
    p.add_argument("--qualities", default="10,30,50,70,90", help="comma-separated vaeflow qualities")
    p.add_argument("--model", default="default", help="registered model")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=run_codec)

    p = sub.add_parser("models", help="VAE time per megapixel against bare ONNX Runtime; 24 MP peak memory")
    p.add_argument("images", type=Path, help="folder of images, e.g. ../shared/data/kodak")
    p.add_argument("--models", default="default", help="comma-separated registered models")
    p.add_argument("--limit", type=positive_int, default=4, help="use only the first N images")
    p.add_argument("--no-big", action="store_true", help="skip the 24-megapixel memory runs")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=run_models)

    p = sub.add_parser("rd", help="BD-rate of each codec refinement, baselines, latent storage, added time")
    p.add_argument("images", type=Path, help="folder of images, e.g. ../shared/data/kodak")
    p.add_argument("--models", default="default:default",
                   help="comma-separated MODEL:PRESET pairs, the preset being the refined pipeline, "
                        "e.g. default:default,taef2:wide-latent")  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images (default: all)")
    p.add_argument("--baselines", default="jpeg,webp,avif", help="comma-separated baselines (as vaeflow eval)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=run_rd)

    p = sub.add_parser("chaos", help="images lost under worker kills, fuzzing, verify speed")
    p.add_argument("images", type=Path, help="folder of source photos, e.g. ../shared/data/photos")
    p.add_argument("--count", type=positive_int, default=60, help="images in the killed job")
    p.add_argument("--decompress-runs", type=positive_int, default=200_000, help="damaged streams to decode")
    p.add_argument("--store-runs", type=positive_int, default=20_000, help="damaged stores to open and verify")
    p.add_argument("--verify-mb", type=positive_int, default=256, help="megabytes of streams to verify")
    p.add_argument("--scheduler-kills", type=positive_int, default=3, help="times the scheduler is killed mid-job")
    p.add_argument("--only-hostile", action="store_true", help="only the hostile inputs (a few minutes)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=run_chaos)

    p = sub.add_parser("diffusers", help="a full-size SDXL-configuration VAE imported, timed against diffusers")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for ONNX Runtime and torch alike")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs of each (the median is reported)")
    p.add_argument("--size", type=positive_int, default=256, help="the photo's side in pixels")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=run_diffusers)

    for name, what in (
        ("loader", "latents/s through a DataLoader against safetensors and webdataset, and bytes"),
        ("scale", "mixed sizes, batch fill, fused stages, a million planned images, GPU workers"),
        ("latents", "latent-store read speed against fp16+zstd zarr and .npy, bytes, encode time, bounds"),
        ("store-write", "the latent-store job under each --verify policy against a trainer's fp16 cache loop"),
        ("training", "a small latent denoiser trained on exact, fp16, stored and coarse latents, evaluated on exact"),
        ("sources", "the same images from a folder, webdataset shards and parquet: streams, job time, planning"),
    ):
        p = sub.add_parser(name, help=what, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER, help=f"see `vaeflow bench {name} --help`")
        p.set_defaults(run=run_forwarded, bench=name.replace("-", "_"), takes_extra=True, forwards=name)

    p = sub.add_parser("dataset", help="dataset job throughput with 1 and 2 workers, overhead, memory")
    p.add_argument("images", type=Path, help="folder of images, e.g. ../shared/data/photos")
    p.add_argument(
        "--copies", type=positive_int, default=4, help="grow the dataset this many times for the memory check"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(run=run_dataset)


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(result, indent=2))


def run_codec(args: argparse.Namespace) -> int:
    codec = load("benchmarks.codec", "dev")
    qualities = [int(q) for q in args.qualities.split(",")]
    result = codec.run(args.images, qualities, args.model, args.limit)
    print(codec.report(result))
    _write_json(args.json, result)
    return 0


def run_models(args: argparse.Namespace) -> int:
    models = load("benchmarks.models", "dev")
    result = models.run(args.images, args.models.split(","), args.limit, big=not args.no_big)
    print(models.report(result))
    _write_json(args.json, result)
    return 0


def run_dataset(args: argparse.Namespace) -> int:
    dataset = load("benchmarks.dataset", "dev")
    result = dataset.run(args.images, args.copies)
    print(dataset.report(result))
    _write_json(args.json, result)
    return 0


def run_rd(args: argparse.Namespace) -> int:
    rd = load("benchmarks.rd", "dev")
    pairs = [tuple(item.split(":", 1)) if ":" in item else (item, "default") for item in args.models.split(",")]
    result = rd.run(args.images, pairs, args.limit, [b for b in args.baselines.split(",") if b])  # type: ignore[arg-type]
    print(rd.report(result))
    _write_json(args.json, result)
    return 0


def run_chaos(args: argparse.Namespace) -> int:
    chaos = load("benchmarks.chaos", "dev")
    if args.only_hostile:
        attacks = chaos.run_hostile(args.images)
        print(chaos.hostile.report(attacks))
        _write_json(args.json, {"hostile": attacks})
        return 0
    result = chaos.run(
        args.images, args.count, args.decompress_runs, args.store_runs, args.verify_mb, args.scheduler_kills
    )
    print(chaos.report(result))
    _write_json(args.json, result)
    return 0


def run_diffusers(args: argparse.Namespace) -> int:
    diffusers = load("benchmarks.diffusers_export", "dev,diffusers")
    result = diffusers.run(args.threads, args.repeats, args.size)
    print(diffusers.report(result))
    _write_json(args.json, result)
    return 0


def run_forwarded(args: argparse.Namespace) -> int:
    """Benchmarks with options of their own (``benchmarks/<name>.py``): their arguments go to them as they are."""
    load(f"benchmarks.{args.bench}", "dev,bench,train").main(args.args)
    return 0
