"""Composing stages into a pipeline, and running a complete one as a codec.

``VAE() | Hadamard() | Wavelet("cdf53", 3) | Quantize(quality=50) | ANS()`` builds a
``Pipeline``; adjacent stages must agree on the kind of data between them. A complete
pipeline (from images to streams) resolves to a ``Codec``, which runs each stage
forward, writes the stream header, and from a header alone rebuilds the codec that
decodes it: the inverse is derived, never configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vaeflow import bitstream
from vaeflow.errors import CorruptStreamError, ModelError, PipelineError
from vaeflow.models import RuntimeOptions, load_model
from vaeflow.stages import channel, entropy, postfilter, quantize, vae, wavelet
from vaeflow.stages.base import Stage
from vaeflow.stages.channel import ChannelTransform
from vaeflow.stages.entropy import ANS
from vaeflow.stages.postfilter import PostFilter
from vaeflow.stages.quantize import Quantize
from vaeflow.stages.vae import VAE
from vaeflow.stages.wavelet import Subband, Wavelet

log = logging.getLogger("vaeflow")

STAGE_ORDER = ("postfilter", "vae", "channel", "wavelet", "quantize", "ans")


@dataclass(frozen=True)
class Pipeline:
    """An ordered chain of stages whose data kinds connect."""

    stages: tuple[Stage, ...]
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for stage in self.stages:
            if not isinstance(stage, Stage):
                raise PipelineError(f"{stage!r} is not a vaeflow stage")
        for prev, nxt in zip(self.stages, self.stages[1:], strict=False):
            if prev.output_kind != nxt.input_kind:
                raise PipelineError(
                    f"stage {type(nxt).__name__} takes {nxt.input_kind} but the stage before it, "
                    f"{type(prev).__name__}, produces {prev.output_kind}"
                )

    def __or__(self, other: Any) -> Pipeline:
        more = other.stages if isinstance(other, Pipeline) else (other,)
        return Pipeline((*self.stages, *more), self.description)

    def __str__(self) -> str:
        return " | ".join(repr(s) for s in self.stages)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.stage_name == name), None)

    def codec(self) -> Codec:
        """The complete codec; optional stages left out become identity."""
        missing = [n for n in ("vae", "quantize", "ans") if self.stage(n) is None]
        if missing or self.stages[-1].output_kind != "streams":
            raise PipelineError(f"a codec pipeline runs from images to streams; it lacks {', '.join(missing)}")
        return Codec(
            vae=self.stage("vae"),  # type: ignore[arg-type]
            channel=self.stage("channel") or ChannelTransform("identity"),  # type: ignore[arg-type]
            wavelet=self.stage("wavelet") or Wavelet("haar", 0),  # type: ignore[arg-type]
            quantize=self.stage("quantize"),  # type: ignore[arg-type]
            ans=self.stage("ans"),  # type: ignore[arg-type]
            postfilter=self.stage("postfilter") or PostFilter(),  # type: ignore[arg-type]
        )

    def run(self, images: np.ndarray, until: str = "ans", runtime: RuntimeOptions | None = None) -> Any:
        """Run the stages forward up to and including ``until``, and return what it gives.

        ``images`` is a batch (N x H x W x 3 uint8) or one image (H x W x 3, H x W), which
        gives one result. ``until`` is one of vae (latents), channel, wavelet
        (coefficients), quantize (symbols) or ans (streams).
        """
        if until not in STAGE_ORDER:
            raise PipelineError(f"unknown stage {until!r}; choose one of {STAGE_ORDER}")
        single = isinstance(images, np.ndarray) and images.ndim in (2, 3)
        if single:
            from vaeflow.api import as_rgb

            images = as_rgb(images)[None]
        out = self.codec().calibrated().run(images, until, runtime)
        return out[0] if single else out


@dataclass
class StageTimer:
    """Seconds spent in each stage, summed over calls, and each call's span (for traces)."""

    seconds: dict[str, float] = field(default_factory=dict)
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (stage, start, end), epoch seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, start = time.time(), time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            self.spans.append((name, wall, wall + elapsed))


@dataclass(frozen=True)
class Codec:
    """A complete pipeline: each stage's parameters, and the stream header they imply."""

    vae: VAE
    channel: ChannelTransform
    wavelet: Wavelet
    quantize: Quantize
    ans: ANS
    postfilter: PostFilter = field(default_factory=PostFilter)
    allocation_table: tuple[tuple[int, ...], ...] | None = None  # (C, all bands) int8, decoder allocation

    def bands(self, latent_shape: tuple[int, ...]) -> tuple[Subband, ...]:
        return wavelet.subbands(latent_shape[-2], latent_shape[-1], self.wavelet.levels)

    @property
    def calibration_key(self) -> str:
        return f"{self.channel.transform}-{self.wavelet.name}-{self.wavelet.levels}"

    def steps(self, latent_shape: tuple[int, ...]) -> np.ndarray:
        """(C, n_bands) quantizer steps for latents of ``latent_shape`` (.., C, h, w)."""
        bands = self.bands(latent_shape)
        if self.quantize.allocation == "decoder":
            if self.allocation_table is None:
                raise PipelineError("decoder-aware allocation needs the model's calibration table")
            names = [b.name for b in wavelet.all_subbands(self.wavelet.levels)]
            table = np.asarray(self.allocation_table)[:, [names.index(b.name) for b in bands]]
            ones = {b.name: 1.0 for b in bands}  # calibrated gains already include the wavelet's
            return quantize.band_steps(bands, ones, self.quantize.base_step, quantize.table_weights(table))
        if self.wavelet.levels:
            gains = wavelet.synthesis_gains(self.wavelet.name, self.wavelet.levels)
        else:
            gains = {bands[0].name: 1.0}
        weights = np.ones((latent_shape[-3], 1))
        return quantize.band_steps(bands, gains, self.quantize.base_step, weights)

    def calibrated(self) -> Codec:
        """This codec with its allocation table looked up in the registry, when it needs one.

        A model without a calibration for this channel transform and wavelet falls back to
        uniform steps, with a warning that says how to calibrate it; the stream records
        which allocation it used, so it always decodes.
        """
        if self.quantize.allocation != "decoder" or self.allocation_table is not None:
            return self
        from vaeflow.models.registry import Registry

        entry = Registry.load().resolve(self.vae.model)
        gains = entry.calibration.get(self.calibration_key)
        if gains is None:
            log.warning(
                "model %r has no calibration for %r, so steps are uniform; run `vaeflow models calibrate %s "
                "--data PHOTOS --channel %s --wavelet %s --levels %d` for decoder-aware steps",
                entry.name, self.calibration_key, entry.name, self.channel.transform, self.wavelet.name,
                self.wavelet.levels,
            )  # fmt: skip
            return replace(self, quantize=replace(self.quantize, allocation="uniform"))
        bands = wavelet.all_subbands(self.wavelet.levels)
        table = quantize.allocation_table(np.asarray(gains), bands, self.wavelet.levels)
        return replace(self, allocation_table=tuple(tuple(int(v) for v in row) for row in table))

    # Forward stages, each batch-wise (leading N axis).
    def encode_latents(self, images: np.ndarray, runtime: RuntimeOptions | None = None) -> np.ndarray:
        return vae.forward(images, self.vae, runtime)

    def transform(self, latents: np.ndarray) -> np.ndarray:
        return wavelet.forward(channel.forward(latents, self.channel), self.wavelet)

    def quantize_coefficients(self, coeffs: np.ndarray) -> np.ndarray:
        rounding, steps, bands = self.quantize.rounding, self.steps(coeffs.shape), self.bands(coeffs.shape)
        symbols = quantize.forward(coeffs, steps, bands, rounding)
        return quantize.optimize(coeffs, symbols, steps, bands, rounding) if self.quantize.rdo else symbols

    def entropy_code(
        self,
        symbols: np.ndarray,
        sizes: list[tuple[int, int]],
        runtime: RuntimeOptions | None = None,
        target: tuple[str, float, float] | None = None,
    ) -> list[bytes]:
        """Symbols (N, C, h, w) and each image's original (H, W) -> one stream per image."""
        if not sizes:
            return []
        bands = self.bands(symbols.shape)
        base = replace(self.header(sizes[0], runtime), target=target)
        prefix = self.table_bytes()
        return [
            bitstream.pack(replace(base, height=size[0], width=size[1]), prefix + entropy.encode(sym, bands, self.ans))
            for sym, size in zip(symbols, sizes, strict=True)
        ]

    def table_bytes(self) -> bytes:
        """The allocation table as the payload carries it (see ``quantize.pack_table``)."""
        if self.quantize.allocation != "decoder" or self.allocation_table is None:
            return b""
        return quantize.pack_table(np.asarray(self.allocation_table))

    def run(
        self,
        images: np.ndarray,
        until: str = "ans",
        runtime: RuntimeOptions | None = None,
        timer: StageTimer | None = None,
    ) -> Any:
        timer = timer or StageTimer()
        sizes = [(images.shape[1], images.shape[2])] * images.shape[0]
        with timer("vae"):
            latents = self.encode_latents(images, runtime)
        if until == "vae":
            return latents
        with timer("channel"):
            mixed = channel.forward(latents, self.channel)
        if until == "channel":
            return mixed
        with timer("wavelet"):
            coeffs = wavelet.forward(mixed, self.wavelet)
        if until == "wavelet":
            return coeffs
        if self.quantize.target is not None:  # rate control: each image searches its own step
            from vaeflow import ratecontrol

            with timer("quantize"):
                if until == "quantize":
                    return np.concatenate(
                        [ratecontrol.search(self, coeffs[i : i + 1], sizes[i], images[i], runtime).symbols
                         for i in range(len(sizes))]
                    )  # fmt: skip
                return ratecontrol.encode_to_target(self, images, coeffs, runtime)
        with timer("quantize"):
            symbols = self.quantize_coefficients(coeffs)
        if until == "quantize":
            return symbols
        with timer("ans"):
            return self.entropy_code(symbols, sizes, runtime)

    # Inverse stages.
    def decode_symbols(self, payload: bytes | memoryview, latent_shape: tuple[int, int, int]) -> np.ndarray:
        """One stream's payload -> symbols (1, C, h, w)."""
        return entropy.decode(payload, latent_shape, self.bands(latent_shape), self.ans)[None]

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        rounding = self.quantize.rounding
        return quantize.inverse(symbols, self.steps(symbols.shape), self.bands(symbols.shape), rounding)

    def untransform(self, coeffs: np.ndarray) -> np.ndarray:
        return channel.inverse(wavelet.inverse(coeffs, self.wavelet), self.channel)

    def decode_images(
        self, latents: np.ndarray, size: tuple[int, int], runtime: RuntimeOptions | None = None
    ) -> np.ndarray:
        return postfilter.inverse(vae.inverse(latents, self.vae, size, runtime), self.postfilter)

    def header(self, size: tuple[int, int], runtime: RuntimeOptions | None = None) -> bitstream.StreamHeader:
        model = load_model(self.vae.model, runtime)
        return bitstream.StreamHeader(
            model=model.name,
            fingerprint=model.fingerprint_bytes,
            latent_channels=model.latent_channels,
            downsample=model.downsample,
            height=size[0],
            width=size[1],
            channel_transform=self.channel.transform,
            wavelet=self.wavelet.name,
            levels=self.wavelet.levels,
            quality=self.quantize.quality,
            step=self.quantize.step,
            rounding=self.quantize.rounding,
            coder=self.ans.coder,
            postfilter_sigma=self.postfilter.sigma,
            weighted=self.quantize.allocation == "decoder",
            rdo=self.quantize.rdo,
        )

    @classmethod
    def from_header(cls, header: bitstream.StreamHeader) -> Codec:
        """The codec a stream's header describes; settings no codec allows mean a damaged stream."""
        try:
            codec = cls._from_header(header)
            if codec.channel.transform == "hadamard":
                channel.hadamard_matrix(header.latent_channels)
        except PipelineError as exc:
            raise CorruptStreamError(f"stream header holds impossible settings: {exc}") from exc
        return codec

    @classmethod
    def _from_header(cls, header: bitstream.StreamHeader) -> Codec:
        allocation = "decoder" if header.weighted else "uniform"
        return cls(
            vae=VAE(header.model),
            channel=ChannelTransform(header.channel_transform),
            wavelet=Wavelet(header.wavelet, header.levels),
            quantize=Quantize(
                quality=header.quality,
                step=header.step,
                rounding=header.rounding,
                allocation=allocation,
                rdo=header.rdo,
            ),
            ans=ANS(header.coder),
            postfilter=PostFilter(header.postfilter_sigma),
        )

    @classmethod
    def from_stream(cls, header: bitstream.StreamHeader, payload: memoryview) -> tuple[Codec, memoryview]:
        """The codec that decodes a stream, and the entropy coder's part of its payload."""
        codec = cls.from_header(header)
        if not header.weighted:
            return codec, payload
        shape = (header.latent_channels, len(wavelet.all_subbands(header.levels)))
        table, used = quantize.unpack_table(payload, shape)
        return replace(codec, allocation_table=tuple(tuple(int(v) for v in row) for row in table)), payload[used:]

    def pipeline(self) -> Pipeline:
        return Pipeline((self.postfilter, self.vae, self.channel, self.wavelet, self.quantize, self.ans))


def check_model(header: bitstream.StreamHeader, runtime: RuntimeOptions | None = None) -> None:
    """Refuse a stream whose model is not the registry's model of that name."""
    model = load_model(header.model, runtime)
    if (model.latent_channels, model.downsample) != (header.latent_channels, header.downsample):
        raise CorruptStreamError(
            f"stream claims {header.latent_channels} latent channels at downsample {header.downsample}; "
            f"model {model.name!r} has {model.latent_channels} at {model.downsample}"
        )
    if model.fingerprint_bytes != header.fingerprint:
        raise ModelError(
            f"stream was made with model {header.model!r} (decoder fingerprint {header.fingerprint.hex()}), "
            f"but the registry's {model.name!r} has fingerprint {model.fingerprint}"
        )
