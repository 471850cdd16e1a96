"""The Tiny AutoEncoder family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2), written from its layout.

Encoder: conv(3->64), Block; three times [stride-2 conv (no bias), 3 Blocks]; conv(64->C).
Decoder: tanh(x/3)*3, conv(C->64), ReLU, 3 Blocks; three times [2x nearest upsample,
conv (no bias), 3 Blocks] with 1 Block in the last; conv(64->3). A Block is
conv-ReLU-conv-ReLU-conv plus the input, then ReLU. The flux-2 variant (TAEF2) adds,
in some Blocks, ``x + conv1x1(n->4n) -> GroupNorm(4, 4n) -> ReLU -> conv1x1(4n->n)``
first; which Blocks have it is read from the weights. Images are in [0, 1]; latents raw.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vaeflow.convert.onnx_export import export
from vaeflow.foundations.errors import ModelError
from vaeflow.models.registry import REGISTRY_FILE, ModelEntry, register

WIDTH = 64


def conv(n_in: int, n_out: int, **kwargs: object) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)  # type: ignore[arg-type]


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n: int, pooled: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n, 4 * n, 1, bias=False),
                nn.GroupNorm(4, 4 * n),
                nn.ReLU(),
                nn.Conv2d(4 * n, n, 1, bias=False),
            )
            if pooled
            else None
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _pooled(state: dict[str, torch.Tensor], index: int) -> bool:
    return f"{index}.pool.0.weight" in state


def build_encoder(state: dict[str, torch.Tensor]) -> nn.Sequential:
    channels = int(state["14.weight"].shape[0])
    layers: list[nn.Module] = [conv(3, WIDTH), Block(WIDTH, _pooled(state, 1))]
    for stage in range(3):
        first = 2 + 4 * stage
        layers.append(conv(WIDTH, WIDTH, stride=2, bias=False))
        layers += [Block(WIDTH, _pooled(state, first + k)) for k in (1, 2, 3)]
    layers.append(conv(WIDTH, channels))
    return nn.Sequential(*layers)


def build_decoder(state: dict[str, torch.Tensor]) -> nn.Sequential:
    channels = int(state["1.weight"].shape[1])
    layers: list[nn.Module] = [Clamp(), conv(channels, WIDTH), nn.ReLU()]
    layers += [Block(WIDTH, _pooled(state, k)) for k in (3, 4, 5)]
    for first, blocks in ((6, 3), (11, 3), (16, 1)):
        layers += [nn.Upsample(scale_factor=2), conv(WIDTH, WIDTH, bias=False)]
        layers += [Block(WIDTH, _pooled(state, first + 2 + k)) for k in range(blocks)]
    layers.append(conv(WIDTH, 3))
    return nn.Sequential(*layers)


def load_state(path: Path, cast: bool = True) -> dict[str, torch.Tensor]:
    """A weights file's state dict (``.safetensors`` or a torch pickle, read without code), as float32 unless
    ``cast`` is False; damage is a ModelError naming the file."""
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: only .safetensors weights need it

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for bad files
        raise ModelError(f"cannot read the weights {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return {k: v.float() for k, v in state.items()} if cast else state


def load_tae(encoder_path: Path, decoder_path: Path) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder modules with the given weights, in float32 eval mode."""
    modules = []
    for path, build in ((encoder_path, build_encoder), (decoder_path, build_decoder)):
        state = load_state(path)
        try:
            module = build(state)
            module.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"{path} does not hold Tiny AutoEncoder weights: {exc}") from exc
        modules.append(module.eval())
    return modules[0], modules[1]


def import_tae(encoder_path: Path, decoder_path: Path, name: str, home: Path, license: str = "MIT") -> Path:
    """Convert TAE weights to ONNX under ``home/models/name`` and register them there."""
    encoder, decoder = load_tae(encoder_path, decoder_path)
    channels = int(load_state(decoder_path)["1.weight"].shape[1])
    target = home / "models" / name
    export(encoder, target / "encoder.onnx", 3, "image", "latent")
    export(decoder, target / "decoder.onnx", channels, "latent", "image")
    entry = ModelEntry(
        name=name,
        encoder=(target / "encoder.onnx").resolve(),
        decoder=(target / "decoder.onnx").resolve(),
        latent_channels=channels,
        downsample=8,
        input_range=(0.0, 1.0),
        license=license,
        description=f"Tiny AutoEncoder imported from {encoder_path.name} and {decoder_path.name}",
    )
    return register(entry, home / REGISTRY_FILE)
