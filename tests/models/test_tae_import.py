"""Importing VAEs: Tiny AutoEncoder weights converted to ONNX, and ONNX files registered as they are."""

from pathlib import Path

import numpy as np

import vaeflow
from vaeflow.cli.main import main
from vaeflow.codec.api import open_stream
from vaeflow.foundations import metrics
from vaeflow.stages.coders import bands as bandcoder
from vaeflow.stages.coders import classes as classcoder


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
    assert (info["pipeline"]["entropy"]["coder"], info["format_version"]) == ("sequential", 5)  # auto, 32 channels
    assert metrics.psnr(kodim01, vaeflow.decompress(stream)) > 26.0
    # on TAEF2's latents, at equal steps, the sequential coder against the coders that wrote 32 channels before
    header, payload, codec = open_stream(stream)
    symbols = codec.decode_symbols(payload, header.latent_shape)[0]
    bands = codec.bands(symbols.shape)
    assert len(payload) <= 1.015 * min(len(classcoder.encode(symbols, bands)), len(bandcoder.encode(symbols, bands)))
    # the compiled decoders give TAEF2's wide latents bit for bit as the constriction ones do
    fine_header, fine_payload, fine_codec = open_stream(vaeflow.compress(kodim01, model="taef2", quality=100))
    fine = fine_codec.decode_symbols(fine_payload, fine_header.latent_shape)[0]
    for coder in (bandcoder, classcoder):
        wide = [coder.encode(symbols, bands), coder.encode(fine, bands)]
        got, want = (
            coder.decode_many(wide, symbols.shape, bands),
            coder.decode_many_reference(wide, symbols.shape, bands),
        )
        np.testing.assert_array_equal(got, want)
