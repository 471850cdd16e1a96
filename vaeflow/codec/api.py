"""The one-image Python API: compress, decompress, info, and batches of images."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from vaeflow.codec import format as stream_format
from vaeflow.codec import ratecontrol
from vaeflow.codec.codec import CODING, TRANSFORMS, Codec
from vaeflow.codec.presets import load_pipeline
from vaeflow.foundations.errors import ModelError, PipelineError
from vaeflow.foundations.imageio import as_rgb
from vaeflow.foundations.timing import StageTimer
from vaeflow.models import ModelRef, Registry, RuntimeOptions
from vaeflow.stages import Pipeline, RateTarget, kernels
from vaeflow.stages import quantize as quantizer
from vaeflow.stages.coders import compiled, sequential

PipelineLike = str | Pipeline | Codec | None


def resolve_codec(
    model: str | None = None,
    quality: int | None = None,
    pipeline: PipelineLike = None,
    target: RateTarget | None = None,
    verify: str | None = None,
    verify_fraction: float | None = None,
) -> Codec:
    """The codec for a preset (by name or object); ``model``, ``quality`` and ``target`` override it.

    A quality or a target given here replaces the preset's target or step. The quality of a
    named preset, and ``quality`` here, are on the model's own scale where it has one (see
    ``Codec.with_quality``); a ``Quantize(quality=...)`` in a pipeline object is kept as it is.
    ``verify`` (``"all"``, ``"sample"``, ``"none"``) and ``verify_fraction`` replace how the
    target's PSNR-drop limit is kept (``RateTarget``); a target without one refuses them.
    """
    if quality is not None and target is not None:
        raise PipelineError(f"give a quality or a rate target, not both (quality {quality}, {target})")
    if isinstance(pipeline, Codec):
        codec = pipeline if model is None else Codec.resolve(pipeline.pipeline, model)
    elif isinstance(pipeline, Pipeline):
        codec = Codec.resolve(pipeline, model)
    elif pipeline is None or isinstance(pipeline, str):
        codec = Codec.resolve(load_pipeline(pipeline or "default"), model)
        if quality is None and codec.target is None and codec.quantize.quality is not None:
            quality = codec.quantize.quality  # a preset's quality is on the model's scale
    else:
        raise PipelineError(f"pipeline must be a preset name, a Pipeline or None, got {type(pipeline).__name__}")
    if quality is not None:
        codec = codec.with_quality(quality)
    if target is not None:
        codec = codec.with_target(target)
    if verify is not None or verify_fraction is not None:
        codec = codec.with_target(verified_target(codec.target, verify, verify_fraction))
    drops = codec.target
    if drops is not None and drops.max_psnr_drop is not None and drops.verify != "all" and codec.drop_model is None:
        name, key = codec.model.name, codec.calibration_key
        raise PipelineError(
            f"verify={drops.verify!r} predicts PSNR drops, which needs the drop model of {name!r} for {key!r}: run "
            f"`vaeflow models calibrate {name} --data PHOTOS --drops-only` (with its --channel), or verify all"
        )
    return codec


def verified_target(target: RateTarget | None, verify: str | None, verify_fraction: float | None) -> RateTarget:
    """``target`` with its PSNR-drop limit kept as ``verify`` and ``verify_fraction`` say."""
    if target is None or target.max_psnr_drop is None:
        raise PipelineError(
            f"verify={verify!r} applies to a PSNR-drop limit (the latent-store presets); this codec has "
            f"{'no rate target' if target is None else target}"
        )
    policy = verify or target.verify
    if verify_fraction is not None and policy != "sample":
        raise PipelineError(f"verify_fraction={verify_fraction} goes with verify='sample', not {policy!r}")
    fraction = verify_fraction if verify_fraction is not None else target.verify_fraction
    return replace(target, verify=policy, verify_fraction=fraction)


def rate_target(target_bpp: float | None = None, target_psnr: float | None = None) -> RateTarget | None:
    """The target the ``target_bpp`` / ``target_psnr`` arguments ask for (None if neither)."""
    if target_bpp is None and target_psnr is None:
        return None
    return RateTarget(bpp=target_bpp, psnr=target_psnr)


def encode(
    codec: Codec, images: np.ndarray, runtime: RuntimeOptions | None = None, timer: StageTimer | None = None
) -> list[bytes]:
    """Streams for a batch of same-shape images, each at the step the codec's rate strategy chooses."""
    timer = timer or StageTimer()
    coeffs = codec.run(images, TRANSFORMS[-1], runtime, timer)
    strategy = ratecontrol.strategy_of(codec)
    measure = codec.target is None or codec.target.verify != "none"
    sizes = [(images.shape[1], images.shape[2])] * len(images)
    with timer("quantize"):
        choices = strategy.choose(codec, coeffs, sizes, list(images), runtime, measure=measure)
    with timer("entropy"):
        return strategy.streams(codec, choices, sizes)


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
    verify: str | None = None,
) -> bytes:
    """Compress one HxWx3 uint8 image to a vaeflow stream.

    ``pipeline`` is a preset name (default ``"default"``) or a ``Pipeline``; ``model``
    and ``quality`` (1..100), when given, override the preset's. ``target_bpp`` or
    ``target_psnr`` instead search the quantizer step for that rate (within 2%) or
    quality (within 0.1 dB); ``info`` then reports the target and what was achieved.
    Under a PSNR-drop limit (the latent-store presets), ``verify="none"`` predicts the
    image's drop without decoding; otherwise it is measured (an image alone is its own sample).
    """
    rgb = as_rgb(image)
    codec = resolve_codec(model, quality, pipeline, rate_target(target_bpp, target_psnr), verify)
    return encode(codec, rgb[None], runtime, timer)[0]


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
        streams = encode(codec, np.stack([rgbs[i] for i in indices]), runtime)
        for i, stream in zip(indices, streams, strict=True):
            out[i] = stream
    return out


def open_stream(data: bytes | memoryview) -> tuple[stream_format.StreamHeader, memoryview, Codec]:
    """A stream's header, the entropy coder's part of its payload, and the codec that decodes it."""
    header, payload = stream_format.unpack(data)
    codec, entropy_payload = Codec.from_stream(header, payload)
    return header, entropy_payload, codec


def warm_decoders() -> None:
    """Compile the entropy decoders, dequantization and wavelet synthesis now, or load them from
    numba's on-disk cache (about 0.1 s when cached): what a loader calls before its workers start."""
    compiled.warm()
    sequential.warm()
    kernels.warm()


def decompress_latent(data: bytes | memoryview) -> np.ndarray:
    """The dequantized latent (C, h, w) of a stream, in the model's normalised scale.

    Reads the stream alone: neither the model files nor the VAE decoder are needed.
    """
    header, payload, codec = open_stream(data)
    spec = codec.latent_spec(header.latent_shape)
    return codec.pipeline.inverse([payload], spec, CODING[-1], TRANSFORMS[0])[0]  # type: ignore[no-any-return]


def decompress_latents(streams: Sequence[bytes | memoryview]) -> list[np.ndarray]:
    """The dequantized latents of many streams, as ``decompress_latent`` gives them. Streams of one
    entropy coder and latent shape are entropy-decoded together (one decoder call per class or band
    and stream, the array work shared), and dequantized and inverse-transformed together, each with its
    own steps (streams of a rate-searched preset differ only in them), in runs of at most
    ``BATCH_COEFFICIENTS`` values."""
    opened = [open_stream(data) for data in streams]
    coded: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (header, _, codec) in enumerate(opened):
        coded[(_stages(codec, CODING), codec.wavelet, header.latent_shape)].append(i)
    symbols: list[np.ndarray] = [np.empty(0)] * len(streams)
    for (_, _, shape), group in coded.items():
        for members in _chunks(group, shape):
            first = opened[members[0]][2]
            spec = first.latent_spec(shape, steps=False)
            decoded = first.pipeline.inverse([opened[i][1] for i in members], spec, CODING[-1], CODING[0])
            for i, row in zip(members, decoded, strict=True):
                symbols[i] = row
    transformed: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (header, _, codec) in enumerate(opened):
        transformed[(codec.quantize.rounding, _stages(codec, TRANSFORMS), header.latent_shape)].append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(streams)
    for (_, _, shape), group in transformed.items():
        for members in _chunks(group, shape):
            first = opened[members[0]][2]
            steps = np.stack([opened[i][2].steps(shape) for i in members])
            spec = first.latent_spec(shape, steps=False).with_steps(steps)
            coeffs = first.quantize.inverse(np.stack([symbols[i] for i in members]), spec)
            for i, latent in zip(members, first.untransform(coeffs), strict=True):
                out[i] = latent
    return out


def _stages(codec: Codec, names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(codec.pipeline.by_name[name] for name in names)


BATCH_COEFFICIENTS = 1 << 18  # latents decoded together hold at most this many values (at least one latent)


def _chunks(members: list[int], shape: tuple[int, int, int]) -> list[list[int]]:
    """``members`` in runs small enough that their arrays stay in cache (larger batches run slower)."""
    size = max(1, BATCH_COEFFICIENTS // max(1, shape[0] * shape[1] * shape[2]))
    return [members[i : i + size] for i in range(0, len(members), size)]


def decompress(
    data: bytes | memoryview, *, runtime: RuntimeOptions | None = None, timer: StageTimer | None = None
) -> np.ndarray:
    """Decode a stream to the HxWx3 uint8 image of its original size."""
    timer = timer or StageTimer()
    header, payload, codec = open_stream(data)
    spec = codec.spec((header.height, header.width), runtime)
    out: Any = [payload]
    for stage in reversed(codec.pipeline.stages):
        with timer(stage.stage_name):
            out = stage.inverse(out, spec)
    return out[0]  # type: ignore[no-any-return]


def info(data: bytes | memoryview) -> dict[str, Any]:
    """What a stream holds: model, shape, settings and size, without decoding it."""
    header, payload = stream_format.unpack(data)
    codec = Codec.from_header(header)
    pixels = header.height * header.width
    out = {
        "format_version": header.version,
        "model": header.model.name,
        "fingerprint": header.model.fingerprint,
        "shape": (header.height, header.width),
        "latent_shape": header.latent_shape,
        "quality": header.quantize.quality,
        "quality_scale": "global" if header.quantize.quality is not None else None,
        "step": header.quantize.base_step,
        "pipeline": codec.pipeline.to_dict(),
        "n_bytes": len(data),
        "header_bytes": len(data) - len(payload),
        "bpp": 8.0 * len(data) / pixels,
    }
    if header.record:
        record = header.record
        target: dict[str, Any] = {"kind": record.kind, "value": record.value, "achieved": record.achieved}
        if record.drop_limit is not None:  # measured (verified) or predicted only (format 4)
            target |= {"max_psnr_drop": record.drop_limit, "psnr_drop": record.drop, "verified": record.measured}
            if header.version >= 4:
                target["predicted_psnr_drop"] = record.predicted_drop
        out["target"] = target
    elif header.quantize.quality is None:
        out |= model_quality(header.model, codec.calibration_key, header.quantize.base_step)
    return out


def model_quality(model: ModelRef, calibration_key: str, step: float) -> dict[str, Any]:
    """The quality on the model's own scale that gives ``step``, where this registry has the very model."""
    try:
        entry = Registry.load().resolve(model.name)
    except ModelError:
        return {}
    scale = entry.quality_scale.get(calibration_key)
    if scale is None or entry.fingerprint().hex() != model.fingerprint:
        return {}
    quality = quantizer.scale_quality(step, scale[0])
    return {} if quality is None else {"quality": quality, "quality_scale": model.name}
