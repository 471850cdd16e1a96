"""What a package index and a fresh clone see: licence, typing marker, metadata, absolute links in
the long description, ignored outputs, and the README's test command as CI runs it."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_licence_typing_marker_and_metadata() -> None:
    project = PROJECT["project"]
    assert project["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    assert (REPO / "vaeflow" / "py.typed").exists()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["vaeflow"]
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(project["urls"])
    for extra in ("notebook", "baselines", "docs"):
        assert extra in project["optional-dependencies"]
    assert any(d.startswith("ipywidgets") for d in project["optional-dependencies"]["notebook"])
    for name in ("CHANGELOG.md", "CONTRIBUTING.md"):
        assert (REPO / name).read_text().strip()


def test_the_long_description_has_only_absolute_links() -> None:
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    assert [t for t in targets if not t.startswith("https://")] == []


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(pip install .*)$", readme, re.MULTILINE)
    first_run, tests = commands[0], commands[1]
    assert first_run == "pip install . && vaeflow samples samples/ && vaeflow compress samples/ samples.zarr"
    assert tests.splitlines()[-1] == (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "mkdocs build --strict" in tests


def test_the_readme_commands_outputs_are_ignored() -> None:
    paths = ["samples/astronaut.png", "samples.zarr/zarr.json", "eval-kodak/report.html", "build/site/index.html"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == paths
