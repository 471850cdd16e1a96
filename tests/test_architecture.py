"""The package's structure, from its import graph (function-level imports counted):
layers that import only downwards, no cycles, and no tools in the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vaeflow"
# Lower layers first; a module may import its own layer and those before it.
LAYERS = (
    ("foundations", ("vaeflow.errors", "vaeflow.binary", "vaeflow.durable", "vaeflow.imageio", "vaeflow.metrics",
                     "vaeflow.resources", "vaeflow.timing", "vaeflow.bdrate", "vaeflow.progressbar", "vaeflow.display",
                     "vaeflow.samples")),
    ("models", ("vaeflow.models",)),
    ("stages", ("vaeflow.stages",)),
    ("codec", ("vaeflow.codec",)),
    ("dataset", ("vaeflow.dataset",)),
    ("interfaces", ("vaeflow.reports", "vaeflow.convert", "vaeflow.cli", "vaeflow.torch", "vaeflow.__main__",
                    "vaeflow")),
)  # fmt: skip
TOOLS = ("benchmarks", "training", "tests")
# Imported at function level, each with a comment saying why: optional extras, heavy runtimes loaded
# only when used, and Dask (the CLI and the job load it only for work that runs on a cluster).
OPTIONAL = {"torch", "matplotlib", "jsonschema", "distributed", "dask", "onnx", "safetensors", "diffusers",
            "pillow_avif", "s3fs", "fsspec", "onnxruntime", "vaeflow.dataset.distributed",
            "vaeflow.convert", "ipywidgets", "imagecodecs", "tqdm.notebook"}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at function level) for every absolute import, TYPE_CHECKING blocks excepted.

    ``from package import name`` depends on ``package.name`` when that is a module, else on ``package``.
    """
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(f"{node.module}.{alias.name}", id(node) in nested) for alias in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, _ in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "vaeflow"):
            return index
    if module == "vaeflow":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_there_is_no_import_cycle_counting_function_level_imports() -> None:
    graph = _graph()
    faces = {m for m, p in _modules().items() if p.name == "__init__.py"}  # a package's facade is not a module
    for start in graph:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()] - faces:
                if nxt == start:
                    pytest.fail(f"import cycle through {start}")
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)


def test_layers_import_only_downwards() -> None:
    wrong = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
        for module, deps in _graph().items()
        for dep in deps
        if _layer(dep) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_stages_import_nothing_above_them() -> None:
    for module, deps in _graph().items():
        if module.startswith("vaeflow.stages"):
            assert all(_layer(d) <= _layer(module) for d in deps), (module, deps)


def test_the_runtime_imports_no_benchmark_training_or_test_code() -> None:
    for name, path in _modules().items():
        used = {target.split(".")[0] for target, _ in _imports(path)}
        assert not used & set(TOOLS), f"{name} imports {used & set(TOOLS)}"


def test_function_level_imports_are_only_for_optional_heavy_dependencies_and_say_so() -> None:
    found = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if not isinstance(inner, ast.Import | ast.ImportFrom) or "TYPE_CHECKING" in lines[inner.lineno - 2]:
                    continue
                targets = [a.name for a in inner.names] if isinstance(inner, ast.Import) else [inner.module or ""]
                allowed = all(any(t == o or t.startswith(o + ".") for o in OPTIONAL) for t in targets)
                said = "#" in lines[inner.lineno - 1] or lines[inner.lineno - 2].strip().startswith("#")
                if not (allowed and said):
                    found.append(f"{name}:{inner.lineno}: {', '.join(targets)}")
    assert not found, "\n".join(found)
