"""A full-size SDXL-configuration AutoencoderKL (random weights) through vaeflow's import, timed against diffusers.

Builds the VAE of SDXL's vae/config.json with random weights, writes it with
``save_pretrained``, imports it (ONNX export, latent statistics; no calibration), then
times encode + decode of one 256x256 photo through vaeflow's ONNX Runtime and through
diffusers' torch forward on the CPU, alternating, with the same thread count, and checks
that both give the same latent and image. Where onnxruntime-gpu offers CUDA, the same
encode + decode is timed on it too, as images/s against ONNX Runtime on the CPU. Needs the
``diffusers`` extra.

    vaeflow bench diffusers [--threads 2] [--repeats 5] [--size 256]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from diffusers import AutoencoderKL
from skimage import data

import vaeflow
from vaeflow.convert.diffusers_vae import import_diffusers

SDXL_VAE_CONFIG: dict[str, Any] = {  # stabilityai/sdxl-vae vae/config.json
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(threads: int = 2, repeats: int = 5, size: int = 256) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = data.astronaut()[128 : 128 + size, 128 : 128 + size]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VAEFLOW_HOME"] = str(Path(tmp) / "home")
        vae: Any = AutoencoderKL(**SDXL_VAE_CONFIG)
        vae.eval()
        parameters = sum(p.numel() for p in vae.parameters())
        vae.save_pretrained(Path(tmp) / "sdxl-vae")
        start = time.perf_counter()
        import_diffusers(Path(tmp) / "sdxl-vae", "sdxl-random", calibrate=False)
        import_s = time.perf_counter() - start
        runtime = vaeflow.RuntimeOptions(threads=threads)
        model = vaeflow.load_model("sdxl-random", runtime)
        sizes = {p: getattr(model.entry, p).stat().st_size for p in ("encoder", "decoder")}
        x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0)

        def onnx() -> tuple[np.ndarray, np.ndarray]:
            latent = vaeflow.encode_latent(image, model="sdxl-random", runtime=runtime)
            return latent, vaeflow.decode_latent(latent, model="sdxl-random", as_float=True, runtime=runtime)

        def diffusers() -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
                sample = vae.decode(z).sample
            pixels = ((sample[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
            return (z * SDXL_VAE_CONFIG["scaling_factor"]).numpy()[0], pixels

        (ours_latent, ours_image), (their_latent, their_image) = onnx(), diffusers()  # warm-up and parity
        times: dict[str, list[float]] = {"onnxruntime": [], "diffusers": []}
        for _ in range(repeats):
            for name, fn in (("onnxruntime", onnx), ("diffusers", diffusers)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        gpu = _gpu_images_per_s(image, repeats) if "CUDAExecutionProvider" in ort.get_available_providers() else None

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "parameters": parameters,
        "onnx_mb": {k: round(v / 1e6, 1) for k, v in sizes.items()},
        "import_s": round(import_s, 1),
        "image": f"{size}x{size}",
        "threads": threads,
        "repeats": repeats,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "onnxruntime_vs_diffusers": round(medians["onnxruntime"] / medians["diffusers"], 3),
        "latent_rel_error": rel(ours_latent, their_latent),
        "image_rel_error": rel(ours_image, their_image),
        "gpu": gpu,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "onnxruntime": ort.__version__,
    }


def _gpu_images_per_s(image: np.ndarray, repeats: int) -> dict[str, Any]:
    """Encode + decode of ``image`` on CUDA (I/O binding) against ONNX Runtime on all CPU cores."""
    out: dict[str, Any] = {"device": ort.get_device()}
    for name, runtime in (("cpu", vaeflow.RuntimeOptions()), ("cuda", vaeflow.RuntimeOptions(providers=("cuda",)))):

        def once(runtime: vaeflow.RuntimeOptions = runtime) -> np.ndarray:
            latent = vaeflow.encode_latent(image, model="sdxl-random", runtime=runtime)
            return vaeflow.decode_latent(latent, model="sdxl-random", runtime=runtime)

        once()  # warm-up: sessions and CUDA kernels
        out[f"{name}_images_per_s"] = round(1.0 / _median_seconds(once, repeats), 3)
    out["cuda_vs_cpu"] = round(out["cuda_images_per_s"] / out["cpu_images_per_s"], 2)
    return out


def report(result: dict[str, Any]) -> str:
    lines = [
        f"SDXL-configuration AutoencoderKL, {result['parameters'] / 1e6:.1f} M parameters (random weights): "
        f"import {result['import_s']} s, ONNX {result['onnx_mb']['encoder']} MB + {result['onnx_mb']['decoder']} MB",
        f"encode + decode of a {result['image']} photo on {result['threads']} CPU threads, medians of "
        f"{result['repeats']}: ONNX Runtime {result['median_s']['onnxruntime']} s, diffusers (torch) "
        f"{result['median_s']['diffusers']} s: {result['onnxruntime_vs_diffusers']}x",
        f"agreement with torch: latent {result['latent_rel_error']:.2g}, image {result['image_rel_error']:.2g} "
        "(relative L2 error)",
    ]
    gpu = result.get("gpu")
    if gpu:
        lines.append(
            f"CUDA: {gpu['cuda_images_per_s']} images/s against {gpu['cpu_images_per_s']} on the CPU "
            f"({gpu['cuda_vs_cpu']}x)"
        )
    versions = f"torch {result['torch']}, diffusers {result['diffusers']}, ONNX Runtime {result['onnxruntime']}"
    return "\n".join([*lines, versions])
