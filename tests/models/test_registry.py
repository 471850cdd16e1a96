"""The model registry: the shipped model, user registries, references resolved once and checked."""

import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import vaeflow
from vaeflow.foundations.errors import ModelError
from vaeflow.models import ModelRef
from vaeflow.models.registry import Registry, register


def test_default_is_an_alias_of_the_shipped_model() -> None:
    registry = Registry.load()
    entry = registry.resolve("default")
    assert entry.latent_channels == 12 and entry.downsample == 8
    assert entry.encoder.is_file() and entry.decoder.is_file()
    total = entry.encoder.stat().st_size + entry.decoder.stat().st_size
    assert total <= 32 * 2**20  # the shipped model's budget: its ONNX files within 32 MB
    model = vaeflow.load_model("default")
    assert (model.latent_channels, model.downsample) == (12, 8)
    assert len(model.fingerprint) == 16


def _copy_default(tmp_path: Path, name: str) -> Path:
    entry = Registry.load().resolve("default")
    for f in (entry.encoder, entry.decoder):
        shutil.copy(f, tmp_path / f.name)
    return register(
        replace(entry, name=name, encoder=tmp_path / "encoder.onnx", decoder=tmp_path / "decoder.onnx"),
        tmp_path / "models.toml",
    )


def test_config_file_adds_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vaeflow_home: Path) -> None:
    config = _copy_default(tmp_path, "copy")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(config))
    assert "copy" in Registry.load().names()
    assert vaeflow.load_model("copy").fingerprint == vaeflow.load_model("default").fingerprint


def test_missing_and_corrupt_files_name_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vaeflow_home: Path
) -> None:
    config = _copy_default(tmp_path, "broken")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(config))
    (tmp_path / "encoder.onnx").write_bytes(b"this is not an onnx file")
    model = vaeflow.load_model("broken")
    with pytest.raises(ModelError, match=r"encoder\.onnx is not a loadable ONNX model"):
        model.encode(np.zeros((1, 8, 8, 3), np.uint8))
    (tmp_path / "decoder.onnx").unlink()
    with pytest.raises(ModelError, match=r"decoder\.onnx does not exist"):
        vaeflow.load_model("broken")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ModelError, match=r"absent\.toml"):
        vaeflow.load_model("default")


def test_model_objects_pickle_by_reference() -> None:
    model = vaeflow.load_model("default")
    assert pickle.loads(pickle.dumps(model)) is model


def test_a_model_loads_by_its_reference_and_another_fingerprint_is_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vaeflow_home: Path
) -> None:
    ref = vaeflow.load_model("default").ref
    assert vaeflow.load_model(ref) is vaeflow.load_model("default")
    assert ModelRef.from_dict(ref.to_dict()) == ref
    stale = replace(ref, fingerprint="00" * 8)
    with pytest.raises(
        ModelError,
        match=rf"needs model '{ref.name}' \(fingerprint 0{{16}}.*is '{ref.name}' \(fingerprint {ref.fingerprint}",
    ):
        vaeflow.load_model(stale)


def test_the_registry_is_parsed_once_per_version_of_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _copy_default(tmp_path, "copy")
    monkeypatch.setenv("VAEFLOW_CONFIG", str(config))
    first = Registry.load()
    assert Registry.load() is first
    _copy_default(tmp_path, "other")  # rewrites the file: parsed again
    again = Registry.load()
    assert again is not first and "other" in again.names()
