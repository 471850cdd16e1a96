"""The f8c12 architecture: widened exactly from v1, its density a distribution, its rate runs resumable."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vaeflow.foundations.imageio import read_rgb
from vaeflow.foundations.resources import shipped_models_dir

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from training import f8c4, f8c12  # noqa: E402
from training.train import TrainConfig, decoder_input, export_model, latent_std_of, train  # noqa: E402

V1_WEIGHTS = shipped_models_dir() / "f8c4-v1" / "weights.pt"


def test_widening_v1_keeps_its_function(photos: list[np.ndarray]) -> None:
    weights = torch.load(V1_WEIGHTS, weights_only=True)
    v1_enc, v1_dec = f8c4.Encoder(), f8c4.Decoder()
    v1_enc.load_state_dict({k: v.float() for k, v in weights["encoder"].items()})
    v1_dec.load_state_dict({k: v.float() for k, v in weights["decoder"].items()})
    enc, dec = f8c12.Encoder(), f8c12.Decoder()
    f8c12.widen_from_v1(enc, dec, weights, latent_std_of(str(V1_WEIGHTS)), target_std=4.0)
    x = torch.from_numpy(photos[0][:128, :192].transpose(2, 0, 1)[None] / 127.5 - 1.0).float()
    with torch.no_grad():
        z = enc(x)
        np.testing.assert_allclose(dec(z).numpy(), v1_dec(v1_enc(x)).numpy(), atol=2e-4)
    assert z.shape == (1, 12, 16, 24)
    std = z[0, :4].std(dim=(1, 2)).numpy()
    assert np.all((std > 1.0) & (std < 12.0)), std  # v1's channels at about the target std
    assert float(z[0, 4:].abs().max()) < float(z[0, :4].abs().max())


def test_the_density_is_a_distribution_over_bins() -> None:
    torch.manual_seed(0)
    density = f8c12.FactorizedDensity(3)
    for step in (0.5, 1.0, 2.0):
        centres = torch.arange(-200.0, 200.0, step).reshape(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()
        mass = torch.exp2(-density.bits(centres, torch.tensor(step))).sum(dim=-1)
        np.testing.assert_allclose(mass.detach().numpy(), 1.0, atol=1e-3)


def test_rounding_in_training_is_the_codecs_grid_with_straight_through_gradients() -> None:
    z = (torch.randn(3, 12, 4, 4, generator=torch.Generator().manual_seed(1)) * 4).requires_grad_()
    step = torch.tensor([0.0, 0.7, 3.0]).reshape(3, 1, 1, 1)
    seen = decoder_input(z, z + 1.0, step, "round")
    expected = z.detach().clone()
    expected[1:] = torch.round(z.detach()[1:] / step[1:]) * step[1:]
    np.testing.assert_allclose(seen.detach().numpy(), expected.numpy(), atol=1e-6)
    assert float(torch.abs(seen.detach()[2] - z.detach()[2]).max()) <= 1.5 + 1e-6  # within half a step
    (seen * torch.arange(3.0).reshape(3, 1, 1, 1)).sum().backward()
    assert z.grad is not None
    np.testing.assert_array_equal(z.grad.numpy(), np.broadcast_to(np.arange(3.0).reshape(3, 1, 1, 1), z.shape))
    noisy = z + 1.0
    assert decoder_input(z, noisy, step, "noise") is noisy  # noise: the noisy latent itself


@pytest.mark.parametrize("quantize", ["noise", "round"])
def test_a_rate_run_is_resumable_and_exports_twelve_channels(
    training_photos: Path, tmp_path: Path, quantize: str
) -> None:
    base = TrainConfig(
        str(training_photos), "", model="f8c12", steps=4, batch=4, crop=64, threads=1, checkpoint_every=2,
        rate_lambda=0.01, rate_ramp=2, widen=str(V1_WEIGHTS), log_every=1, quantize=quantize,
    )  # fmt: skip
    assert train(replace(base, workdir=str(tmp_path / "whole")))["done"]
    split = replace(base, workdir=str(tmp_path / "split"), minutes=0.0002)
    calls = 1
    while not train(split)["done"]:
        calls += 1
        assert calls < 200
    states = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split")]
    for part in ("encoder", "decoder", "density"):
        for key, value in states[0][part].items():
            np.testing.assert_array_equal(value.numpy(), states[1][part][key].numpy(), err_msg=f"{part}.{key}")
    log = (tmp_path / "whole" / "log.tsv").read_text()
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["model"] == "f8c12"
    written = export_model(str(tmp_path / "whole"), str(training_photos), str(tmp_path / "models"), "tiny-v2")
    from vaeflow.models.onnx_vae import OnnxVAE
    from vaeflow.models.registry import ModelEntry, read_registry_file

    table = read_registry_file(written)["models"]["tiny-v2"]
    assert table["latent_channels"] == 12 and "trained for rate" in table["description"]
    model = OnnxVAE(ModelEntry.from_toml("tiny-v2", table, written.parent))
    image = read_rgb(next(training_photos.iterdir()))[:40, :56]
    assert model.encode(image[None]).shape == (1, 12, 5, 7)
    rows = [line.split("\t") for line in log.splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4] and all(len(r) == 6 for r in rows)  # step .. bpp, clean PSNR
    assert all(float(r[4]) > 0 for r in rows)  # the rate term's bits per pixel
    with pytest.raises(ValueError, match="f8c12"):
        train(replace(base, model="f8c4", workdir=str(tmp_path / "wrong")))
    with pytest.raises(ValueError, match="'snap'"):
        train(replace(base, quantize="snap", workdir=str(tmp_path / "wrong")))
    with pytest.raises(ValueError, match=r"0 < low <= high; got 2\.0 and 1\.0"):
        train(replace(base, step_low=2.0, step_high=1.0, workdir=str(tmp_path / "wrong")))
    assert not (tmp_path / "wrong").exists()  # refused before anything is written
