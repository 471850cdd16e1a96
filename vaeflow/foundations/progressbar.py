"""Progress bars where someone watches them: on a terminal, or in a notebook.

Redirected to a file or a pipe, a bar would fill the log with ``\\r`` frames, so none is drawn
there. In a Jupyter notebook the bar is a widget when ipywidgets is installed (the ``notebook``
extra), else text; ``VAEFLOW_PROGRESS=1`` or ``0`` forces bars on or off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm as text_tqdm


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (a notebook, JupyterLab, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401  # optional (the notebook extra), only for notebook bars
    except ImportError:
        return False
    return True


def wanted() -> bool:
    """Whether a bar would be seen: a terminal on stderr, or a notebook (``VAEFLOW_PROGRESS`` overrides)."""
    forced = os.environ.get("VAEFLOW_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if in_notebook():
        return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar (``total``, ``desc``, ``unit``, ...) if one is ``enabled`` and would be seen, else a
    disabled one with the same methods."""
    show = enabled and wanted()
    if show and in_notebook() and _widgets():
        from tqdm.notebook import tqdm as widget_tqdm  # ipywidgets is there: the notebook's own bar

        return widget_tqdm(**kwargs)
    return text_tqdm(disable=not show, **kwargs)
