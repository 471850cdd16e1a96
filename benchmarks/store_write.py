"""``vaeflow bench store-write``: the cost of writing a latent store against a trainer's latent cache.

    vaeflow bench store-write DIR [DIR ...] [--models default,taef2] [--rounds 1] [--json FILE]

For each model, on the images of the folders given, in one process and one run:

- **bare loop**: what a trainer's caching script does, image by image: read the file (Pillow),
  ``vaeflow.encode_latent`` (the same ONNX encoder), save the latent as fp16 safetensors;
- **the latent-store job** (``vaeflow.compress_dataset(..., pipeline="latent-store")``, in this
  process: ``scheduler="sync"``) under each verification policy: ``none``, ``sample`` (the
  preset's fraction) and ``all``; its wall time against the bare loop's, its bytes, and the VAE
  decodes it ran per image;
- then every image decoded from each store and from ``encode_latent(image)`` (the exact latent):
  the real PSNR drop of each image (against decoding the exact latent) and the largest latent
  error (against the exact latent, in the normalised scale), their distribution, and the images
  over the limit (``0.1 dB``) and over 1.5 times it.

Rounds alternate the bare loop and the jobs; each figure is the fastest round's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

import vaeflow
from benchmarks.latents import counting_decodes
from vaeflow.foundations import metrics
from vaeflow.foundations.imageio import list_images, read_rgb

POLICIES = ("none", "sample", "all")


def bare_loop(paths: list[Path], model: str, out: Path) -> float:
    """Read, encode and save each image as a trainer's latent cache does; wall seconds."""
    start = time.perf_counter()
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        latent = vaeflow.encode_latent(pixels, model=model)
        save_file({"latent": latent.astype(np.float16)}, str(out / f"{i:06d}.safetensors"))
    return time.perf_counter() - start


def job(src: Path, store: Path, model: str, verify: str) -> tuple[float, int, vaeflow.JobReport]:
    """The latent-store job in this process: wall seconds, VAE decodes, its report."""
    shutil.rmtree(store, ignore_errors=True)
    options = vaeflow.JobOptions(progress=False)
    with counting_decodes() as decodes:
        start = time.perf_counter()
        report = vaeflow.compress_dataset(
            src, store, model=model, pipeline="latent-store", verify=verify, scheduler="sync", options=options
        )
        seconds = time.perf_counter() - start
    return seconds, decodes[0], report


def quality(src: Path, stores: dict[str, Path], model: str) -> dict[str, dict[str, list[float]]]:
    """Each image's real PSNR drop and largest latent error in each store, against its exact latent."""
    readers = {policy: vaeflow.open_store(path) for policy, path in stores.items()}
    found: dict[str, dict[str, list[float]]] = {p: {"drop": [], "latent_error": []} for p in stores}
    for name in readers[next(iter(readers))].names:
        image = read_rgb(src / name)
        exact = vaeflow.encode_latent(image, model=model)
        unit = vaeflow.from_model_convention(exact[None], model)[0]
        reference = metrics.psnr(image, vaeflow.decode_latent(exact, model=model, size=image.shape[:2]))
        for policy, reader in readers.items():
            found[policy]["drop"].append(reference - metrics.psnr(image, reader.read_image(name)))
            stored = reader.read_latent(name, convention="normalised")
            found[policy]["latent_error"].append(float(np.abs(stored - unit).max()))
    return found


def run(folders: list[Path], models: list[str], rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vaeflow-store-write-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        for folder in folders:  # one job over every folder's images
            for path in list_images(folder, 10**9):
                shutil.copy2(path, src / f"{folder.name}-{path.name}")
        paths = list_images(src, 10**9)
        pixels = sum(int(np.prod(read_rgb(p).shape[:2])) for p in paths)
        result: dict[str, Any] = {"images": len(paths), "megapixels": pixels / 1e6, "models": {}}
        for model in models:
            times: dict[str, list[float]] = {"bare": [], **{p: [] for p in POLICIES}}
            decodes: dict[str, int] = {}
            reports: dict[str, vaeflow.JobReport] = {}
            stores = {p: work / f"{model}-{p}.zarr" for p in POLICIES}
            for _ in range(rounds):
                cache = work / f"{model}-cache"
                shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir()
                times["bare"].append(bare_loop(paths, model, cache))
                for policy in POLICIES:
                    seconds, decodes[policy], reports[policy] = job(src, stores[policy], model, policy)
                    times[policy].append(seconds)
            cache_bytes = sum(f.stat().st_size for f in (work / f"{model}-cache").iterdir())
            drops = quality(src, stores, model)
            bare = min(times["bare"])
            policies: dict[str, Any] = {}
            for policy in POLICIES:
                report = reports[policy]
                d, e = np.asarray(drops[policy]["drop"]), np.asarray(drops[policy]["latent_error"])
                summary = report.drops
                policies[policy] = {
                    "seconds": min(times[policy]),
                    "vs_bare": min(times[policy]) / bare,
                    "bytes": report.bytes_out,
                    "bytes_vs_all": report.bytes_out / reports["all"].bytes_out,
                    "bytes_vs_fp16": report.bytes_out / cache_bytes,
                    "decodes_per_image": decodes[policy] / len(paths),
                    "verified": summary.verified if summary else 0,
                    "prediction_error_mean": summary.error_mean if summary and summary.verified else None,
                    "prediction_error_max": summary.error_max if summary and summary.verified else None,
                    "margin": summary.margin if summary else None,
                    "drop_mean": float(d.mean()),
                    "drop_median": float(np.median(d)),
                    "drop_p98": float(np.percentile(d, 98)),
                    "drop_max": float(d.max()),
                    "over_limit": int((d > 0.1 + 1e-4).sum()),
                    "over_1_5x": int((d > 0.15).sum()),
                    "latent_error_max": float(e.max()),
                    "latent_error_median": float(np.median(e)),
                }
            result["models"][model] = {
                "bare_seconds": bare,
                "bare_rounds": times["bare"],
                "fp16_bytes": cache_bytes,
                "policies": policies,
            }
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"latent-store writing: {result['images']} images, {result['megapixels']:.1f} MP, one process"]
    for model, m in result["models"].items():
        lines += [
            "",
            f"{model}: bare loop (read, encode_latent, fp16 safetensors) {m['bare_seconds']:.1f} s, "
            f"{m['fp16_bytes']:,} bytes",
            "| verify | job / bare | bytes | vs all | vs fp16 | decodes/image | verified | prediction error "
            "(mean, worst) | drop median / p98 / max (dB) | over 0.1 dB | over 0.15 dB | latent error max |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
        ]
        for policy, p in m["policies"].items():
            error = (
                f"{100 * p['prediction_error_mean']:.0f}%, {100 * p['prediction_error_max']:.0f}%"
                if p["prediction_error_mean"] is not None
                else "-"
            )
            lines.append(
                f"| {policy} | {p['vs_bare']:.2f}x | {p['bytes']:,} | {p['bytes_vs_all']:.3f} | "
                f"{p['bytes_vs_fp16']:.3f} | {p['decodes_per_image']:.2f} | {p['verified']} | {error} | "
                f"{p['drop_median']:.3f} / {p['drop_p98']:.3f} / {p['drop_max']:.3f} | {p['over_limit']} | "
                f"{p['over_1_5x']} | {p['latent_error_max']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vaeflow bench store-write", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="DIR", help="folders of images")
    parser.add_argument("--models", default="default", help="comma-separated registered models")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every run; the fastest counts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.folders, args.models.split(","), max(1, args.rounds))
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
