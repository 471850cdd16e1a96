"""Every notebook runs from top to bottom on the sample photos (no ../shared), uses only the public
API, is stored without outputs (the docs site shows them executed), and shows no progress warning."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PUBLIC = ("vaeflow", "vaeflow.reports", "vaeflow.metrics", "vaeflow.torch")  # vaeflow.metrics: the facade's name


def _vaeflow_imports(notebook: nbformat.NotebookNode) -> set[str]:
    found = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {f"{node.module}.{a.name}" if node.module == "vaeflow" else node.module for a in node.names}
    return {name for name in found if name == "vaeflow" or name.startswith("vaeflow.")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_stored_clean_and_use_only_the_public_api(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "store notebooks clean"
    used = _vaeflow_imports(notebook)
    assert used and all(name in PUBLIC for name in used), used
    assert not any("shared" in cell.source for cell in notebook.cells), "notebooks run on a plain clone"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(path, as_version=4)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if "TqdmWarning" in str(o.get("text", ""))]
