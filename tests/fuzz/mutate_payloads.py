"""Random damage to real payloads of the sequential, class and band coders: each decodes or raises
CorruptStreamError, quickly.

    python tests/fuzz/mutate_payloads.py [RUNS] [SEED]

Payloads are scikit-image's coffee, astronaut and chelsea through the default codec at qualities 30
and 70 (latents 4x50x75, 4x64x64, 4x38x57), and the same symbols replicated to 32 channels (the
class coder's wide weight set), each coded by the three coders. Each run flips bits, truncates,
overwrites, inserts bytes or overwrites the side information. Any other exception stops the run with
the damaged input.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import skimage.data

from vaeflow.codec.api import resolve_codec
from vaeflow.foundations.errors import CorruptStreamError
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders import classes, sequential


def payloads() -> list[tuple[object, bytes, tuple[int, int, int], tuple]]:
    images = [skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea()]
    out = []
    for quality in (30, 70):
        codec = resolve_codec(None, quality, "default")
        for image in images:
            symbols = codec.quantize_coefficients(codec.transform(codec.encode_latents(image[None])))[0]
            for s in (symbols, np.concatenate([symbols] * 8)):
                bands = codec.bands(s.shape)
                out += [(coder, coder.encode(s, bands), s.shape, bands) for coder in (sequential, classes, bandcoder)]
    return out


def damage(payload: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(payload)
    kind = rng.integers(0, 5)
    if kind == 0:
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        b = b[: rng.integers(len(b))]
    elif kind == 2:
        b[rng.integers(len(b))] = int(rng.integers(256))
    elif kind == 3:
        at = int(rng.integers(len(b)))
        b = b[:at] + bytes(int(v) for v in rng.integers(0, 256, int(rng.integers(1, 9)))) + b[at:]
    else:
        b[rng.integers(min(40, len(b)))] = int(rng.integers(256))
    return bytes(b)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    cases = payloads()
    outcomes = {"decoded": 0, "corrupt": 0}
    slowest = 0.0
    for run in range(runs):
        coder, payload, shape, bands = cases[run % len(cases)]
        damaged = damage(payload, rng)
        start = time.perf_counter()
        try:
            out = coder.decode(damaged, shape, bands)  # type: ignore[attr-defined]
            assert out.shape == shape and out.dtype == np.int32
            outcomes["decoded"] += 1
        except CorruptStreamError:
            outcomes["corrupt"] += 1
        except BaseException:
            print(f"run {run}: input {damaged.hex()}", file=sys.stderr)
            raise
        slowest = max(slowest, time.perf_counter() - start)
    print(f"{runs} runs: {outcomes}, slowest {slowest * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
