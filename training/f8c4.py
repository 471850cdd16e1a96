"""The default model: a compact f8c4 autoencoder (8x down, 4 latent channels).

Downsampling is lossless pixel-unshuffle, and the work happens in residual 3x3
convolutions at 1/4 and 1/8 resolution, which keeps training fast on a CPU.
The decoder is larger than the encoder: it decides the reconstruction quality.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

LATENT_CHANNELS = 4
DOWNSAMPLE = 8


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():  # start near identity: deep residual stacks then train stably
            self.conv2.weight.mul_(0.1)
            nn.init.zeros_(self.conv2.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class Encoder(nn.Module):
    """[-1, 1] images (N, 3, H, W), H and W multiples of 8 -> latents (N, 4, H/8, W/8)."""

    def __init__(
        self, width4: int = 64, width8: int = 128, blocks4: int = 1, blocks8: int = 2, latent: int = LATENT_CHANNELS
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.PixelUnshuffle(4),
            nn.Conv2d(48, width4, 3, padding=1),
            *[ResBlock(width4) for _ in range(blocks4)],
            nn.PixelUnshuffle(2),
            nn.Conv2d(4 * width4, width8, 1),
            *[ResBlock(width8) for _ in range(blocks8)],
            nn.Conv2d(width8, latent, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latents (N, 4, h, w) -> [-1, 1] images (N, 3, 8h, 8w) (not clamped)."""

    def __init__(
        self, width4: int = 64, width8: int = 160, blocks4: int = 2, blocks8: int = 4, latent: int = LATENT_CHANNELS
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent, width8, 3, padding=1),
            *[ResBlock(width8) for _ in range(blocks8)],
            nn.Conv2d(width8, 4 * width4, 1),
            nn.PixelShuffle(2),
            *[ResBlock(width4) for _ in range(blocks4)],
            nn.Conv2d(width4, 48, 3, padding=1),
            nn.PixelShuffle(4),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def parameter_count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
