"""The package's structure, from its import graph (function-level imports counted):
layers that import only downwards, no cycles, and no tools in the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vaeflow"
# Lower layers first; a module may import its own layer and those before it.
LAYERS = (
    ("foundations", ("vaeflow.foundations",)),
    ("models", ("vaeflow.models",)),
    ("stages", ("vaeflow.stages",)),
    ("codec", ("vaeflow.codec",)),
    ("dataset", ("vaeflow.dataset",)),
    ("interfaces", ("vaeflow.reports", "vaeflow.convert", "vaeflow.cli", "vaeflow.torch", "vaeflow.__main__",
                    "vaeflow")),
)  # fmt: skip
TOOLS = ("benchmarks", "training", "tests")
# Imported at function level, each with a comment saying why: optional extras, heavy runtimes loaded
# only when used, Dask (the CLI and the job load it only for work that runs on a cluster), and the parts of
# scipy and scikit-image that would add more than a second to every command's and DataLoader worker's start.
OPTIONAL = {"torch", "matplotlib", "jsonschema", "distributed", "dask", "onnx", "safetensors", "diffusers",
            "pillow_avif", "s3fs", "fsspec", "pyarrow", "onnxruntime", "vaeflow.dataset.distributed",
            "vaeflow.convert", "ipywidgets", "imagecodecs", "tqdm.notebook", "skimage.metrics",
            "skimage.filters", "scipy.ndimage", "scipy.interpolate"}  # fmt: skip


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


# Every third-party import in the package is a declared dependency: module-level ones in [project].dependencies
# (or, in a module that itself needs an extra, in that extra), function-level ones there or in some extra.
PYPROJECT = PACKAGE.parent / "pyproject.toml"
# Import names whose distributions are named otherwise, for when the distribution is not installed to ask.
DISTRIBUTIONS = {"PIL": "pillow", "skimage": "scikit-image", "pywt": "pywavelets", "yaml": "pyyaml",
                 "google_crc32c": "google-crc32c", "pillow_avif": "pillow-avif-plugin", "sklearn": "scikit-learn",
                 "cv2": "opencv-python"}  # fmt: skip
# Modules that need an extra themselves, as their docstrings say; nothing else imports them at module level.
EXTRA_MODULES = {"vaeflow.torch": "train", "vaeflow.convert": "convert"}


def _normal(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    """The distributions requirements bring, with those of the extras they name (``dask[distributed]``)."""
    import contextlib
    import re
    from importlib import metadata

    name_of = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
    out = set()
    for requirement in requirements:
        found = name_of.match(requirement)
        assert found, requirement
        out.add(_normal(found.group(1)))
        for extra in filter(None, (e.strip() for e in (found.group(2) or "").split(","))):
            with contextlib.suppress(metadata.PackageNotFoundError):  # not installed: its extra's imports show
                for dependency in metadata.requires(found.group(1)) or []:
                    if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", dependency):
                        out.add(_normal(name_of.match(dependency).group(1)))  # type: ignore[union-attr]
    return out


def _extra_of(module: str) -> str | None:
    return next((x for p, x in EXTRA_MODULES.items() if module == p or module.startswith(p + ".")), None)


def test_every_third_party_import_is_a_declared_dependency() -> None:
    import sys
    import tomllib
    from importlib import metadata

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    required = _declared(project["dependencies"])
    extras = {extra: _declared(requirements) for extra, requirements in project["optional-dependencies"].items()}
    installed = metadata.packages_distributions()
    undeclared = set()
    for name, path in _modules().items():
        own = _extra_of(name)
        for target, nested in _imports(path):
            root = target.split(".")[0]
            if root in sys.stdlib_module_names or root in ("vaeflow", "__future__"):
                continue
            candidates = {_normal(d) for d in [*installed.get(root, ()), DISTRIBUTIONS.get(root, root)]}
            if nested:
                allowed, where = required.union(*extras.values()), "in no dependency or extra"
            elif own:
                allowed, where = required | extras[own], f"in neither the dependencies nor the {own} extra"
            else:
                allowed, where = required, "not in [project].dependencies"
            if not candidates & allowed:
                level = "function" if nested else "module"
                undeclared.add(f"{name}: {root} ({' or '.join(sorted(candidates))}, at {level} level) is {where}")
    assert not undeclared, "\n".join(sorted(undeclared))


def test_modules_that_need_an_extra_say_so_and_the_rest_imports_them_only_in_functions() -> None:
    modules = _modules()
    for prefix, extra in EXTRA_MODULES.items():
        assert f"'vaeflow[{extra}]'" in (ast.get_docstring(ast.parse(modules[prefix].read_text())) or ""), prefix
    found = [
        f"{name} imports {target} at module level"
        for name, path in modules.items()
        for target, nested in _imports(path)
        if not nested and _extra_of(target) and _extra_of(target) != _extra_of(name)
    ]
    assert not found, "\n".join(found)


# The store's layout has one owner, vaeflow/dataset/layout.py: no other module spells a path or key of the store.
LAYOUT_MODULE = "vaeflow.dataset.layout"
STORE_MODULES = "vaeflow.dataset"  # the modules that open the store's nodes; the rest reads it through StoreReader
# Parts of names rather than names: a file suffix, the prefix of vaeflow's own files (``~/.vaeflow`` too), letters.
FRAGMENTS = {"marker_suffix", "streams_suffix", "own_prefix", "probe_prefix", "group_prefix", "chunks"}
# Names that are words of vaeflow's API outside the store modules too (StoreReader's methods, the keys of a training
# item and of `vaeflow ls --json`): checked in the store modules only, like every plain word (``rows``, ``path``).
API_WORDS = {"original_size", "crop_top_left"}
# In the store modules, literals equal to a layout name that mean something else there: (module, function) -> them.
NOT_STORE_NAMES = {
    ("vaeflow.dataset.policy", ""): {"complete", "vaeflow", "bpp"},  # an action (ACTIONS), the logger, a v1 target
    ("vaeflow.dataset.reader", "StoreReader.summary"): {"path", "skipped"},  # the store's name, a count of files
    ("vaeflow.dataset.reader", "StoreReader.info"): {"path"},  # the image's name
    ("vaeflow.dataset.reader", "StoreReader._repr_html_"): {"skipped", "bpp"},  # summary()'s count, a heading
    ("vaeflow.dataset.job", "report_from_store"): {"skipped"},  # summary()'s count
    ("vaeflow.dataset.scan", "parse_sidecar"): {"caption"},  # a key of a sidecar JSON file
    ("vaeflow.dataset.sources", ""): {"caption"},  # a sidecar's extension in a shard, a parquet column's name
}


def _layout_names() -> dict[str, str]:
    """Every path and key the layout module defines (its frozen dataclasses' fields, its text columns' arrays and
    its string constants), each with the name that defines it."""
    import dataclasses
    import importlib

    layout = importlib.import_module(LAYOUT_MODULE)
    names: dict[str, str] = {}
    for attribute, value in vars(layout).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names |= {getattr(value, f.name): f"{attribute}.{f.name}" for f in dataclasses.fields(value)
                      if f.name not in FRAGMENTS}  # fmt: skip
        elif isinstance(value, str) and attribute.isupper():
            names[value] = attribute
    for column in layout.TEXT_COLUMNS:
        names[layout.text_offsets(column)] = f"text_offsets({column!r})"
        names[layout.text_bytes(column)] = f"text_bytes({column!r})"
    return names


def _literals(path: Path) -> list[tuple[str, int, str]]:
    """(enclosing function or class, line, value) of every string literal but docstrings, f-strings' parts included."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            scope = f"{scope}.{node.name}" if scope else node.name
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((scope, node.lineno, node.value))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, "")
    return found


def test_no_module_but_the_layout_spells_a_store_path_or_key() -> None:
    names = _layout_names()
    assert {"streams/data", "streams/offsets", "index", "complete", "rows", "generation", "zarr.json"} <= set(names)
    found = []
    for module, path in _modules().items():
        if module == LAYOUT_MODULE:
            continue
        in_store_modules = module.startswith(STORE_MODULES + ".")
        for scope, line, value in _literals(path):
            if value not in names or value in NOT_STORE_NAMES.get((module, scope), ()):
                continue
            plain_word = value.isalpha() or value in API_WORDS
            if in_store_modules or not plain_word:
                found.append(f"{module}:{line} ({scope or 'module'}): {value!r} is layout.{names[value]}")
    assert not found, "\n".join(found)


def test_the_package_uses_no_private_zarr_module() -> None:
    """zarr.core and names that start with an underscore are zarr's internals, which change without notice:
    no import of them (type-only imports included), and no attribute path to them from ``zarr``."""

    def private(dotted: str) -> bool:
        parts = dotted.split(".")
        return parts[0] == "zarr" and (parts[1:2] == ["core"] or any(p.startswith("_") for p in parts[1:]))

    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [f"{module}:{node.lineno}: import {a.name}" for a in node.names if private(a.name)]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found += [f"{module}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                          if private(f"{node.module}.{a.name}")]  # fmt: skip
            elif isinstance(node, ast.Attribute) and private(ast.unparse(node)):
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_the_stage_list_is_written_once() -> None:
    """``STAGE_ORDER`` is the one list of stages: each names a stage class, each stage class is in it, and nothing
    else in the package, the benchmarks or training writes three or more stage names out in one tuple, list,
    set or dict (derive from ``STAGE_ORDER`` instead)."""
    from vaeflow.stages import STAGE_ORDER, Stage

    assert set(Stage.types) == set(STAGE_ORDER) and len(STAGE_ORDER) == len(set(STAGE_ORDER))
    paths = [*_modules().items()]
    for tool in ("benchmarks", "training"):
        paths += [(f"{tool}.{p.stem}", p) for p in (PACKAGE.parent / tool).rglob("*.py")]
    found = []
    for module, path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) or elements is None:
                continue
            named = {e.value for e in elements if isinstance(e, ast.Constant) and e.value in STAGE_ORDER}
            if len(named) >= 3 and not (module == "vaeflow.stages.base" and node.lineno == _stage_order_line()):
                found.append(f"{module}:{node.lineno}: {sorted(named)}")
    assert not found, "\n".join(found)


def _stage_order_line() -> int:
    tree = ast.parse((PACKAGE / "stages" / "base.py").read_text())
    return next(
        n.lineno for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "STAGE_ORDER" for t in n.targets)
    )  # fmt: skip


def test_every_stage_takes_one_signature() -> None:
    """Each stage's ``forward`` and ``inverse`` are its own and take (self, data, spec), as ``Stage`` declares."""
    import inspect

    from vaeflow.stages import Stage

    for name, cls in Stage.types.items():
        for method in ("forward", "inverse"):
            assert getattr(cls, method) is not getattr(Stage, method), f"{name} lacks its own {method}"
            parameters = list(inspect.signature(getattr(cls, method)).parameters)
            assert len(parameters) == 3 and parameters[2] == "spec", f"{name}.{method} takes {parameters}"
