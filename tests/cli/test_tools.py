"""``vaeflow bench`` and ``vaeflow train`` load their code from a source checkout, and say what to
install when it or its packages are missing."""

from __future__ import annotations

import pytest

from vaeflow.cli import tools
from vaeflow.errors import VaeflowError


def test_a_checkout_module_loads_from_beside_the_package() -> None:
    assert tools.checkout_module("benchmarks", "legacy", "dev").__name__ == "benchmarks.legacy"


def test_a_missing_folder_says_the_command_needs_a_checkout(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tools, "CHECKOUT", tmp_path)
    with pytest.raises(VaeflowError, match=r"source checkout of vaeflow.*pip install -e '\.\[train\]'"):
        tools.checkout_module("training", "train", "train")


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "__init__.py").write_text("")
    (tmp_path / "tool" / "needs.py").write_text("import no_such_package_anywhere\n")
    monkeypatch.setattr(tools, "CHECKOUT", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VaeflowError, match=r"needs no_such_package_anywhere: run `pip install -e '\.\[dev\]'`"):
        tools.checkout_module("tool", "needs", "dev")
