"""``vaeflow bench latents``: storing a dataset's latents: bytes, read speed, write speed, bounds.

For each model (``--models default,taef2``; ``taef2`` imported and calibrated for identity
channels first, see the README), on a folder of images, in one run:

- **Read**: one latent decoded from its ``latent-store`` stream (what ``read_latent`` does
  after fetching it), per latent and as latents/s on one core, alone and decoded together by
  shape (``decompress_latents``), against reading the same latent stored as fp16 in a zarr v3
  array with zstd level 3 (one chunk per image) and ``np.load`` of an in-memory ``.npy``;
- **Bytes**: the latent-store streams against fp16 + zstd; the sequential coder (every new stream's)
  against the context coder (format 1's, by its own encoder) and the class coder (new streams' before
  format 5) at equal steps, at qualities 30, 50 and 70 of the model's coding preset and at each image's
  latent-store step, with the class coder's entropy-decode time beside the sequential coder's on the
  latent-store symbols; and against the uniform baseline: the exact
  latent rounded to one step for all of it, stored as int8 with zstd levels 3 and 19, that step
  searched per image (by decoding) to lose the same 0.1 dB as the preset allows;
- **Write**: the latent-store encode time against the VAE encoder's; the VAE decodes its
  search ran; the largest PSNR drop (measured by decoding) and latent error;
- the entropy stage's share of the time of ``compress`` and ``decompress`` (coding preset).

Times are the best of ``--repeats`` per image, averaged over the images; compare ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import ZstdCodec

import vaeflow
from vaeflow.codec.api import decompress_latents, open_stream, resolve_codec
from vaeflow.codec.codec import Codec
from vaeflow.foundations import metrics
from vaeflow.foundations.imageio import list_images, read_rgb
from vaeflow.foundations.timing import StageTimer
from vaeflow.stages.coders import classes, context

QUALITIES = (30, 50, 70)
DROP = 0.1


def best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    out = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - start)
    return out


@contextmanager
def counting_decodes() -> Iterator[list[int]]:
    """Counts the VAE decodes run inside the block (the latent-store search's checks)."""
    count, decode = [0], Codec.decode_images

    def counted(self: Codec, *args: Any, **kwargs: Any) -> np.ndarray:
        count[0] += 1
        return decode(self, *args, **kwargs)

    Codec.decode_images = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        Codec.decode_images = decode  # type: ignore[method-assign]


def _drop(codec: Codec, image: np.ndarray, latent: np.ndarray, exact_mse: float) -> float:
    mse = metrics.mse(image, codec.decode_images(latent[None], image.shape[:2])[0])
    return 10 * math.log10(max(mse, 1e-300) / exact_mse)


def uniform_baseline(
    codec: Codec, image: np.ndarray, latent: np.ndarray, exact_mse: float
) -> tuple[dict[int, int], float]:
    """Bytes of the exact latent at the largest uniform step losing at most DROP dB, as int8 with zstd at
    levels 3 and 19 ({level: bytes}), and the step."""

    def size(step: float) -> dict[int, int]:
        symbols = np.clip(np.rint(latent / step), -128, 127).astype(np.int8).tobytes()
        return {level: len(Zstd(level=level).encode(symbols)) for level in (3, 19)}  # numcodecs: zarr's own zstd

    def ok(step: float) -> bool:
        rounded = np.clip(np.rint(latent / step), -128, 127) * step
        return _drop(codec, image, rounded.astype(np.float32), exact_mse) <= DROP

    low, high = math.log2(0.01), math.log2(2.0)
    while high - low > 0.02:
        middle = (low + high) / 2
        low, high = (middle, high) if ok(2**middle) else (low, middle)
    return size(2**low), 2**low


def model_figures(model: str, coding: str, images: list[np.ndarray], repeats: int) -> dict[str, Any]:
    vae = vaeflow.load_model(model)
    store = resolve_codec(model, None, "latent-store")
    exact = [vae.encode(image[None])[0] for image in images]
    exact_mse = [metrics.mse(im, vae.decode(z[None], im.shape[:2])[0]) for im, z in zip(images, exact, strict=True)]
    vae_s = float(np.mean([best(partial(vae.encode, im[None]), max(1, repeats // 4)) for im in images]))
    vae_decode_s = float(np.mean([best(partial(vae.decode, z[None]), max(1, repeats // 4)) for z in exact]))
    decodes = []
    vaeflow.compress(images[0], model=model, pipeline="latent-store")  # first call's compilation and sessions untimed
    start = time.perf_counter()
    streams = []
    for image in images:
        with counting_decodes() as count:
            streams.append(vaeflow.compress(image, model=model, pipeline="latent-store"))
        decodes.append(count[0])
    store_encode_s = (time.perf_counter() - start) / len(images)
    infos = [vaeflow.info(s) for s in streams]
    latents = decompress_latents(streams)
    drops = [_drop(store, im, z, m) for im, z, m in zip(images, latents, exact_mse, strict=True)]
    errors = [float(np.abs(z - e).max()) for z, e in zip(latents, exact, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        fp16, arrays = 0, []
        for i, latent in enumerate(latents):
            array = zarr.create_array(Path(tmp) / f"{i}.zarr", shape=latent.shape, chunks=latent.shape,
                                      dtype=np.float16, compressors=ZstdCodec(level=3))  # fmt: skip
            array[:] = exact[i].astype(np.float16)
            arrays.append(array)
            fp16 += sum(p.stat().st_size for p in (Path(tmp) / f"{i}.zarr" / "c").rglob("*") if p.is_file())
        npys = []
        for latent in exact:
            buffer = io.BytesIO()
            np.save(buffer, latent.astype(np.float16))
            npys.append(buffer.getvalue())

        def per(fn: Callable[[int], object]) -> float:
            return float(np.mean([best(partial(fn, i), repeats) for i in range(len(images))]))

        zarr_s = per(lambda i: arrays[i][...])
        npy_s = per(lambda i: np.load(io.BytesIO(npys[i])))
        read_s = per(lambda i: vaeflow.decompress_latent(streams[i]))
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, z in enumerate(latents):
        shapes.setdefault(z.shape, []).append(i)
    batched_s = sum(best(partial(decompress_latents, [streams[i] for i in m]), repeats) for m in shapes.values())
    baseline = [uniform_baseline(store, im, e, m) for im, e, m in zip(images, exact, exact_mse, strict=True)]
    ratios, class_ratios = {}, {}
    entropy_s = {"sequential": 0.0, "classes": 0.0}
    for label, quality in [*((f"quality {q}", q) for q in QUALITIES), ("latent-store steps", None)]:
        ours = theirs = by_classes = 0
        for i, image in enumerate(images):
            codec = resolve_codec(model, quality, coding) if quality else store.with_step(infos[i]["step"])
            if quality:
                symbols = codec.run(image[None], until="quantize")[0]
            else:
                header, payload, opened = open_stream(streams[i])
                symbols = opened.decode_symbols(payload, header.latent_shape)[0]
            spec = codec.latent_spec(symbols.shape)
            ours += len(coded := codec.entropy.forward(symbols[None], spec)[0])
            theirs += len(context.encode(symbols, spec.bands))  # format 1's coder writes no new streams
            by_classes += len(class_payload := classes.encode(symbols, spec.bands))
            if quality is None:
                entropy_s["sequential"] += best(partial(codec.entropy.inverse, [coded], spec), repeats)
                entropy_s["classes"] += best(partial(classes.decode_many, [class_payload], symbols.shape, spec.bands),
                                             repeats)  # fmt: skip
        ratios[label], class_ratios[label] = ours / theirs, ours / by_classes
    encode_timer, decode_timer = StageTimer(), StageTimer()
    for image in images:
        data = vaeflow.compress(image, model=model, pipeline=coding, timer=encode_timer)
        vaeflow.decompress(data, timer=decode_timer)
    share = {name: t.seconds.get("entropy", 0.0) / sum(t.seconds.values()) for name, t in
             (("encode", encode_timer), ("decode", decode_timer))}  # fmt: skip
    share["encode_vs_vae"] = encode_timer.seconds.get("entropy", 0.0) / encode_timer.seconds["vae"]
    return {
        "model": vae.name, "images": len(images), "latent_shapes": sorted(str(s) for s in shapes),
        "coders": {"latent-store": store.entropy.coder, coding: resolve_codec(model, None, coding).entropy.coder},
        "store_bytes": float(np.mean([len(s) for s in streams])), "fp16_zstd_bytes": fp16 / len(images),
        "uniform_bytes": float(np.mean([b[3] for b, _ in baseline])),
        "uniform_bytes_19": float(np.mean([b[19] for b, _ in baseline])), "uniform_steps": [s for _, s in baseline],
        "coder_ratio": ratios, "class_coder_ratio": class_ratios,
        "entropy_decode_s": {k: v / len(images) for k, v in entropy_s.items()},
        "zarr_s": zarr_s, "npy_s": npy_s, "read_s": read_s,
        "batched_s": batched_s / len(images), "vae_encode_s": vae_s, "vae_decode_s": vae_decode_s,
        "store_encode_s": store_encode_s,
        "decodes": decodes,
        "max_drop": max(drops), "max_recorded_drop": max(i["target"]["psnr_drop"] for i in infos),
        "max_error": max(errors), "entropy_share": share,
    }  # fmt: skip


def run(folder: Path, models: list[tuple[str, str]], repeats: int, limit: int | None) -> dict[str, Any]:
    images = [read_rgb(p) for p in list_images(folder, limit)]
    return {"folder": str(folder), "models": [model_figures(m, c, images, repeats) for m, c in models]}


def report(result: dict[str, Any]) -> str:
    lines = [f"vaeflow bench latents: {result['folder']}"]
    for r in result["models"]:
        ms = 1e3
        lines += [
            f"model {r['model']}, {r['images']} images, latents {', '.join(r['latent_shapes'])}; entropy coders: "
            + ", ".join(f"{preset} {coder}" for preset, coder in r["coders"].items()),
            f"  read one latent: {r['read_s'] * ms:.2f} ms ({1 / r['read_s']:.0f} latents/s on one core), "
            f"{r['read_s'] / r['zarr_s']:.2f}x fp16+zstd zarr ({r['zarr_s'] * ms:.2f} ms), "
            f"{r['read_s'] / r['npy_s']:.1f}x np.load ({r['npy_s'] * ms:.3f} ms); decoded together by shape: "
            f"{r['batched_s'] * ms:.2f} ms each ({r['batched_s'] / r['zarr_s']:.2f}x)",
            f"  bytes per image: latent-store {r['store_bytes']:.0f}, fp16+zstd {r['fp16_zstd_bytes']:.0f} "
            f"({r['store_bytes'] / r['fp16_zstd_bytes']:.3f}x), uniform int8 at the same drop with zstd-3 "
            f"{r['uniform_bytes']:.0f} ({r['store_bytes'] / r['uniform_bytes']:.3f}x), with zstd-19 "
            f"{r['uniform_bytes_19']:.0f} ({r['store_bytes'] / r['uniform_bytes_19']:.3f}x)",
            "  the presets' coder / context coder, equal steps: "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["coder_ratio"].items()),
            "  the presets' coder / class coder, equal steps: "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["class_coder_ratio"].items())
            + f"; entropy decode of a latent-store latent: {r['entropy_decode_s']['sequential'] * ms:.2f} ms "
            f"(class coder {r['entropy_decode_s']['classes'] * ms:.2f} ms)",
            f"  latent-store encode {r['store_encode_s']:.3f} s per image, "
            f"{r['store_encode_s'] / r['vae_encode_s']:.2f}x the VAE encoder ({r['vae_encode_s']:.3f} s; its "
            f"decoder {r['vae_decode_s']:.3f} s), {np.mean(r['decodes']):.2f} VAE decodes per image (at most "
            f"{max(r['decodes'])}); largest PSNR drop {r['max_drop']:.3f} dB (recorded "
            f"{r['max_recorded_drop']:.3f}), largest latent error {r['max_error']:.3f}",
            f"  entropy stage: {100 * r['entropy_share']['encode']:.1f}% of compress "
            f"({r['entropy_share']['encode_vs_vae']:.3f}x the VAE encoder's time there), "
            f"{100 * r['entropy_share']['decode']:.1f}% of decompress",
        ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vaeflow bench latents", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of images, e.g. ../shared/data/kodak")
    parser.add_argument("--models", default="default:default",
                        help="MODEL:CODING_PRESET pairs, e.g. default:default,taef2:wide-latent")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    pairs = [tuple(p.split(":", 1)) if ":" in p else (p, "default") for p in args.models.split(",")]
    result = run(args.folder, pairs, args.repeats, args.limit)  # type: ignore[arg-type]
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
