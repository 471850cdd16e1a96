"""How faithful a model is on its own: encode then decode with no quantization."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np

from vaeflow.foundations import metrics
from vaeflow.models.onnx_vae import OnnxVAE, load_model


def reconstruction(model: str | OnnxVAE, images: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean PSNR and MS-SSIM of encode -> decode, and the median seconds per image each way.

    ``model`` is a registered name or a loaded model.
    """
    vae = load_model(model) if isinstance(model, str) else model
    psnr, ms_ssim, encode, decode = [], [], [], []
    for image in images:
        start = time.perf_counter()
        latent = vae.encode(image[None])
        middle = time.perf_counter()
        decoded = vae.decode(latent, image.shape[:2])[0]
        encode.append(middle - start)
        decode.append(time.perf_counter() - middle)
        psnr.append(metrics.psnr(image, decoded))
        ms_ssim.append(metrics.ms_ssim(image, decoded))
    return {
        "psnr": float(np.mean(psnr)),
        "ms_ssim": float(np.mean(ms_ssim)),
        "encode_s": statistics.median(encode),
        "decode_s": statistics.median(decode),
    }
