"""The one-image Python API: compress, decompress, info, and batches of images."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from vaeflow import bitstream
from vaeflow.errors import PipelineError
from vaeflow.models import RuntimeOptions
from vaeflow.pipeline import Codec, Pipeline, StageTimer, check_model
from vaeflow.presets import load_pipeline
from vaeflow.stages.vae import VAE

PipelineLike = str | Pipeline | Codec | None


def resolve_codec(model: str | None = None, quality: int | None = None, pipeline: PipelineLike = None) -> Codec:
    """The codec for a preset (by name or object), with ``model`` and ``quality`` overriding it."""
    if isinstance(pipeline, Codec):
        codec = pipeline
    elif isinstance(pipeline, Pipeline):
        codec = pipeline.codec()
    elif pipeline is None or isinstance(pipeline, str):
        codec = load_pipeline(pipeline or "default").codec()
    else:
        raise PipelineError(f"pipeline must be a preset name, a Pipeline or None, got {type(pipeline).__name__}")
    if model is not None:
        codec = replace(codec, vae=VAE(model), allocation_table=None)
    if quality is not None:
        codec = replace(codec, quantize=codec.quantize.with_quality(quality))
    return codec.calibrated()


def as_rgb(image: Any) -> np.ndarray:
    """Check and convert one image to HxWx3 uint8; HxW and HxWx1 greyscale become RGB."""
    accepted = "accepted: a uint8 array of shape (H, W, 3), (H, W) or (H, W, 1) with H, W >= 1"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}; {accepted}")
    if image.dtype != np.uint8:
        raise ValueError(f"image has dtype {image.dtype}; {accepted} (scale floats to 0..255 and cast first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image has shape {image.shape}; {accepted}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty, shape {image.shape}; {accepted}")
    return np.ascontiguousarray(image)


def compress(
    image: np.ndarray,
    *,
    model: str | None = None,
    quality: int | None = None,
    pipeline: PipelineLike = None,
    runtime: RuntimeOptions | None = None,
    timer: StageTimer | None = None,
    target_bpp: float | None = None,
    target_psnr: float | None = None,
) -> bytes:
    """Compress one HxWx3 uint8 image to a vaeflow stream.

    ``pipeline`` is a preset name (default ``"default"``) or a ``Pipeline``; ``model``
    and ``quality`` (1..100), when given, override the preset's. ``target_bpp`` or
    ``target_psnr`` instead search the quantizer step for that rate (within 2%) or
    quality (within 0.1 dB); ``info`` then reports the target and what was achieved.
    """
    rgb = as_rgb(image)
    codec = with_target(resolve_codec(model, quality, pipeline), quality, target_bpp, target_psnr)
    return codec.run(rgb[None], "ans", runtime, timer)[0]  # type: ignore[no-any-return]


def with_target(codec: Codec, quality: int | None, target_bpp: float | None, target_psnr: float | None) -> Codec:
    """``codec`` under rate control for ``target_bpp`` or ``target_psnr`` (neither: unchanged)."""
    if target_bpp is None and target_psnr is None:
        return codec
    if (target_bpp is not None and target_psnr is not None) or quality is not None:
        raise ValueError("give one of quality, target_bpp or target_psnr")
    quantizer = replace(codec.quantize.with_step(1.0), step=None, target_bpp=target_bpp, target_psnr=target_psnr)
    return replace(codec, quantize=quantizer)


def compress_batch(
    images: list[np.ndarray],
    *,
    model: str | None = None,
    quality: int | None = None,
    pipeline: PipelineLike = None,
    runtime: RuntimeOptions | None = None,
) -> list[bytes]:
    """Compress many images; images of the same shape share one VAE call."""
    rgbs = [as_rgb(im) for im in images]
    codec = resolve_codec(model, quality, pipeline)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, rgb in enumerate(rgbs):
        groups[rgb.shape].append(i)
    out: list[bytes] = [b""] * len(rgbs)
    for indices in groups.values():
        streams = codec.run(np.stack([rgbs[i] for i in indices]), "ans", runtime)
        for i, stream in zip(indices, streams, strict=True):
            out[i] = stream
    return out


def _open(data: bytes) -> tuple[bitstream.StreamHeader, memoryview, Codec]:
    header, payload = bitstream.unpack(data)
    codec, entropy_payload = Codec.from_stream(header, payload)
    return header, entropy_payload, codec


def decompress_latent(data: bytes) -> np.ndarray:
    """The dequantized latent (C, h, w) of a stream, in the model's normalised scale.

    Reads the stream alone: neither the model files nor the VAE decoder are needed.
    """
    header, payload, codec = _open(data)
    symbols = codec.decode_symbols(payload, bitstream.latent_shape(header))
    return codec.untransform(codec.dequantize(symbols))[0]


def decompress(data: bytes, *, runtime: RuntimeOptions | None = None, timer: StageTimer | None = None) -> np.ndarray:
    """Decode a stream to the HxWx3 uint8 image of its original size."""
    timer = timer or StageTimer()
    header, payload, codec = _open(data)
    check_model(header, runtime)
    with timer("ans"):
        symbols = codec.decode_symbols(payload, bitstream.latent_shape(header))
    with timer("quantize"):
        coeffs = codec.dequantize(symbols)
    with timer("wavelet"):
        latents = codec.untransform(coeffs)
    with timer("vae"):
        images = codec.decode_images(latents, (header.height, header.width), runtime)
    return images[0]  # type: ignore[no-any-return]


def info(data: bytes) -> dict[str, Any]:
    """What a stream holds: model, shape, settings and size, without decoding it."""
    header, payload = bitstream.unpack(data)
    codec = Codec.from_header(header)
    pixels = header.height * header.width
    return {
        "model": header.model,
        "fingerprint": header.fingerprint.hex(),
        "shape": (header.height, header.width),
        "latent_shape": bitstream.latent_shape(header),
        "quality": header.quality,
        "step": codec.quantize.base_step,
        "pipeline": {s.stage_name: asdict(s) for s in codec.pipeline().stages},  # type: ignore[call-overload]
        "n_bytes": len(data),
        "header_bytes": len(data) - len(payload),
        "bpp": 8.0 * len(data) / pixels,
        **(
            {"target": {"kind": header.target[0], "value": header.target[1], "achieved": header.target[2]}}
            if header.target
            else {}
        ),
    }
