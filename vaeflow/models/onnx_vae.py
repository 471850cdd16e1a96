"""Running a registered VAE through ONNX Runtime.

One ``OnnxVAE`` per (model, options) is cached per process by ``load_model``; tasks
refer to models by their ``ModelRef``, so sessions are never pickled into a task graph. Sessions use
explicit options: ``threads`` intra-op threads, one inter-op thread, no idle spinning,
full graph optimisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from vaeflow.foundations.errors import CorruptStreamError, ModelError
from vaeflow.models.registry import ModelEntry, ModelRef, Registry
from vaeflow.models.tiling import apply_tiled

log = logging.getLogger("vaeflow")

LAYOUT_KEY = "vaeflow.layout"


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs. ``providers=("auto",)`` takes CUDA when ONNX Runtime offers it.

    ``"cuda"`` (or ``"cuda:N"`` for device N) asks for onnxruntime-gpu's CUDA execution
    provider, run with I/O binding; ``"cpu"`` for the CPU one.

    Images whose height or width exceeds ``tile`` pixels are coded in overlapping tiles
    of ``tile`` pixels, blended across ``overlap`` pixels.
    """

    threads: int | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tile: int = 2048
    overlap: int = 128

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ModelError(f"threads must be at least 1, got {self.threads}")
        if self.tile < 64 or self.overlap < 0 or self.overlap >= self.tile // 2:
            raise ModelError(f"need tile >= 64 and 0 <= overlap < tile/2, got tile={self.tile} overlap={self.overlap}")

    def intra_op_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        return int(os.environ.get("VAEFLOW_THREADS", 0)) or (os.cpu_count() or 1)


def _session(path: Any, options: RuntimeOptions) -> Any:
    import onnxruntime as ort  # heavy: loaded only when a model runs (reading latents needs none)

    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    wanted = _providers(options.providers, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), so, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelError(f"model file {path} is not a loadable ONNX model: {exc}") from exc
    used, first = session.get_providers(), wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
    log.info("loaded %s on %s (%d threads)", path.name, used[0], so.intra_op_num_threads)
    if used[0] != first:
        log.warning("%s asked for %s but runs on %s", path.name, first, used[0])
    return session


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _providers(names: tuple[str, ...], available: list[str]) -> list[Any]:
    """ONNX Runtime's provider list for ``names``: ``auto``, ``cuda[:N]``, ``cpu`` or its own names."""
    if names == ("auto",):
        return [p for p in (CUDA, CPU) if p in available]
    wanted: list[Any] = []
    for name in names:
        low = name.lower()
        if low == "cuda" or low.startswith("cuda:"):
            if low != "cuda" and not low[5:].isdigit():
                raise ModelError(f"provider {name!r} is not cuda or cuda:N with N a device number")
            wanted.append((CUDA, {"device_id": int(low[5:] or 0)}))
        else:
            wanted.append(CPU if low == "cpu" else name)
    names_only = [w if isinstance(w, str) else w[0] for w in wanted]
    unknown = [p for p in names_only if p not in available]
    if unknown:
        hint = ""
        if CUDA in unknown:
            hint = (
                "; CUDA needs onnxruntime-gpu in place of onnxruntime: "
                "pip uninstall -y onnxruntime && pip install 'vaeflow[gpu]'"
            )
        raise ModelError(f"execution providers {unknown} are not available; available: {available}{hint}")
    return wanted  # ONNX Runtime adds the CPU provider for operators the others lack


class _Net:
    """One ONNX graph: names and layout read from the file, NCHW float32 in and out."""

    def __init__(self, path: Any, options: RuntimeOptions) -> None:
        self.session = _session(path, options)
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.layout = meta.get(LAYOUT_KEY, "NCHW")
        if self.layout not in ("NCHW", "NHWC"):
            raise ModelError(f"model file {path} declares layout {self.layout!r}; supported: NCHW, NHWC")
        cuda = self.session.get_provider_options().get(CUDA, {})
        self.cuda_device = int(cuda.get("device_id", 0)) if self.provider == CUDA else None

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        feed = np.ascontiguousarray(x, np.float32)
        if self.cuda_device is not None:
            y = self._run_bound(feed, self.cuda_device)
        else:
            y = self.session.run([self.output_name], {self.input_name: feed})[0]
        return y.transpose(0, 3, 1, 2) if self.layout == "NHWC" else y

    def _run_bound(self, feed: np.ndarray, device: int) -> np.ndarray:
        """One run on a CUDA device with I/O binding: input copied once, output kept there until the end."""
        import onnxruntime as ort  # heavy: loaded only when a model runs

        binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(feed, "cuda", device)
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, "cuda", device)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])


class OnnxVAE:
    """A registered VAE: ``encode`` uint8 NxHxWx3 -> normalised latents, ``decode`` back."""

    def __init__(self, entry: ModelEntry, options: RuntimeOptions | None = None) -> None:
        self.entry = entry
        self.options = options or RuntimeOptions()
        self.ref = entry.ref()
        self.fingerprint_bytes = self.ref.fingerprint_bytes
        self._encoder: _Net | None = None
        self._decoder: _Net | None = None

    def __reduce__(self) -> Any:
        return (load_model, (self.ref, self.options))

    name = property(lambda self: self.entry.name)
    latent_channels = property(lambda self: self.entry.latent_channels)
    downsample = property(lambda self: self.entry.downsample)
    fingerprint = property(lambda self: self.fingerprint_bytes.hex())

    @property
    def encoder(self) -> _Net:
        if self._encoder is None:
            self._encoder = _Net(self.entry.encoder, self.options)
        return self._encoder

    @property
    def decoder(self) -> _Net:
        if self._decoder is None:
            self._decoder = _Net(self.entry.decoder, self.options)
        return self._decoder

    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (1, -1, 1, 1)
        scale = np.asarray(self.entry.latent_scale, np.float32).reshape(shape)
        shift = np.asarray(self.entry.latent_shift, np.float32).reshape(shape)
        return scale, shift

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.ref.latent_shape(height, width)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, C, ceil(H/s), ceil(W/s)), scaled by the registry.

        Images are padded (edge pixels) to multiples of s and converted to the model's input
        range one tile at a time, so a large image never exists as floats as a whole.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"encode takes uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        s = self.downsample
        n, height, width, _ = images.shape
        lo, hi = self.entry.input_range
        gain, offset = np.float32((hi - lo) / 255.0), np.float32(lo)

        def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
            rows, cols = np.minimum(np.arange(r0, r1), height - 1), np.minimum(np.arange(c0, c1), width - 1)
            x = np.ascontiguousarray(images[:, rows][:, :, cols].transpose(0, 3, 1, 2), dtype=np.float32)
            x *= gain
            x += offset
            return x

        _, latent_height, latent_width = self.latent_shape(height, width)
        raw = np.zeros((n, self.latent_channels, latent_height, latent_width), np.float32)

        def write(row: int, block: np.ndarray) -> None:
            if block.shape[1] != self.latent_channels:
                channels = block.shape[1]
                raise ModelError(
                    f"model {self.name!r}: encoder gives {channels} channels, registry says {self.latent_channels}"
                )
            raw[:, :, row : row + block.shape[2]] = block

        self._run(self.encoder, read, write, (latent_height * s, latent_width * s), 1 / s, s, self.latent_channels)
        scale, shift = self._scale()
        return ((raw - shift) * scale).astype(np.float32)

    def _decode_raw(
        self, latents: np.ndarray, size: tuple[int, int] | None, convert: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """The decoder's output cropped to ``size``, each block of rows put through ``convert``
        ((N, 3, rows, W) in the model's output range -> (N, rows, W, 3)) as soon as it is final."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode takes latents of shape (N, {self.latent_channels}, h, w), got {latents.shape}")
        scale, shift = self._scale()
        raw = latents.astype(np.float32) / scale + shift
        s = self.downsample
        full = (raw.shape[2] * s, raw.shape[3] * s)
        height, width = size if size is not None else full
        out: np.ndarray | None = None

        def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
            return raw[:, :, r0:r1, c0:c1]

        def write(row: int, block: np.ndarray) -> None:
            nonlocal out
            if row >= height:
                return
            part = convert(block[:, :, : height - row, :width])
            if out is None:
                out = np.empty((part.shape[0], height, width, part.shape[3]), part.dtype)
            out[:, row : row + part.shape[1]] = part

        self._run(self.decoder, read, write, raw.shape[2:], s, 1, 3)
        assert out is not None
        return out

    def decode_float(self, latents: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Like ``decode`` but float32 in 0..255, not rounded: for calibration and analysis."""
        lo, hi = self.entry.input_range

        def convert(y: np.ndarray) -> np.ndarray:
            return np.clip((y - np.float32(lo)) * np.float32(255.0 / (hi - lo)), 0, 255).transpose(0, 2, 3, 1)

        return self._decode_raw(latents, size, convert)

    def decode(self, latents: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """float (N, C, h, w) -> uint8 (N, s*h, s*w, 3), cropped to ``size`` (H, W) if given."""
        lo, hi = self.entry.input_range
        gain = np.float32(255.0 / (hi - lo))

        def convert(y: np.ndarray) -> np.ndarray:
            # (y - lo) * 255 / (hi - lo), rounded half up and clipped, in as few passes as possible
            pixels = np.multiply(y, gain, dtype=np.float32)
            pixels += np.float32(0.5 - lo * gain)
            np.clip(pixels, 0, 255, out=pixels)
            return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1), dtype=np.uint8)

        return self._decode_raw(latents, size, convert)

    def _run(
        self,
        net: _Net,
        read: Callable[[int, int, int, int], np.ndarray],
        write: Callable[[int, np.ndarray], None],
        shape: tuple[int, int],
        scale: float,
        unit: int,
        out_channels: int,
    ) -> None:
        """``net`` over an input of ``shape`` (h, w): whole when it fits in a tile, else tiled."""
        px_per_sample = self.downsample if scale >= 1 else 1
        tile = self.options.tile // self.downsample * self.downsample // px_per_sample
        if max(shape) <= tile:
            write(0, net(read(0, shape[0], 0, shape[1])))
            return
        overlap = self.options.overlap // px_per_sample
        apply_tiled(net, read, write, shape, tile=tile, overlap=overlap, unit=unit, scale=scale,
                    out_channels=out_channels)  # fmt: skip


@lru_cache(maxsize=16)
def _cached(entry: ModelEntry, options: RuntimeOptions, stamp: tuple[int, ...]) -> OnnxVAE:
    return OnnxVAE(entry, options)


def load_model(model: str | ModelRef = "default", options: RuntimeOptions | None = None) -> OnnxVAE:
    """The model registered as ``model``, loaded once per process and options.

    Given a ``ModelRef`` (what a codec, a plan or a stream records), the registry's model of
    that name must be the same model: another fingerprint is refused, naming both.
    """
    name = model.name if isinstance(model, ModelRef) else model
    entry = Registry.load().resolve(name)
    if isinstance(model, ModelRef):
        check_ref(model, entry.ref())
    stamp = tuple(_mtime(p) for p in (entry.encoder, entry.decoder))
    return _cached(entry, options or RuntimeOptions(), stamp)


def check_ref(wanted: ModelRef, found: ModelRef) -> None:
    if found.fingerprint != wanted.fingerprint:
        raise ModelError(
            f"needs model {wanted.describe()}, but this registry's {wanted.name!r} is {found.describe()}: "
            "register the same model files under that name (or point VAEFLOW_HOME / VAEFLOW_CONFIG at the "
            "registry that has them)"
        )
    if (found.latent_channels, found.downsample) != (wanted.latent_channels, wanted.downsample):
        raise CorruptStreamError(
            f"stream claims {wanted.latent_channels} latent channels at downsample {wanted.downsample}; "
            f"model {found.name!r} has {found.latent_channels} at {found.downsample}"
        )


def _mtime(path: Any) -> int:
    try:
        return int(os.stat(path).st_mtime_ns)
    except OSError as exc:
        raise ModelError(f"model file {path} does not exist") from exc
