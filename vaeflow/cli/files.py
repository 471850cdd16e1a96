"""compress / decompress / info / ls: single images (.vfl streams) and whole folders (stores)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import vaeflow
from vaeflow.cli.messages import error, escaped, note, one_line, print_json
from vaeflow.cli.options import add_codec_options, add_runtime_options, runtime_from
from vaeflow.cli.parsing import (
    EXIT_PARTIAL,
    UsageError,
    fraction,
    memory_limit,
    positive_float,
    positive_int,
    scheduler,
)
from vaeflow.codec.api import rate_target, resolve_codec
from vaeflow.dataset.decompress import decompress_store
from vaeflow.dataset.job import compress_dataset, job_codec, job_source, plan_job
from vaeflow.dataset.location import is_url, read_url
from vaeflow.dataset.options import ClusterOptions, JobOptions, SourceOptions
from vaeflow.dataset.sources import IMAGE_COLUMNS, SOURCE_FORMATS, split_glob
from vaeflow.dataset.upload import check_writable, staging_dir
from vaeflow.dataset.verify import verify_store
from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.errors import VaeflowError
from vaeflow.foundations.imageio import DEFAULT_MAX_PIXELS, load_image, write_png
from vaeflow.foundations.progressbar import progress_bar
from vaeflow.foundations.timing import StageTimer
from vaeflow.reports.trace import write_trace
from vaeflow.stages.target import DEFAULT_VERIFY_FRACTION, VERIFY

STREAM_SUFFIX = ".vfl"


def register(commands: Any) -> None:
    p = commands.add_parser(
        "compress",
        help="compress a folder of images into a zarr store (or one image to a .vfl stream)",
        description="Compress every image under SRC into the zarr store DST (a dataset job), or one image "
        "file SRC into the stream file DST (.vfl; default: SRC with .vfl). Rerunning a finished store does "
        "nothing; an interrupted one resumes.",
    )
    p.add_argument("src", type=location, metavar="SRC", help="folder of images (searched recursively), of webdataset "
                   ".tar shards or of .parquet files, or such a prefix on object storage (s3://bucket/shards/); or "
                   "one image file")  # fmt: skip
    p.add_argument("dst", nargs="?", metavar="DST",
                   help="output store (OUT.zarr, s3://bucket/OUT.zarr); a .vfl file for one image")  # fmt: skip
    add_storage_option(p)
    p.add_argument("--staging", type=Path, default=None,
                   help="for a store on object storage: the local folder written before the upload")  # fmt: skip
    add_codec_options(p)
    add_runtime_options(p)
    job = p.add_argument_group("dataset job")
    job.add_argument("--dry-run", action="store_true", help="print the plan and stop; nothing is written")
    job.add_argument("--workers", type=positive_int, default=None,
                     help="local worker processes (default: one per core)")  # fmt: skip
    job.add_argument("--threads-per-worker", type=positive_int, default=1, help="Dask threads in each worker")
    job.add_argument("--memory-limit", type=memory_limit, default="auto",
                     help="per worker: 'auto', a size such as 4GB, or a fraction of memory such as 0.5")  # fmt: skip
    job.add_argument("--scheduler", type=scheduler, default=None,
                     help="'sync' to run in-process, or tcp://host:port of a running Dask scheduler "
                          "(default: a new local cluster)")  # fmt: skip
    job.add_argument("--batch-size", type=positive_int, default=8, help="images per VAE run (same padded shape)")
    job.add_argument("--overwrite", action="store_true",
                     help="replace a store written with other settings (or an existing .vfl file)")  # fmt: skip
    job.add_argument("--add", action="store_true", help="append new files to a finished store")
    job.add_argument(
        "--buckets",
        type=int,
        default=None,
        metavar="SIDE",
        help="resize and centre-crop each image to the aspect-ratio bucket of about SIDE x SIDE pixels "
        "nearest its own (sides multiples of 64, 1:4 to 4:1; --dry-run lists them)",
    )
    job.add_argument("--fuse-stages", action=argparse.BooleanOptionalAction, default=True,
                     help="run each batch's stages in one task, in memory (the default); --no-fuse-stages runs "
                     "one task per stage through the zarr work store (the same bytes)")  # fmt: skip
    job.add_argument("--source-format", choices=SOURCE_FORMATS, default=None,
                     help="how SRC holds its images: image files, webdataset .tar shards or .parquet files (default: "
                     "found from its files)")  # fmt: skip
    job.add_argument(
        "--image-column",
        default=None,
        metavar="NAME",
        help=f"parquet: the column of encoded images (default: the first of {', '.join(IMAGE_COLUMNS)})",
    )
    job.add_argument("--caption-column", default=None, metavar="NAME",
                     help="parquet: the caption column (default: caption, else text); other columns without binary "
                     "data are the metadata")  # fmt: skip
    job.add_argument("--retry-failed", action="store_true", help="code again the images the store records as failed")
    job.add_argument("--no-resume", action="store_true", help="start over instead of resuming an interrupted run")
    job.add_argument("--keep-intermediates", action="store_true", help="keep the work store (_work) for inspection")
    job.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                     help="refuse larger images (decompression bombs)")  # fmt: skip
    job.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")
    job.add_argument("--report", type=Path, default=None, metavar="HTML",
                     help="save Dask's performance report of the job (self-contained HTML)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the job report (or the stream's figures) as JSON")
    p.add_argument("--trace", type=Path, default=None, metavar="JSON",
                   help="write a Chrome trace-event file of every stage")  # fmt: skip
    p.add_argument("--target-bpp", type=positive_float, default=None, help="search each image's step for this bpp")
    p.add_argument("--target-psnr", type=positive_float, default=None, help="search each image's step for this PSNR")
    p.add_argument("--verify", choices=VERIFY, default=None,
                   help="under a PSNR-drop limit (latent-store): decode every image to check its step (all), a sample "
                   "of them, chosen from their names, the rest predicted with the margin they give (sample), or none "
                   "(default: the preset's)")  # fmt: skip
    p.add_argument("--verify-fraction", type=fraction, default=None, metavar="F",
                   help="with --verify sample: the share of images decoded (default: the preset's, "
                   f"{DEFAULT_VERIFY_FRACTION:.4g})")  # fmt: skip
    p.set_defaults(run=run_compress)

    p = commands.add_parser("decompress", help="decode a store into PNG files (or a .vfl stream into a PNG)")
    p.add_argument("src", type=location, metavar="SRC", help="store (a folder or a URL such as s3://bucket/OUT.zarr) "
                   "or .vfl file")  # fmt: skip
    p.add_argument("dst", type=Path, nargs="?", metavar="DST",
                   help="destination folder (store); a PNG file or folder (stream; default SRC with .png)")  # fmt: skip
    p.add_argument("--names", nargs="+", default=None, metavar="NAME", help="only these stored names (default: all)")
    p.add_argument("--scheduler", type=scheduler, default="sync",
                   help="'sync' to decode in-process, or tcp://host:port to decode on a cluster")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace PNG files that exist in the destination")
    add_storage_option(p)
    add_runtime_options(p)
    p.set_defaults(run=run_decompress)

    p = commands.add_parser("info", help="summarise a store, or describe a .vfl stream")
    p.add_argument("src", type=location, metavar="SRC", help="store (a folder or a URL) or .vfl file")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    add_storage_option(p)
    p.set_defaults(run=run_info)

    p = commands.add_parser("verify", help="check every stream's checksums in a store, without decoding")
    p.add_argument("store", type=location, metavar="STORE", help="the store to check (a folder or a URL)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_storage_option(p)
    p.set_defaults(run=run_verify)

    p = commands.add_parser(
        "ls",
        help="list a store's images with their sizes",
        description="One image a line: name, width x height, bytes, bpp, tab-separated under a header. Tabs, "
        "newlines, backslashes and other control characters in names are escaped (\\t, \\n, \\\\, \\xNN); "
        "--json gives names as they are.",
    )
    p.add_argument("store", type=location, metavar="STORE", help="the store to list (a folder or a URL)")
    add_storage_option(p)
    p.add_argument("--failed", action="store_true", help="list the failed images with their reasons instead")
    p.add_argument("--json", action="store_true", help="print a JSON array (names unescaped)")
    p.set_defaults(run=run_ls)


def location(text: str) -> str | Path:
    """A store's place as given on the command line: a URL as it is (``s3://...``), anything else a local path."""
    return text if is_url(text) else Path(text)


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="storage_options",
        help="for a store (or a source) on object storage: an fsspec option (endpoint_url=..., anon=true); repeatable",
    )


def _is_stream(src: str | Path) -> bool:
    """Whether SRC names one stream (a .vfl file, local or at a URL) rather than a store."""
    return src.is_file() if isinstance(src, Path) else str(src).rstrip("/").endswith(STREAM_SUFFIX)


def _stream_bytes(src: str | Path, options: dict[str, Any]) -> bytes:
    return src.read_bytes() if isinstance(src, Path) else read_url(src, options)


def storage_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec options; values are read as JSON where they parse (true, 3, {...})."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _check_source(path: Path, what: str = "a folder of images, or one image file") -> None:
    if not path.exists():
        raise VaeflowError(f"{path} does not exist; give {what}")


def _check_writable_folder(store: Path) -> None:
    """Refuse a local destination this process cannot write (the store, or the folder that would hold it)."""
    existing = next(p for p in (store.absolute(), *store.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VaeflowError(f"cannot write {store}: {existing} is not writable; choose another destination")


def run_compress(args: argparse.Namespace) -> int:
    if isinstance(args.src, Path) and split_glob(args.src)[1] is None:
        _check_source(args.src)
    if isinstance(args.src, Path) and args.src.is_file() and args.src.suffix.lower() not in (".tar", ".parquet"):
        args.dst = Path(args.dst) if args.dst is not None else None
        return _compress_file(args)
    if args.dst is None:
        raise UsageError("compressing a folder needs an output store path, e.g. vaeflow compress SRC OUT.zarr")
    store: str | Path = args.dst if is_url(args.dst) else Path(args.dst)
    if isinstance(store, Path):
        if store.suffix.lower() == STREAM_SUFFIX:
            raise VaeflowError(
                f"{store}: a folder is compressed into a store, not a {STREAM_SUFFIX} stream; give e.g. OUT.zarr"
            )
        if store.exists() and not store.is_dir():
            raise VaeflowError(f"{store} is a file; give a new path for the store, e.g. OUT.zarr")
    options = JobOptions(
        batch_size=args.batch_size, overwrite=args.overwrite, add=args.add, retry_failed=args.retry_failed,
        buckets=args.buckets, fuse_stages=args.fuse_stages,
        keep_intermediates=args.keep_intermediates, max_pixels=args.max_pixels,
        progress=not (args.no_progress or args.quiet), runtime=runtime_from(args),
        source=SourceOptions(args.source_format, args.image_column, args.caption_column),
    )  # fmt: skip
    cluster = ClusterOptions(
        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit, performance_report=str(args.report) if args.report else None,
    )  # fmt: skip
    target = rate_target(args.target_bpp, args.target_psnr)  # the preset, each image's step searched
    if not args.add and not args.retry_failed:
        _check_verify(args)
    if args.dry_run:
        if is_url(args.dst):
            check_writable(args.dst, storage_options(args.storage_options))
        else:
            _check_writable_folder(Path(args.dst))
        local = args.staging or staging_dir(args.dst) if is_url(args.dst) else Path(args.dst)
        codec, preset, options = job_codec(
            Path(local), args.model, args.quality, args.pipeline, target, options, args.verify, args.verify_fraction
        )
        src, options = job_source(args.src, options, storage_options(args.storage_options))
        print(plan_job(src, Path(local), codec, preset, options, not args.no_resume))
        return 0
    report = compress_dataset(
        args.src, store, model=args.model, quality=args.quality, pipeline=args.pipeline, target=target,
        resume=not args.no_resume, options=options, cluster=cluster,
        storage_options=storage_options(args.storage_options), staging=args.staging, verify=args.verify,
        verify_fraction=args.verify_fraction,
    )  # fmt: skip
    if args.trace:
        path = write_trace(report.spans, args.trace)
        if not args.quiet:
            note(f"trace of {len(report.spans)} task spans in {path}")
    if args.json:
        print_json({**messages_plain(report), "ok": report.ok, "mean_bpp": report.mean_bpp})
    elif not args.quiet:
        print(report)
    return 0 if report.ok else EXIT_PARTIAL


def _check_verify(args: argparse.Namespace) -> None:
    """``--verify`` and ``--verify-fraction`` need a PSNR-drop limit, and the fraction the sample policy."""
    if args.verify is None and args.verify_fraction is None:
        return
    target = resolve_codec(
        args.model, args.quality, args.pipeline, rate_target(args.target_bpp, args.target_psnr)
    ).target
    if target is None or target.max_psnr_drop is None:
        raise UsageError(
            f"--verify applies to a PSNR-drop limit, which the {args.pipeline or 'default'} preset has not: "
            "use --pipeline latent-store"
        )
    if args.verify_fraction is not None and (args.verify or target.verify) != "sample":
        raise UsageError("--verify-fraction goes with --verify sample")


def messages_plain(report: Any) -> dict[str, Any]:
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.repr}


def _stream_target(src: Path, dst: Path | None) -> Path:
    """Where one image's stream goes; refuses paths that look like a store or are a folder."""
    if dst is None:
        return src.with_suffix(STREAM_SUFFIX)
    if dst.is_dir():
        raise VaeflowError(
            f"{dst} is a folder, but {src} is one image: give a stream file such as "
            f"{dst / src.with_suffix('.vfl').name}, or a folder of images as SRC to make a store"
        )
    if dst.suffix.lower() == ".zarr":
        raise VaeflowError(
            f"{dst} looks like a store, but {src} is one image: one image goes to a .vfl stream "
            f"(e.g. {src.with_suffix('.vfl').name}); to make a store, give a folder of images as SRC"
        )
    return dst


def _compress_file(args: argparse.Namespace) -> int:
    dst = _stream_target(args.src, args.dst)
    if dst.exists() and not args.overwrite:
        raise VaeflowError(f"{dst} exists; pass --overwrite to replace it, or choose another path")
    if not dst.parent.is_dir():
        raise VaeflowError(f"{dst.parent} is not a folder; make it first, or choose another path for {dst.name}")
    if args.verify_fraction is not None:
        raise UsageError("--verify-fraction is for a folder of images: one image is its own sample")
    _check_verify(args)
    target = rate_target(args.target_bpp, args.target_psnr)
    resolve_codec(args.model, args.quality, args.pipeline, target, args.verify)
    loaded = load_image(args.src, args.max_pixels)
    timer = StageTimer()
    data = vaeflow.compress(
        loaded.pixels, model=args.model, quality=args.quality, pipeline=args.pipeline, runtime=runtime_from(args),
        timer=timer, target_bpp=args.target_bpp, target_psnr=args.target_psnr, verify=args.verify,
    )  # fmt: skip
    atomic_write(dst, data)
    meta = vaeflow.info(data)
    if args.trace:
        write_trace(timer.spans, args.trace)
    if args.json:
        print_json({"src": args.src, "dst": dst, "bytes": len(data), "notes": loaded.notes, "info": meta})
        return 0
    notes = f" ({'; '.join(loaded.notes)})" if loaded.notes else ""
    target = meta.get("target")
    reached = f", {target['kind']} {target['achieved']:.3f} for target {target['value']:g}" if target else ""
    if not args.quiet:
        print(f"{args.src} -> {dst}: {len(data)} bytes, {meta['bpp']:.3f} bpp{reached}{notes}")
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    options = storage_options(args.storage_options)
    if isinstance(args.src, Path):
        _check_source(args.src, "a store (OUT.zarr) or a .vfl stream")
    if _is_stream(args.src):
        return _decompress_file(args, options)
    if args.dst is None:
        raise UsageError("decompressing a store needs a destination folder, e.g. vaeflow decompress OUT.zarr DST_DIR")
    if args.dst.exists() and not args.dst.is_dir():
        raise VaeflowError(f"{args.dst} is a file; give a folder to write the PNG files into")
    reader = vaeflow.open_store(args.src, storage_options=options)  # a clear error before anything is made
    # workers elsewhere see the same absolute paths (and the same URL)
    store, dst = args.src.absolute() if isinstance(args.src, Path) else args.src, args.dst.absolute()
    total = len(args.names) if args.names else len(reader.names)
    with progress_bar(enabled=not args.quiet, total=total, desc="decompress", unit="img") as bar:
        if args.scheduler == "sync":
            report = decompress_store(store, dst, args.names, runtime_from(args), run=_counted(bar, map),
                                      overwrite=args.overwrite, storage_options=options)  # fmt: skip
        else:
            # Dask only when decoding on a cluster
            from vaeflow.dataset.distributed import check_shared_paths, client_mapper, cluster_client

            with cluster_client(None, ClusterOptions(scheduler=args.scheduler)) as (client, _, _):
                dst.mkdir(parents=True, exist_ok=True)
                check_shared_paths(client, [store, dst] if isinstance(store, Path) else [dst], dst)
                mapper = _counted(bar, client_mapper(client, "decode"))
                report = decompress_store(store, dst, args.names, runtime_from(args), run=mapper,
                                          overwrite=args.overwrite, storage_options=options)  # fmt: skip
    if not args.quiet:
        print(f"{args.src} -> {args.dst}: {len(report.written)} PNG files")
    for name, reason in report.damaged:
        error(f"vaeflow: damaged stream '{escaped(name)}' not written: {one_line(reason)}")
    for name, reason in report.skipped:
        error(f"vaeflow: '{escaped(name)}' skipped: {one_line(reason)}")
    return 0 if report.ok else EXIT_PARTIAL


def _counted(bar: Any, mapper: Callable[..., Iterable[Any]]) -> Callable[..., Iterator[Any]]:
    """``mapper`` that advances ``bar`` by each finished batch's images."""

    def run(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        for item, result in zip(items, mapper(fn, items), strict=True):
            bar.update(len(item.pairs))
            yield result

    return run


def _decompress_file(args: argparse.Namespace, options: dict[str, Any]) -> int:
    png_name = Path(str(args.src).rstrip("/").rsplit("/", 1)[-1]).with_suffix(".png")
    dst = args.dst or (args.src.with_suffix(".png") if isinstance(args.src, Path) else png_name)
    if dst.is_dir():
        dst = dst / png_name
    if dst.exists() and not args.overwrite:
        raise VaeflowError(f"{dst} exists; pass --overwrite to replace it, or choose another path")
    if not dst.parent.is_dir():
        raise VaeflowError(f"{dst.parent} is not a folder; make it first, or choose another path for {dst.name}")
    image = vaeflow.decompress(_stream_bytes(args.src, options), runtime=runtime_from(args))
    write_png(dst, image)
    if not args.quiet:
        print(f"{args.src} -> {dst}: {image.shape[1]}x{image.shape[0]}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    options = storage_options(args.storage_options)
    if isinstance(args.src, Path):
        _check_source(args.src, "a store (OUT.zarr) or a .vfl stream")
    if _is_stream(args.src):
        summary = vaeflow.info(_stream_bytes(args.src, options))
    else:
        summary = vaeflow.open_store(args.src, storage_options=options).summary()
    if args.json:
        print_json(summary)
    else:
        for key, value in summary.items():
            shown = json.dumps(value, default=str) if isinstance(value, dict | list) else value
            print(f"{key}: {shown}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    store = vaeflow.open_store(args.store, storage_options=storage_options(args.storage_options))
    if args.failed:
        failed = [{"path": f.path, "reason": f.reason} for f in store.failures]
        skipped = [{"path": path, "reason": reason} for path, reason in store.skipped]
        if args.json:
            print_json({"failed": failed, "skipped": skipped})
            return 0
        print("path\treason")
        for row in failed:
            print(f"{escaped(row['path'])}\t{one_line(row['reason'])}")
        for row in skipped:
            print(f"{escaped(row['path'])}\tskipped: {one_line(row['reason'])}")
        return 0
    rows: list[dict[str, Any]] = [{"name": name, "width": w, "height": h, "bytes": nbytes, "bpp": bpp}
            for name, (h, w), nbytes, bpp in store.entries()]  # fmt: skip
    if args.json:  # with what a trainer reads beside each latent, and how its PSNR drop was kept
        print_json([{**entry, "caption": store.caption(entry["name"]), "metadata": store.metadata(entry["name"]),
                     "original_size": list(store.original_size(entry["name"])), **_drop_fields(store, entry["name"])}
                    for entry in rows])  # fmt: skip
        return 0
    print("name\tsize\tbytes\tbpp")
    for row in rows:
        print(f"{escaped(row['name'])}\t{row['width']}x{row['height']}\t{row['bytes']}\t{row['bpp']:.4f}")
    return 0


def _drop_fields(store: Any, name: str) -> dict[str, Any]:
    """Under a PSNR-drop limit: the drop measured (None where predicted only), the predicted one, verified."""
    target = store.info(name).get("target") or {}
    if target.get("max_psnr_drop") is None:
        return {}
    keys = ("max_psnr_drop", "psnr_drop", "predicted_psnr_drop", "verified")
    return {k: target.get(k) for k in keys}


def run_verify(args: argparse.Namespace) -> int:
    report = verify_store(args.store, storage_options(args.storage_options))
    if args.json:
        print_json({"store": report.store, "ok": report.ok, "checked": report.checked,
                    "damaged": [{"name": n, "reason": r} for n, r in report.damaged],
                    "bytes_read": report.bytes_read, "seconds": report.seconds})  # fmt: skip
    else:
        print(report)
    return 0 if report.ok else EXIT_PARTIAL
