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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vaeflow.codec import format as stream_format
from vaeflow.codec.dropmodel import DropModel
from vaeflow.errors import ModelError, PipelineError
from vaeflow.models import (
    ModelRef,
    Registry,
    RuntimeOptions,
    latent_unit_of,
    load_model,
    pad_images,
    padded_shape,
)
from vaeflow.stages import (
    VAE,
    ChannelTransform,
    Entropy,
    Pipeline,
    PostFilter,
    Quantize,
    RateTarget,
    Stage,
    Subband,
    TargetRecord,
    Wavelet,
)
from vaeflow.stages import quantize as quantizer
from vaeflow.stages.quantize import AllocationTable
from vaeflow.timing import StageTimer

log = logging.getLogger("vaeflow")

STAGES_RUN = ("vae", "channel", "wavelet", "quantize", "entropy")  # what ``run(until=...)`` accepts


@dataclass(frozen=True)
class Codec:
    """A complete pipeline with its model resolved: each stage, and what the stream header records."""

    model: ModelRef
    vae: VAE
    channel: ChannelTransform
    wavelet: Wavelet
    quantize: Quantize
    entropy: Entropy
    postfilter: PostFilter = field(default_factory=PostFilter)
    target: RateTarget | None = None
    allocation_table: AllocationTable | None = None
    band_gains: tuple[tuple[float, ...], ...] | None = None  # the decoder's calibrated sensitivity (encoder side)
    quality_scale: tuple[float, ...] | None = None  # the model's own steps at qualities 1, 10, ..., 100
    latent_unit: int = 1  # latent samples an image is padded to a multiple of (a model's latent patch)
    drop_model: DropModel | None = None  # predicts an image's PSNR drop (encoder side; vaeflow.codec.dropmodel)

    @classmethod
    def resolve(cls, pipeline: Pipeline, model: str | None = None) -> Codec:
        """The codec of a complete pipeline; ``model`` replaces the pipeline's model name.

        The channel transform ``auto`` becomes the one the model is calibrated for (Hadamard
        first, where the channel count allows it), and the entropy coder ``auto`` the one that fits
        its channel count (``Entropy.fitting``). A model without a calibration for decoder
        allocation with this channel transform and wavelet gets uniform steps, with a warning
        saying how to calibrate it (the stream records the allocation it used, so it always
        decodes); a PSNR-drop target, which is predicted from the calibration, refuses instead.
        """
        missing = [n for n in ("vae", "quantize", "entropy") if pipeline.stage(n) is None]
        if missing or pipeline.stages[-1].output_kind != "streams":
            raise PipelineError(f"a codec pipeline runs from images to streams; it lacks {', '.join(missing)}")
        named: VAE = VAE(model) if model is not None else pipeline.stage("vae")  # type: ignore[assignment]
        entry = Registry.load().resolve(named.model)
        wavelet: Wavelet = pipeline.stage("wavelet") or Wavelet("haar", 0)  # type: ignore[assignment]
        channel: ChannelTransform = pipeline.stage("channel") or ChannelTransform("identity")  # type: ignore[assignment]
        if channel.transform == "auto":
            channel = fitting_transform(entry.calibration, entry.latent_channels, wavelet)
        codec = cls(
            model=entry.ref(),
            vae=VAE(entry.name),  # an alias such as "default" resolved
            channel=channel,
            wavelet=wavelet,
            quantize=pipeline.stage("quantize"),  # type: ignore[arg-type]
            entropy=pipeline.stage("entropy").fitting(entry.latent_channels),  # type: ignore[union-attr]
            postfilter=pipeline.stage("postfilter") or PostFilter(),  # type: ignore[arg-type]
            target=pipeline.target,
            latent_unit=latent_unit_of(entry.latent_convention()),
        )
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
    def calibration_key(self) -> str:
        return calibration_key(self.channel.transform, self.wavelet)

    def pipeline(self) -> Pipeline:
        return Pipeline(
            (self.postfilter, self.vae, self.channel, self.wavelet, self.quantize, self.entropy), self.target
        )

    def settings(self) -> dict[str, Any]:
        """What a store records of the codec that wrote it: the model reference and every stage."""
        return {"model": self.model.to_dict(), "codec": self.pipeline().to_dict()}

    def with_quantizer(self, quantize: Quantize) -> Codec:
        return replace(self, quantize=quantize)

    def replaced(self, *stages: Stage) -> Codec:
        """This codec with some stages replaced, resolved again (its allocation looked up anew)."""
        by_name = {s.stage_name: s for s in stages}
        pipeline = self.pipeline()
        return Codec.resolve(Pipeline(tuple(by_name.get(s.stage_name, s) for s in pipeline.stages), self.target))

    def with_step(self, step: float) -> Codec:
        """This codec at an explicit step, without its rate target (what a searched stream records)."""
        return replace(self, quantize=self.quantize.with_step(step), target=None)

    def with_quality(self, quality: int) -> Codec:
        """This codec at ``quality``: on the model's own scale where it has one (the stream then
        records the step), else on the global one (the stream records the quality)."""
        if self.quality_scale is not None:
            self.quantize.with_quality(quality)  # validated as any quality
            return self.with_step(quantizer.scaled_step(quality, self.quality_scale))
        return replace(self, quantize=self.quantize.with_quality(quality), target=None)

    def with_target(self, target: RateTarget | None) -> Codec:
        return replace(self, target=target)

    def bands(self, latent_shape: tuple[int, ...]) -> tuple[Subband, ...]:
        return self.wavelet.bands(latent_shape)

    def steps(self, latent_shape: tuple[int, ...]) -> np.ndarray:
        """(C, n_bands) quantizer steps for latents of ``latent_shape`` (.., C, h, w)."""
        table = self.allocation_table if self.quantize.allocation == "decoder" else None
        return self.quantize.steps(self.bands(latent_shape), latent_shape[-3], self.wavelet, table)

    # Forward stages, each batch-wise (leading N axis).
    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """The shape an image of this size is encoded at (``vaeflow.models.padded_shape``)."""
        return padded_shape(height, width, self.model.downsample * self.latent_unit)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The latent of an image of this size: what the VAE gives for it and what its stream holds."""
        return self.model.latent_shape(height, width, self.latent_unit)

    def encode_latents(self, images: np.ndarray, runtime: RuntimeOptions | None = None) -> np.ndarray:
        """Same-size images (N, H, W, 3) -> their exact latents (N, C, h, w): each edge-padded to its
        padded shape only, as ``vaeflow.encode_latent`` encodes it (images already padded stay as they are)."""
        padded = pad_images(images, self.model.downsample * self.latent_unit)
        return self.vae.forward(padded, load_model(self.model, runtime))

    def transform(self, latents: np.ndarray) -> np.ndarray:
        return self.wavelet.forward(self.channel.forward(latents))

    def quantize_coefficients(self, coeffs: np.ndarray) -> np.ndarray:
        return self.quantize.forward(coeffs, self.steps(coeffs.shape), self.bands(coeffs.shape))

    def header(self, size: tuple[int, int], record: TargetRecord | None = None) -> stream_format.StreamHeader:
        return stream_format.StreamHeader(
            self.model, size[0], size[1], self.channel, self.wavelet, self.quantize, self.entropy, self.postfilter,
            record, latent_unit=self.latent_unit,
        )  # fmt: skip

    def entropy_code(
        self, symbols: np.ndarray, sizes: list[tuple[int, int]], record: TargetRecord | None = None
    ) -> list[bytes]:
        """Symbols (N, C, h, w) and each image's original (H, W) -> one stream per image."""
        if not sizes:
            return []
        bands = self.bands(symbols.shape)
        prefix = self.table_bytes()
        return [
            stream_format.pack(self.header(size, record), prefix + self.entropy.forward(sym, bands))
            for sym, size in zip(symbols, sizes, strict=True)
        ]

    def table_bytes(self) -> bytes:
        """The allocation table as the payload carries it (see ``quantize.pack_table``)."""
        if self.quantize.allocation != "decoder" or self.allocation_table is None:
            return b""
        return quantizer.pack_table(np.asarray(self.allocation_table))

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
        if until not in STAGES_RUN:
            raise PipelineError(f"unknown stage {until!r}; choose one of {STAGES_RUN}")
        if self.target is not None and until in ("quantize", "entropy"):
            raise PipelineError(
                f"this codec searches each image's step for {self.target}; run it to 'wavelet', or code "
                "with vaeflow.compress"
            )
        single = images.ndim == 3
        batch = images[None] if single else images
        out = self._run(batch, until, runtime, timer or StageTimer())
        return out[0] if single else out

    def _run(self, images: np.ndarray, until: str, runtime: RuntimeOptions | None, timer: StageTimer) -> Any:
        with timer("vae"):
            out: Any = self.encode_latents(images, runtime)
        if until == "vae":
            return out
        with timer("channel"):
            out = self.channel.forward(out)
        if until == "channel":
            return out
        with timer("wavelet"):
            out = self.wavelet.forward(out)
        if until == "wavelet":
            return out
        with timer("quantize"):
            out = self.quantize_coefficients(out)
        if until == "quantize":
            return out
        with timer("entropy"):
            return self.entropy_code(out, [(images.shape[1], images.shape[2])] * images.shape[0])

    # Inverse stages.
    @classmethod
    def from_header(cls, header: stream_format.StreamHeader) -> Codec:
        """The codec a stream's header describes (without its allocation table)."""
        return cls(
            model=header.model,
            vae=VAE(header.model.name),
            channel=header.channel,
            wavelet=header.wavelet,
            quantize=header.quantize,
            entropy=header.entropy,
            postfilter=header.postfilter,
            latent_unit=header.latent_unit,
        )

    @classmethod
    def from_stream(cls, header: stream_format.StreamHeader, payload: memoryview) -> tuple[Codec, memoryview]:
        """The codec that decodes a stream, and the entropy coder's part of its payload."""
        codec = cls.from_header(header)
        if header.quantize.allocation != "decoder":
            return codec, payload
        shape = (header.model.latent_channels, len(header.wavelet.all_bands()))
        table, used = quantizer.unpack_table(payload, shape)
        return replace(codec, allocation_table=tuple(tuple(int(v) for v in row) for row in table)), payload[used:]

    def decode_symbols(self, payload: bytes | memoryview, latent_shape: tuple[int, int, int]) -> np.ndarray:
        """One stream's payload -> symbols (1, C, h, w)."""
        return self.entropy.inverse(payload, latent_shape, self.bands(latent_shape))[None]

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        return self.quantize.inverse(symbols, self.steps(symbols.shape), self.bands(symbols.shape))

    def untransform(self, coeffs: np.ndarray) -> np.ndarray:
        return self.channel.inverse(self.wavelet.inverse(coeffs))

    def decode_images(
        self, latents: np.ndarray, size: tuple[int, int], runtime: RuntimeOptions | None = None
    ) -> np.ndarray:
        """Latents -> images through this codec's very model (another fingerprint is refused)."""
        return self.postfilter.inverse(self.vae.inverse(latents, load_model(self.model, runtime), size))


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
