"""compress / decompress / info / ls: single images (.vfl streams) and whole folders (stores)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import vaeflow
from vaeflow.cli.options import add_codec_options, add_runtime_options, runtime_from
from vaeflow.codec.api import rate_target
from vaeflow.dataset.decompress import decompress_store
from vaeflow.dataset.job import compress_dataset, job_codec, plan_job
from vaeflow.dataset.location import is_url
from vaeflow.dataset.options import ClusterOptions, JobOptions
from vaeflow.dataset.upload import staging_dir
from vaeflow.dataset.verify import verify_store
from vaeflow.imageio import DEFAULT_MAX_PIXELS, load_image, write_png
from vaeflow.reports.trace import write_trace
from vaeflow.timing import StageTimer

STREAM_SUFFIX = ".vfl"
EXIT_SOME_FAILED = 3


def register(commands: Any) -> None:
    p = commands.add_parser(
        "compress", help="compress a folder of images into a zarr store (or one image to a .vfl stream)"
    )
    p.add_argument("src", type=Path, help="folder of images (searched recursively), or one image file")
    p.add_argument("dst", nargs="?", help="output store (OUT.zarr or s3://bucket/OUT.zarr), or .vfl file for one image")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="storage_options",
        help="for a store on object storage: an fsspec option (endpoint_url=..., anon=true); repeatable",
    )
    p.add_argument("--staging", type=Path, default=None,
                   help="for a store on object storage: the local folder written before the upload")  # fmt: skip
    add_codec_options(p)
    add_runtime_options(p)
    job = p.add_argument_group("dataset job")
    job.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    job.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    job.add_argument("--threads-per-worker", type=int, default=1)
    job.add_argument("--memory-limit", default="auto", help="per worker, e.g. 4GB")
    job.add_argument("--scheduler", default=None, help="'sync' to run in-process, or tcp://host:port of a cluster")
    job.add_argument("--batch-size", type=int, default=8, help="images per VAE run (same padded shape)")
    job.add_argument("--overwrite", action="store_true", help="replace a store written with other settings")
    job.add_argument("--add", action="store_true", help="append new files to a finished store")
    job.add_argument(
        "--buckets",
        type=int,
        default=None,
        metavar="SIDE",
        help="resize and centre-crop each image to the aspect-ratio bucket of about SIDE x SIDE pixels "
        "nearest its own (sides multiples of 64, 1:4 to 4:1; --dry-run lists them)",
    )
    job.add_argument("--fuse-stages", action="store_true",
                     help="run each batch's stages in one task, in memory (same bytes, no work store)")  # fmt: skip
    job.add_argument("--retry-failed", action="store_true", help="code again the images the store records as failed")
    job.add_argument("--no-resume", action="store_true", help="start over instead of resuming an interrupted run")
    job.add_argument("--keep-intermediates", action="store_true", help="keep the work store (_work) for inspection")
    job.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    job.add_argument("--no-progress", action="store_true")
    job.add_argument("--report", type=Path, default=None, help="save Dask's performance report (HTML) of the job")
    p.add_argument("--trace", type=Path, default=None, help="write a Chrome trace-event file of every stage")
    p.add_argument("--target-bpp", type=float, default=None, help="search each image's step for this bpp")
    p.add_argument("--target-psnr", type=float, default=None, help="search each image's step for this PSNR")
    p.set_defaults(run=run_compress)

    p = commands.add_parser("decompress", help="decode a store into PNG files (or a .vfl stream into a PNG)")
    p.add_argument("src", type=Path, help="store or .vfl file")
    p.add_argument("dst", type=Path, nargs="?", help="destination folder (store) or PNG file (stream)")
    p.add_argument("--names", nargs="*", default=None, help="only these stored names")
    p.add_argument("--scheduler", default="sync", help="'sync' (default) or tcp://host:port to decode on a cluster")
    p.add_argument("--overwrite", action="store_true", help="replace PNG files that exist in the destination")
    add_runtime_options(p)
    p.set_defaults(run=run_decompress)

    p = commands.add_parser("info", help="summarise a store, or describe a .vfl stream")
    p.add_argument("src", type=Path)
    p.set_defaults(run=run_info)

    p = commands.add_parser("verify", help="check every stream's checksums in a store, without decoding")
    p.add_argument("store", type=Path)
    p.set_defaults(run=run_verify)

    p = commands.add_parser("ls", help="list a store's images with their sizes")
    p.add_argument("store", type=Path)
    p.add_argument("--failed", action="store_true", help="list the failed images with their reasons")
    p.set_defaults(run=run_ls)


def storage_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec options; values are read as JSON where they parse (true, 3, {...})."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run_compress(args: argparse.Namespace) -> int:
    if args.src.is_file():
        args.dst = Path(args.dst) if args.dst is not None else None
        return _compress_file(args)
    if args.dst is None:
        raise ValueError("compressing a folder needs an output store path, e.g. OUT.zarr")
    store: str | Path = args.dst if is_url(args.dst) else Path(args.dst)
    options = JobOptions(
        batch_size=args.batch_size, overwrite=args.overwrite, add=args.add, retry_failed=args.retry_failed,
        buckets=args.buckets, fuse_stages=args.fuse_stages,
        keep_intermediates=args.keep_intermediates, max_pixels=args.max_pixels,
        progress=not args.no_progress, runtime=runtime_from(args),
    )  # fmt: skip
    cluster = ClusterOptions(
        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit, performance_report=str(args.report) if args.report else None,
    )  # fmt: skip
    target = rate_target(args.target_bpp, args.target_psnr)  # the preset, each image's step searched
    if args.dry_run:
        local = args.staging or staging_dir(args.dst) if is_url(args.dst) else Path(args.dst)
        codec, preset, options = job_codec(Path(local), args.model, args.quality, args.pipeline, target, options)
        print(plan_job(args.src, Path(local), codec, preset, options, not args.no_resume))
        return 0
    report = compress_dataset(
        args.src, store, model=args.model, quality=args.quality, pipeline=args.pipeline, target=target,
        resume=not args.no_resume, options=options, cluster=cluster,
        storage_options=storage_options(args.storage_options), staging=args.staging,
    )  # fmt: skip
    print(report)
    if args.trace:
        print(f"trace of {len(report.spans)} task spans in {write_trace(report.spans, args.trace)}")
    return 0 if report.ok else EXIT_SOME_FAILED


def _compress_file(args: argparse.Namespace) -> int:
    loaded = load_image(args.src, args.max_pixels)
    timer = StageTimer()
    data = vaeflow.compress(
        loaded.pixels, model=args.model, quality=args.quality, pipeline=args.pipeline, runtime=runtime_from(args),
        timer=timer, target_bpp=args.target_bpp, target_psnr=args.target_psnr,
    )  # fmt: skip
    dst = args.dst or args.src.with_suffix(STREAM_SUFFIX)
    dst.write_bytes(data)
    meta = vaeflow.info(data)
    notes = f" ({'; '.join(loaded.notes)})" if loaded.notes else ""
    target = meta.get("target")
    reached = f", {target['kind']} {target['achieved']:.3f} for target {target['value']:g}" if target else ""
    print(f"{args.src} -> {dst}: {len(data)} bytes, {meta['bpp']:.3f} bpp{reached}{notes}")
    if args.trace:
        write_trace(timer.spans, args.trace)
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    if args.src.is_file():
        image = vaeflow.decompress(args.src.read_bytes(), runtime=runtime_from(args))
        dst = args.dst or args.src.with_suffix(".png")
        write_png(dst, image)
        print(f"{args.src} -> {dst}: {image.shape[1]}x{image.shape[0]}")
        return 0
    if args.dst is None:
        raise ValueError("decompressing a store needs a destination folder")
    store, dst = args.src.absolute(), args.dst.absolute()  # workers elsewhere see the same absolute paths
    if args.scheduler == "sync":
        report = decompress_store(store, dst, args.names, runtime_from(args), overwrite=args.overwrite)
    else:
        # Dask only when decoding on a cluster
        from vaeflow.dataset.distributed import check_shared_paths, client_mapper, cluster_client

        with cluster_client(None, ClusterOptions(scheduler=args.scheduler)) as (client, _, _):
            dst.mkdir(parents=True, exist_ok=True)
            check_shared_paths(client, [store, dst], dst)
            mapper = client_mapper(client, "decode")
            report = decompress_store(store, dst, args.names, runtime_from(args), run=mapper, overwrite=args.overwrite)
    print(f"{args.src} -> {args.dst}: {len(report.written)} PNG files")
    for name, reason in report.damaged:
        print(f"vaeflow: damaged stream {name!r} not written: {reason}", file=sys.stderr)
    return 0 if report.ok else EXIT_SOME_FAILED


def run_info(args: argparse.Namespace) -> int:
    summary = vaeflow.open_store(args.src).summary() if args.src.is_dir() else vaeflow.info(args.src.read_bytes())
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run_ls(args: argparse.Namespace) -> int:
    store = vaeflow.open_store(args.store)
    if args.failed:
        for failure in store.failures:
            print(f"{failure.path}\t{failure.reason}")
        for path, reason in store.skipped:
            print(f"{path}\tskipped: {reason}", file=sys.stderr)
        return 0
    for name, (h, w), nbytes, bpp in store.entries():
        print(f"{name}\t{w}x{h}\t{nbytes}\t{bpp:.4f}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    report = verify_store(args.store)
    print(report)
    return 0 if report.ok else EXIT_SOME_FAILED
