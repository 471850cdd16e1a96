"""Importing VAEs: Tiny AutoEncoder weights converted to ONNX, and ONNX files registered as they are."""

from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow.cli.main import main
from vaeflow.codec.api import open_stream
from vaeflow.foundations import metrics
from vaeflow.models.registry import Registry
from vaeflow.stages import Entropy
from vaeflow.stages.spec import coding_spec


def test_taef2_import_reconstructs_kodim01(
    vaeflow_home: Path, kodim01: np.ndarray, taef2_weights: tuple[Path, Path]
) -> None:
    encoder, decoder = taef2_weights
    args = [
        "models",
        "import",
        "--kind",
        "tae",
        "--encoder",
        str(encoder),
        "--decoder",
        str(decoder),
        "--name",
        "taef2",
    ]
    assert main(args) == 0
    assert (vaeflow_home / "models" / "taef2" / "decoder.onnx").is_file()
    model = vaeflow.load_model("taef2")
    assert (model.latent_channels, model.downsample) == (32, 8)
    psnr = metrics.psnr(kodim01, model.decode(model.encode(kodim01[None]))[0])
    assert 27.0 <= psnr <= 27.4
    stream = vaeflow.compress(kodim01, model="taef2", quality=60)
    info = vaeflow.info(stream)
    assert info["model"] == "taef2"
    assert (info["pipeline"]["entropy"]["coder"], info["format_version"]) == ("bands", 4)  # auto, 32 channels
    assert metrics.psnr(kodim01, vaeflow.decompress(stream)) > 26.0
    # the band coder costs no more than 1% over the class coder on TAEF2's latents, at equal steps
    header, payload, codec = open_stream(stream)
    symbols = codec.decode_symbols(payload, header.latent_shape)[0]
    bands = codec.bands(symbols.shape)
    assert len(payload) <= 1.01 * len(Entropy("classes").forward(symbols[None], coding_spec(symbols.shape, bands))[0])


def test_add_registers_onnx_files(tmp_path: Path, vaeflow_home: Path) -> None:
    entry = Registry.load().resolve("default")
    args = ["models", "add", "--encoder", str(entry.encoder), "--decoder", str(entry.decoder), "--name", "sd-like",
            "--latent-channels", "4", "--latent-scale", "0.18215", "--input-range", "-1", "1"]  # fmt: skip
    assert main(args) == 0
    added = Registry.load().resolve("sd-like")
    assert added.latent_scale == (0.18215,)
    assert main(["models", "add", "--encoder", str(tmp_path / "x.onnx"), "--decoder", str(entry.decoder),
                 "--name", "x", "--latent-channels", "4"]) == 1  # fmt: skip


@pytest.mark.parametrize(("channels", "pooled"), [(4, False), (16, False), (32, True)])
def test_tae_family_imports_from_safetensors(vaeflow_home: Path, tmp_path: Path, channels: int, pooled: bool) -> None:
    """TAESD / TAESDXL (4 channels), TAESD3 / TAEF1 (16) and TAEF2 (32, pooled middle blocks)."""
    torch = pytest.importorskip("torch", reason="importing TAE weights needs the convert extra")
    safetensors = pytest.importorskip("safetensors.torch", reason="needs safetensors (convert extra)")
    from vaeflow.convert.tae import build_decoder, build_encoder

    torch.manual_seed(channels)
    layout_encoder = {"14.weight": torch.zeros(channels, 64, 3, 3)}
    layout_decoder = {"1.weight": torch.zeros(64, channels, 3, 3)}
    if pooled:  # the flux-2 variant's GroupNorm branch in the middle blocks
        layout_encoder.update({f"{k}.pool.0.weight": torch.zeros(1) for k in (11, 12, 13)})
        layout_decoder.update({f"{k}.pool.0.weight": torch.zeros(1) for k in (3, 4, 5)})
    paths = []
    for part, build, layout in (("encoder", build_encoder, layout_encoder), ("decoder", build_decoder, layout_decoder)):
        path = tmp_path / f"tae_{part}.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in build(layout).state_dict().items()}, str(path))
        paths.append(path)
    args = ["models", "import", "--kind", "tae", "--encoder", str(paths[0]), "--decoder", str(paths[1])]
    assert main([*args, "--name", f"tae{channels}"]) == 0
    model = vaeflow.load_model(f"tae{channels}")
    latent = model.encode(np.full((1, 40, 56, 3), 128, np.uint8))
    assert model.latent_channels == channels and latent.shape == (1, channels, 5, 7)
    assert model.decode(latent).shape == (1, 40, 56, 3)
