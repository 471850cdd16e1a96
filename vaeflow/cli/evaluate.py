"""vaeflow eval: rate-distortion against JPEG, WebP and AVIF, with plots and an HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaeflow.dataset.job import ClusterOptions
from vaeflow.reports import results
from vaeflow.reports.evaluate import evaluate
from vaeflow.reports.html import write_report
from vaeflow.reports.plots import save_rd_plot
from vaeflow.reports.tables import bd_table, crossover_bpp, format_bd_table


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def register(commands: Any) -> None:
    p = commands.add_parser("eval", help="evaluate vaeflow against Pillow codecs: results JSON, RD plot, report")
    p.add_argument("src", type=Path, help="folder of images")
    p.add_argument("--model", default="default")
    p.add_argument("--pipeline", default=None)
    p.add_argument("--qualities", type=_ints, default=_ints("5,10,20,30,40,50,60,70,80,90,95"))
    p.add_argument("--baselines", default="jpeg,webp,avif", help="comma-separated: jpeg, webp, avif (or empty)")
    p.add_argument("--baseline-qualities", type=_ints, default=None, help="default 1,5,10,20,...,90")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--reuse", action="store_true", help="read OUT/results.json instead of recomputing")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--crop-image", default=None, help="image for the crop comparison (default: the first)")
    p.add_argument("--scheduler", default=None, help="'sync', or tcp://host:port; default: a local cluster")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    if args.reuse:
        doc = results.load(results_path)
    else:
        baselines = [b for b in args.baselines.split(",") if b]
        kwargs = dict(model=args.model, pipeline=args.pipeline, baseline_qualities=args.baseline_qualities,
                      limit=args.limit)  # fmt: skip
        if args.scheduler == "sync":
            doc = evaluate(args.src, args.qualities, baselines, **kwargs)  # type: ignore[arg-type]
        else:
            from vaeflow.dataset.distributed import client_mapper, cluster_client  # Dask only when asked for

            with cluster_client(None, ClusterOptions(scheduler=args.scheduler, workers=args.workers)) as (client, _, _):
                doc = evaluate(args.src, args.qualities, baselines, mapper=client_mapper(client, "eval"), **kwargs)  # type: ignore[arg-type]
        results.save(doc, results_path)
    plots = save_rd_plot(doc, args.out)
    table = bd_table(doc)
    text = format_bd_table(table)
    vf = next(e for e in doc["codecs"] if e["codec"] == "vaeflow")
    for anchor in doc["codecs"]:
        if anchor is not vf:
            cross = crossover_bpp(vf, anchor)
            where = f"from {cross:.3f} bpp" if cross is not None else "nowhere in the common range"
            text += f"\nvaeflow's MS-SSIM is at least {anchor['name']}'s {where}"
    (args.out / "bd_rate.txt").write_text(text + "\n")
    report = write_report(doc, args.out / "report.html", args.model, args.crop_image, args.pipeline)
    print(text)
    print(f"results: {results_path}; plots: {', '.join(str(p) for p in plots)}; report: {report}")
    return 0
