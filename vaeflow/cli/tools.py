"""The commands whose code lives beside the package in a source checkout: benchmarks and training.

``benchmarks/`` and ``training/`` are not installed with vaeflow; ``vaeflow bench`` and
``vaeflow train`` load them from the checkout this vaeflow runs from, and say what to do
when they, or the packages they need, are missing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from vaeflow.errors import VaeflowError

CHECKOUT = Path(__file__).resolve().parents[2]


def checkout_module(package: str, module: str, extra: str) -> ModuleType:
    """``package.module`` from the source checkout (``benchmarks.codec``, ``training.train``)."""
    if not (CHECKOUT / package / "__init__.py").is_file():
        raise VaeflowError(
            f"this command runs from a source checkout of vaeflow: its {package}/ folder is not installed with "
            f"the package. Clone the repository and run `pip install -e '.[{extra}]'` in it"
        )
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    try:
        return importlib.import_module(f"{package}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith((package, "vaeflow")):
            raise VaeflowError(f"{package}.{module} needs {exc.name}: run `pip install -e '.[{extra}]'`") from exc
        raise
