"""The codec engine: a pipeline resolved against the model registry once, run forward and back.

``Codec.resolve(pipeline)`` checks that the pipeline runs from images to streams, resolves
its model name to a ``ModelRef`` (name, fingerprint, channels, downsampling) and, for
decoder allocation, looks up the model's calibration; the codec then needs the registry
only to load that very model. A stream's header rebuilds the codec that decodes it: the
inverse is derived, never configured. Rate control is not run here: whoever wants a
target searched calls ``vaeflow.codec.ratecontrol``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from vaeflow.codec import format as stream_format
from vaeflow.codec.dropmodel import DropModel
from vaeflow.foundations.errors import ModelError, PipelineError
from vaeflow.foundations.timing import StageTimer
from vaeflow.models import ModelRef, Registry, RuntimeOptions, latent_unit_of, padded_shape
from vaeflow.stages import (
    STAGE_ORDER,
    VAE,
    ChannelTransform,
    Entropy,
    Pipeline,
    Quantize,
    RateTarget,
    Stage,
    StageSpec,
    Subband,
    TargetRecord,
    Wavelet,
)
from vaeflow.stages import quantize as quantizer
from vaeflow.stages.quantize import AllocationTable
from vaeflow.stages.views import StageViews

log = logging.getLogger("vaeflow")

# The stages from the encoder on (``run(until=...)`` accepts them); those before it act on decoded images.
ENCODED = STAGE_ORDER[STAGE_ORDER.index("vae") :]
# Between the encoder and the quantizer: the transforms of the latent, which need no steps.
TRANSFORMS = STAGE_ORDER[STAGE_ORDER.index("vae") + 1 : STAGE_ORDER.index("quantize")]
# After the quantizer: the stages that code its symbols, at the step each image got.
CODING = STAGE_ORDER[STAGE_ORDER.index("quantize") + 1 :]
# From the encoder to the quantizer: the stages that give each image its rows (then coded by CODING).
TO_SYMBOLS = ENCODED[: ENCODED.index("quantize") + 1]


@dataclass(frozen=True)
class Codec(StageViews):
    """A complete pipeline, every stage present, with its model resolved: what the stages need besides
    their own fields comes from here, as each size's ``StageSpec``."""

    model: ModelRef
    pipeline: Pipeline  # every stage of STAGE_ORDER, each resolved (no "auto"), and the rate target
    allocation_table: AllocationTable | None = None
    band_gains: tuple[tuple[float, ...], ...] | None = None  # the decoder's calibrated sensitivity (encoder side)
    quality_scale: tuple[float, ...] | None = None  # the model's own steps at qualities 1, 10, ..., 100
    latent_unit: int = 1  # latent samples an image is padded to a multiple of (a model's latent patch)
    drop_model: DropModel | None = None  # predicts an image's PSNR drop (encoder side; vaeflow.codec.dropmodel)

    def __post_init__(self) -> None:
        if self.pipeline.names != STAGE_ORDER:
            raise PipelineError(f"a codec holds every stage {STAGE_ORDER}, got {self.pipeline.names}")

    @classmethod
    def resolve(cls, pipeline: Pipeline, model: str | None = None) -> Codec:
        """The codec of a complete pipeline; ``model`` replaces the pipeline's model name.

        The channel transform ``auto`` becomes the one the model is calibrated for (Hadamard
        first, where the channel count allows it), and the entropy coder ``auto`` the one that fits
        its channel count (``Entropy.fitting``; a coder that only decodes older streams is refused). A model without a
        calibration for decoder allocation with this channel transform and wavelet gets uniform steps, with a warning
        saying how to calibrate it (the stream records the allocation it used, so it always
        decodes); a PSNR-drop target, which is predicted from the calibration, refuses instead.
        """
        complete = pipeline.completed()
        named: VAE = VAE(model) if model is not None else complete.by_name["vae"]  # type: ignore[assignment]
        entry = Registry.load().resolve(named.model)
        wavelet: Wavelet = complete.by_name["wavelet"]  # type: ignore[assignment]
        channel: ChannelTransform = complete.by_name["channel"]  # type: ignore[assignment]
        if channel.transform == "auto":
            channel = fitting_transform(entry.calibration, entry.latent_channels, wavelet)
        entropy: Entropy = complete.by_name["entropy"]  # type: ignore[assignment]
        entropy.check_writable()
        resolved = complete.with_stages(VAE(entry.name), channel, entropy.fitting(entry.latent_channels))
        codec = cls(entry.ref(), resolved, latent_unit=latent_unit_of(entry.latent_convention()))
        codec.channel.check(codec.model.latent_channels)
        gains = entry.calibration.get(codec.calibration_key)
        if gains is None and codec.target is not None and codec.target.max_psnr_drop is not None:
            raise PipelineError(
                f"model {entry.name!r} has no calibration for {codec.calibration_key!r}, which a PSNR-drop limit "
                f"needs; run `vaeflow models calibrate {entry.name} --data PHOTOS --channel {codec.channel.transform} "
                f"--wavelet {codec.wavelet.name} --levels {codec.wavelet.levels}`"
            )
        if gains is not None:
            codec = replace(codec, band_gains=tuple(tuple(float(g) for g in row) for row in gains))
        scale = entry.quality_scale.get(codec.calibration_key)
        if scale is not None:
            codec = replace(codec, quality_scale=scale[0])
        fitted = entry.drop_model.get(codec.calibration_key)
        if fitted is not None and gains is not None:
            try:
                codec = replace(codec, drop_model=DropModel.from_dict(fitted))
            except ModelError as exc:  # what needs it says so; every other setting works without it
                log.warning("model %r: %s", entry.name, exc)
        if codec.quantize.allocation != "decoder":
            return codec
        if gains is None:
            log.warning(
                "model %r has no calibration for %r, so steps are uniform; run `vaeflow models calibrate %s "
                "--data PHOTOS --channel %s --wavelet %s --levels %d` for decoder-aware steps",
                entry.name, codec.calibration_key, entry.name, codec.channel.transform, codec.wavelet.name,
                codec.wavelet.levels,
            )  # fmt: skip
            return codec.with_quantizer(replace(codec.quantize, allocation="uniform"))
        table = quantizer.allocation_table(np.asarray(gains), codec.wavelet.all_bands(), codec.wavelet.levels)
        return replace(codec, allocation_table=tuple(tuple(int(v) for v in row) for row in table))

    @property
    def target(self) -> RateTarget | None:
        return self.pipeline.target

    @property
    def calibration_key(self) -> str:
        return calibration_key(self.channel.transform, self.wavelet)

    def settings(self) -> dict[str, Any]:
        """What a store records of the codec that wrote it: the model reference and every stage."""
        return {"model": self.model.to_dict(), "codec": self.pipeline.to_dict()}

    def with_stages(self, *stages: Stage) -> Codec:
        """This codec with some stages replaced as they are (nothing resolved again)."""
        return replace(self, pipeline=self.pipeline.with_stages(*stages))

    def with_quantizer(self, quantize: Quantize) -> Codec:
        return self.with_stages(quantize)

    def replaced(self, *stages: Stage) -> Codec:
        """This codec with some stages replaced, resolved again (its allocation looked up anew)."""
        return Codec.resolve(self.pipeline.with_stages(*stages))

    def with_step(self, step: float) -> Codec:
        """This codec at an explicit step, without its rate target (what a searched stream records)."""
        return replace(self, pipeline=self.pipeline.with_stages(self.quantize.with_step(step)).with_target(None))

    def with_quality(self, quality: int) -> Codec:
        """This codec at ``quality``: on the model's own scale where it has one (the stream then
        records the step), else on the global one (the stream records the quality)."""
        if self.quality_scale is not None:
            self.quantize.with_quality(quality)  # validated as any quality
            return self.with_step(quantizer.scaled_step(quality, self.quality_scale))
        return replace(self, pipeline=self.pipeline.with_stages(self.quantize.with_quality(quality)).with_target(None))

    def with_target(self, target: RateTarget | None) -> Codec:
        return replace(self, pipeline=self.pipeline.with_target(target))

    # What the stages need besides their fields.
    def bands(self, latent_shape: tuple[int, ...]) -> tuple[Subband, ...]:
        return self.wavelet.bands(latent_shape)

    def steps(self, latent_shape: tuple[int, ...]) -> np.ndarray:
        """(C, n_bands) quantizer steps for latents of ``latent_shape`` (.., C, h, w)."""
        table = self.allocation_table if self.quantize.allocation == "decoder" else None
        return _steps(self.quantize, self.wavelet, table, tuple(latent_shape[-3:]))

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """The shape an image of this size is encoded at (``vaeflow.models.padded_shape``)."""
        return padded_shape(height, width, self.model.downsample * self.latent_unit)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The latent of an image of this size: what the VAE gives for it and what its stream holds."""
        return self.model.latent_shape(height, width, self.latent_unit)

    def spec(self, size: tuple[int, int], runtime: RuntimeOptions | None = None, steps: bool = True) -> StageSpec:
        """The spec every stage runs with for images of ``size`` (H, W), at this codec's step (without the
        step table when ``steps`` is false: only the quantizer needs it)."""
        shape = self.latent_shape(*size)
        table = self.steps(shape) if steps else None
        return StageSpec(size, shape, self.bands(shape), table, self.model, runtime, self.latent_unit)

    def latent_spec(
        self, latent_shape: tuple[int, ...], runtime: RuntimeOptions | None = None, steps: bool = True
    ) -> StageSpec:
        """The spec of latents of ``latent_shape`` (.., C, h, w), for the stages after the VAE (without
        the quantizer's steps when ``steps`` is false: the transforms need none). Made once per shape."""
        shape = (int(latent_shape[-3]), int(latent_shape[-2]), int(latent_shape[-1]))
        key = (shape, steps, runtime)
        spec = self._latent_specs.get(key)
        if spec is None:
            size = (shape[1] * self.model.downsample, shape[2] * self.model.downsample)
            table = self.steps(shape) if steps else None
            spec = StageSpec(size, shape, self.bands(shape), table, self.model, runtime, self.latent_unit)
            self._latent_specs[key] = spec
        return spec

    @cached_property
    def _latent_specs(self) -> dict[tuple[Any, ...], StageSpec]:
        return {}

    # Forward, each batch-wise (leading N axis).
    def run(
        self,
        images: np.ndarray,
        until: str = "entropy",
        runtime: RuntimeOptions | None = None,
        timer: StageTimer | None = None,
    ) -> Any:
        """Run the stages forward up to and including ``until`` at the codec's fixed step.

        ``images`` is a batch (N x H x W x 3 uint8) or one image (H x W x 3), which gives one
        result. ``until`` is one of vae (latents), channel, wavelet (coefficients), quantize
        (symbols) or entropy (streams). A codec with a rate target searches each image's step:
        ``vaeflow.compress`` does that.
        """
        if until not in ENCODED:
            raise PipelineError(f"unknown stage {until!r}; choose one of {ENCODED}")
        if self.target is not None and STAGE_ORDER.index(until) >= STAGE_ORDER.index("quantize"):
            raise PipelineError(
                f"this codec searches each image's step for {self.target}; run it to 'wavelet', or code "
                "with vaeflow.compress"
            )
        single = images.ndim == 3
        batch = images[None] if single else images
        timer = timer or StageTimer()
        quantized = STAGE_ORDER.index(until) >= STAGE_ORDER.index("quantize")
        spec = self.spec((batch.shape[1], batch.shape[2]), runtime, steps=quantized)
        out: Any = batch
        for stage in self.pipeline.between("vae", until):
            with timer(stage.stage_name):
                out = stage.forward(out, spec)
        if until == "entropy":
            out = self.streams(out, [spec.size] * batch.shape[0])
        return out[0] if single else out

    def encode_latents(self, images: np.ndarray, runtime: RuntimeOptions | None = None) -> np.ndarray:
        """Same-size images (N, H, W, 3) -> their exact latents (N, C, h, w) (``VAE.forward``)."""
        spec = self.spec((images.shape[1], images.shape[2]), runtime, steps=False)
        return self.vae.forward(images, spec)  # type: ignore[no-any-return]

    def transform(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> wavelet coefficients: the stages from the channel transform to the wavelet."""
        return self.pipeline.forward(
            latents, self.latent_spec(latents.shape, steps=False), TRANSFORMS[0], TRANSFORMS[-1]
        )

    def quantize_coefficients(self, coeffs: np.ndarray) -> np.ndarray:
        return self.quantize.forward(coeffs, self.latent_spec(coeffs.shape))

    def header(self, size: tuple[int, int], record: TargetRecord | None = None) -> stream_format.StreamHeader:
        return stream_format.StreamHeader(self.model, size[0], size[1], self.pipeline.with_target(None), record,
                                          latent_unit=self.latent_unit)  # fmt: skip

    def streams(
        self, payloads: list[bytes], sizes: list[tuple[int, int]], record: TargetRecord | None = None
    ) -> list[bytes]:
        """Each image's entropy payload and original (H, W) -> its stream (header, allocation table, payload)."""
        prefix = self.table_bytes()
        return [
            stream_format.pack(self.header(size, record), prefix + payload)
            for payload, size in zip(payloads, sizes, strict=True)
        ]

    def entropy_code(
        self, symbols: np.ndarray, sizes: list[tuple[int, int]], record: TargetRecord | None = None
    ) -> list[bytes]:
        """Symbols (N, C, h, w) and each image's original (H, W) -> one stream per image."""
        if not sizes:
            return []
        spec = self.latent_spec(symbols.shape, steps=False)
        return self.streams(self.pipeline.forward(symbols, spec, CODING[0], CODING[-1]), sizes, record)

    def table_bytes(self) -> bytes:
        """The allocation table as the payload carries it (see ``quantize.pack_table``)."""
        if self.quantize.allocation != "decoder" or self.allocation_table is None:
            return b""
        return quantizer.pack_table(np.asarray(self.allocation_table))

    # Inverse.
    @classmethod
    def from_header(cls, header: stream_format.StreamHeader) -> Codec:
        """The codec a stream's header describes (without its allocation table)."""
        return cls(header.model, header.pipeline, latent_unit=header.latent_unit)

    @classmethod
    def from_stream(cls, header: stream_format.StreamHeader, payload: memoryview) -> tuple[Codec, memoryview]:
        """The codec that decodes a stream, and the entropy coder's part of its payload."""
        if header.quantize.allocation != "decoder":
            return cls.from_header(header), payload
        shape = (header.model.latent_channels, len(header.wavelet.all_bands()))
        table, used = quantizer.unpack_table(payload, shape)
        rows = tuple(tuple(int(v) for v in row) for row in table)
        return cls(header.model, header.pipeline, allocation_table=rows, latent_unit=header.latent_unit), payload[used:]

    def decode_symbols(self, payload: bytes | memoryview, latent_shape: tuple[int, int, int]) -> np.ndarray:
        """One stream's payload -> symbols (1, C, h, w)."""
        return self.pipeline.inverse([payload], self.latent_spec(latent_shape, steps=False), CODING[-1], CODING[0])

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        return self.quantize.inverse(symbols, self.latent_spec(symbols.shape))

    def untransform(self, coeffs: np.ndarray) -> np.ndarray:
        """Wavelet coefficients -> latents: the stages from the wavelet back to the channel transform."""
        return self.pipeline.inverse(coeffs, self.latent_spec(coeffs.shape, steps=False), TRANSFORMS[-1], TRANSFORMS[0])

    def decode_images(
        self, latents: np.ndarray, size: tuple[int, int], runtime: RuntimeOptions | None = None
    ) -> np.ndarray:
        """Latents -> images of ``size`` through this codec's very model (another fingerprint is refused)."""
        return self.pipeline.inverse(latents, self.spec(size, runtime, steps=False), "vae", STAGE_ORDER[0])


@lru_cache(maxsize=1024)
def _steps(
    quantize: Quantize, wavelet: Wavelet, table: AllocationTable | None, latent_shape: tuple[int, ...]
) -> np.ndarray:
    """``Codec.steps``, kept: the streams of a store share a few steps and shapes (read-only arrays)."""
    steps = quantize.steps(wavelet.bands(latent_shape), latent_shape[0], wavelet, table)
    steps.flags.writeable = False
    return steps


def calibration_key(transform: str, wavelet: Wavelet) -> str:
    """How a model's registry entry keys what it measured for a channel transform and wavelet."""
    return f"{transform}-{wavelet.name}-{wavelet.levels}"


def fitting_transform(calibration: dict[str, Any], channels: int, wavelet: Wavelet) -> ChannelTransform:
    """The channel transform a model is calibrated for with ``wavelet``: Hadamard first where the
    channel count is a power of two; uncalibrated, Hadamard or identity as the count allows."""
    power_of_two = channels & (channels - 1) == 0
    usable = ("hadamard", "identity") if power_of_two else ("identity",)
    for transform in usable:
        if calibration_key(transform, wavelet) in calibration:
            return ChannelTransform(transform)
    return ChannelTransform(usable[0])
