"""Rich display in notebooks: the small HTML tables that ``_repr_html_`` methods return."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STYLE = "border-collapse:collapse;font-size:13px"
CELL = "border:1px solid #ccc;padding:2px 8px;text-align:left"


def html_table(title: str, rows: Iterable[tuple[str, Any]], footer: str = "") -> str:
    """A two-column table of ``(label, value)`` rows under a bold ``title``; every text escaped."""
    body = "".join(
        f'<tr><th style="{CELL}">{html.escape(str(label))}</th><td style="{CELL}">{html.escape(str(value))}</td></tr>'
        for label, value in rows
    )
    tail = f"<p style='font-size:12px'>{html.escape(footer)}</p>" if footer else ""
    return f"<div><b>{html.escape(title)}</b><table style='{STYLE}'>{body}</table>{tail}</div>"


def html_list_table(columns: list[str], rows: Iterable[Iterable[Any]], limit: int = 20) -> str:
    """A table with a header row, showing the first ``limit`` rows and how many more there are."""
    shown, more = [], 0
    for i, row in enumerate(rows):
        if i < limit:
            shown.append("".join(f'<td style="{CELL}">{html.escape(str(v))}</td>' for v in row))
        else:
            more += 1
    head = "".join(f'<th style="{CELL}">{html.escape(c)}</th>' for c in columns)
    body = "".join(f"<tr>{r}</tr>" for r in shown)
    tail = f"<p style='font-size:12px'>... and {more} more</p>" if more else ""
    return f"<table style='{STYLE}'><tr>{head}</tr>{body}</table>{tail}"


_REMOTE_ICON = re.compile(r"<link\s+rel=\"(?:shortcut )?icon\"\s+href=\"https?://[^\"]*\"\s*/?>\s*", re.IGNORECASE)


def without_remote_icon(path: Path) -> None:
    """Drop a page's icon link to another host (Dask's reports link one), so that opening the page
    makes no request off this machine."""
    text = path.read_text(encoding="utf-8")
    cleaned = _REMOTE_ICON.sub("", text)
    if cleaned != text:
        path.write_text(cleaned, encoding="utf-8")


_CONTROL = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escaped(name: str) -> str:
    """A name safe for one tab-separated line: backslash, tab, newline and other control
    characters written as escapes (``\\t``, ``\\n``, ``\\x1b``); ``--json`` gives names raw."""
    out = []
    for ch in name:
        if ch in _CONTROL:
            out.append(_CONTROL[ch])
        elif ord(ch) < 32 or ord(ch) == 127 or (0x80 <= ord(ch) < 0xA0):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
