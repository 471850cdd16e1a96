"""vaeflow eval: rate-distortion against JPEG, WebP and AVIF (and JPEG XL, JPEG 2000), with plots and a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaeflow.cli.messages import note
from vaeflow.cli.parsing import UsageError, positive_int, quality_list, scheduler
from vaeflow.dataset.job import ClusterOptions
from vaeflow.models import load_model
from vaeflow.reports import codecs, results
from vaeflow.reports.evaluation import Variant, evaluate
from vaeflow.reports.html import write_report
from vaeflow.reports.plots import save_rd_plot
from vaeflow.reports.tables import bd_table, crossover_bpp, format_bd_table

QUALITIES = "5,10,20,30,40,50,60,70,80,90,95,100"


def register(commands: Any) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate vaeflow against JPEG, WebP, AVIF (JPEG XL, JPEG 2000): results JSON, RD plot, report",
        description="Every image in SRC through vaeflow and each baseline at each setting: OUT/results.json, "
        "OUT/rd.png and rd.svg, OUT/bd_rate.txt and a self-contained OUT/report.html.",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="folder of images")
    p.add_argument("--model", default="default",
                   help="registered model, or several comma-separated (a curve each, BD-rates between)")  # fmt: skip
    p.add_argument("--pipeline", default=None, help="preset name or TOML file (default: 'default')")
    p.add_argument("--qualities", type=quality_list, default=quality_list(QUALITIES), help="vaeflow's qualities")
    p.add_argument("--baselines", default=",".join(codecs.DEFAULT_BASELINES),
                   help=f"comma-separated, from: {', '.join(codecs.BASELINES)} (jxl needs the baselines extra), "
                        "or empty")  # fmt: skip
    p.add_argument("--baseline-qualities", type=quality_list, default=None,
                   help=f"qualities of the baselines set by one (default: {','.join(map(str, codecs.QUALITIES))}; "
                        "JPEG 2000 runs at compression ratios "
                        f"{','.join(map(str, codecs.BASELINES['jp2'].settings))})")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder (made if needed)")
    p.add_argument("--reuse", action="store_true", help="read OUT/results.json instead of recomputing")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images (default: all)")
    p.add_argument("--crop-image", default=None, help="image for the crop comparison (default: the first)")
    p.add_argument("--scheduler", type=scheduler, default=None,
                   help="'sync', or tcp://host:port (default: a local cluster)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=None, help="local workers (default: one per core)")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    results_path = args.out / "results.json"
    baselines = [b for b in args.baselines.split(",") if b]
    if args.reuse:
        if not results_path.is_file():
            raise UsageError(f"--reuse reads {results_path}, which does not exist: run without --reuse first")
        doc = results.load(results_path)
    else:
        if not args.src.is_dir():
            raise UsageError(f"{args.src} is not a folder of images")
        codecs.check_baselines(baselines)  # before anything runs or is written
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        models = [m for m in args.model.split(",") if m]
        if not models:
            raise UsageError("--model needs a registered model name (`vaeflow models list`)")
        variants = [Variant(f"vaeflow ({load_model(m).name})", args.pipeline, m) for m in models]
        kwargs = dict(model=models[0], pipeline=args.pipeline, baseline_qualities=args.baseline_qualities,
                      limit=args.limit, progress=not args.quiet, variants=variants)  # fmt: skip
        if args.scheduler == "sync":
            doc = evaluate(args.src, args.qualities, baselines, **kwargs)  # type: ignore[arg-type]
        else:
            from vaeflow.dataset.distributed import client_mapper, cluster_client  # Dask only when asked for

            with cluster_client(None, ClusterOptions(scheduler=args.scheduler, workers=args.workers)) as (client, _, _):
                doc = evaluate(args.src, args.qualities, baselines, mapper=client_mapper(client, "eval"), **kwargs)  # type: ignore[arg-type]
        results.save(doc, results_path)
    plots = save_rd_plot(doc, args.out)
    text = format_bd_table(bd_table(doc))
    for vf in (e for e in doc["codecs"] if e["codec"] == "vaeflow"):
        for anchor in doc["codecs"]:
            if anchor["codec"] != "vaeflow":
                cross = crossover_bpp(vf, anchor)
                where = f"from {cross:.3f} bpp" if cross is not None else "nowhere in the common bpp range"
                text += f"\n{vf['name']}'s MS-SSIM is at least {anchor['name']}'s {where}"
    (args.out / "bd_rate.txt").write_text(text + "\n")
    if not args.quiet:
        note("report: matching each codec's bpp for the crops")
    report = write_report(doc, args.out / "report.html", args.model.split(",")[0], args.crop_image, args.pipeline)
    if not args.quiet:
        print(text)
        print(f"results: {results_path}; plots: {', '.join(str(p) for p in plots)}; report: {report}")
    return 0
