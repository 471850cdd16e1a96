"""``vaeflow bench`` and ``vaeflow train`` come from the benchmarks and training packages through
entry points, never through ``sys.path``; without them, or the packages they need, they say
what to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from vaeflow.cli import tools
from vaeflow.cli.main import build_parser, main
from vaeflow.foundations.errors import VaeflowError

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_commands_are_the_entry_points_pyproject_declares() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][tools.GROUP]
    assert {name: entry.value for name, entry in tools.discovered().items()} == declared
    assert {command.name for command in tools.TOOL_COMMANDS} == set(declared)
    assert {entry.module.split(".")[0] for entry in tools.discovered().values()} == {"benchmarks", "training"}


def test_the_tools_import_from_the_install_alone(tmp_path: Path) -> None:
    """In an isolated interpreter (no current folder, no PYTHONPATH) away from the checkout."""
    code = "from vaeflow.cli.tools import discovered; print(sorted(e.load().__module__ for e in discovered().values()))"
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['benchmarks.cli', 'training.cli']"


def test_a_tool_module_loads_when_its_command_runs() -> None:
    path = list(sys.path)
    assert tools.load("benchmarks.legacy", "dev").__name__ == "benchmarks.legacy"
    assert sys.path == path


def test_without_the_tools_their_commands_keep_their_place_and_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tools, "discovered", dict)
    assert {"bench", "train"} <= set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for argv, extra in (
        (["bench", "codec", "kodak", "--json", "out.json"], "dev"),
        (["bench", "--help"], "dev"),
        (["bench"], "dev"),
        (["train", "run", "--data", "photos", "--workdir", "run"], "train"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"`vaeflow {argv[0]}` comes with the" in err, err
        assert f"run `pip install -e '.[{extra}]'`" in err


def test_a_tool_that_cannot_load_says_why(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "needy").mkdir()
    (tmp_path / "needy" / "__init__.py").write_text("import no_such_package_anywhere\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("raise RuntimeError('a bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = {
        "bench": EntryPoint("bench", "no_such_tool_anywhere.cli:register", tools.GROUP),
        "train": EntryPoint("train", "needy:register", tools.GROUP),
        "other": EntryPoint("other", "broken:register", tools.GROUP),
    }
    monkeypatch.setattr(tools, "discovered", lambda: entries)
    assert main(["bench", "codec", "kodak"]) == 1
    assert "`vaeflow bench` comes with the benchmarks/ package" in capsys.readouterr().err
    assert main(["train", "run"]) == 1
    assert "`vaeflow train` needs no_such_package_anywhere: run `pip install -e '.[train]'`" in capsys.readouterr().err
    assert main(["other"]) == 1
    assert "`vaeflow other` could not be loaded from broken:register: RuntimeError: a bug" in capsys.readouterr().err


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "__init__.py").write_text("")
    (tmp_path / "tool" / "needs.py").write_text("import no_such_package_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VaeflowError, match=r"needs no_such_package_anywhere: run `pip install -e '\.\[dev\]'`"):
        tools.load("tool.needs", "dev")
