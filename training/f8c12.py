"""f8c12-v2: 12 latent channels at 1/8, a deeper decoder, and a learned density for the rate term.

The trunk is f8c4-v1's (pixel-unshuffle, residual 3x3 convolutions at 1/4 and 1/8), with three
times the latent channels and one more residual block at 1/8 in the decoder (1.1x v1's decoding
time on Kodak). ``widen_from_v1`` starts it as the same function as v1: the new blocks
are identities, the new latent channels start small and the decoder's weights for them at zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from training import f8c4

LATENT_CHANNELS = 12
DOWNSAMPLE = 8


class Encoder(f8c4.Encoder):
    """[-1, 1] images (N, 3, H, W), H and W multiples of 8 -> latents (N, 12, H/8, W/8): v1's, wider."""

    def __init__(self) -> None:
        super().__init__(latent=LATENT_CHANNELS)


class Decoder(f8c4.Decoder):
    """Latents (N, 12, h, w) -> [-1, 1] images (N, 3, 8h, 8w) (not clamped): v1's, one block deeper."""

    def __init__(self) -> None:
        super().__init__(blocks8=5, latent=LATENT_CHANNELS)


class FactorizedDensity(nn.Module):
    """A learned density per latent channel (Balle et al. 2018, appendix 6.1): a monotonic CDF.

    ``bits(z, step)`` gives -log2 of the probability of ``z``'s bin of width ``step`` around it,
    which with uniform noise of that width added to ``z`` is the rate of the quantized latent.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = float(torch.log(torch.expm1(torch.tensor(1 / scale / widths[i + 1]))))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (channels, 1, n) -> the CDF's logits, same shape."""
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def bits(self, z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """z (N, C, h, w), step broadcastable to it -> bits per element, same shape."""
        n, c, h, w = z.shape
        half = (step / 2).expand_as(z)
        flat = lambda t: t.permute(1, 0, 2, 3).reshape(c, 1, -1)  # noqa: E731
        upper = self._logits(flat(z + half))
        lower = self._logits(flat(z - half))
        sign = -torch.sign(upper + lower).detach()  # the CDF's tails are subtracted where they are accurate
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        bits = -torch.log2(p.clamp_min(1e-9))
        return bits.reshape(c, n, h, w).permute(1, 0, 2, 3)


def widen_from_v1(
    encoder: Encoder,
    decoder: Decoder,
    v1: dict[str, dict[str, torch.Tensor]],
    v1_std: tuple[float, ...],
    target_std: float = 4.0,
) -> None:
    """Load f8c4-v1's weights into the matching parts; the added blocks start as identities.

    ``v1_std`` (v1's latent std per channel) rescales v1's four channels to a std of ``target_std``
    (the encoder's output and the decoder's input by reciprocal factors: the same function), so
    that the quantization noise of training's steps meets latents of a sensible size at once.
    """
    _load_into(encoder.net, v1["encoder"], {}, extra_out=True)
    _load_into(decoder.net, v1["decoder"], {5: 6, 7: 8, 8: 9, 9: 10}, extra_in=True)
    added: Any = decoder.net[5]
    last: Any = encoder.net[-1]
    first: Any = decoder.net[0]
    with torch.no_grad():
        added.conv2.weight.zero_()  # the added block
        factor = torch.tensor([target_std / s for s in v1_std])
        last.weight[:4] *= factor[:, None, None, None]
        last.bias[:4] *= factor
        first.weight[:, :4] /= factor[None, :, None, None]


def _load_into(
    net: nn.Sequential, weights: dict[str, torch.Tensor], moved: dict[int, int], *, extra_out: bool = False,
    extra_in: bool = False,
) -> None:  # fmt: skip
    """Copy v1's layer ``i`` (``net.i.*``) into layer ``moved.get(i, i)``; a latent-facing conv keeps
    v1's four channels first, the others small (encoder outputs) or zero (decoder inputs)."""
    state = net.state_dict()
    for key, value in weights.items():
        _, index, rest = key.split(".", 2)
        target = f"{moved.get(int(index), int(index))}.{rest}"
        value = value.float()
        if state[target].shape != value.shape:
            grown = state[target].clone()
            if extra_out:  # encoder's last conv: (12, width, 3, 3) from (4, width, 3, 3)
                grown[4:] *= 0.1
                grown[: value.shape[0]] = value
            elif extra_in:  # decoder's first conv: (width, 12, 3, 3) from (width, 4, 3, 3)
                grown[:, 4:] = 0.0
                grown[:, : value.shape[1]] = value
            value = grown
        state[target] = value
    net.load_state_dict(state)
