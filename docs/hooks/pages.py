"""Pages made from the code when the site is built: the command line's help. (The notebooks, the
changelog and the contributing guide are linked into docs/ from where they live.)"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

from mkdocs.structure.files import Files


def _help(parser: Any) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        parser.print_help()
    return out.getvalue()


def cli_reference() -> str:
    """``vaeflow --help`` and every subcommand's, as the installed parser prints them."""
    from vaeflow.cli.main import build_parser
    from vaeflow.cli.parsing import subparsers

    parser = build_parser()
    parts = ["```text", _help(parser).rstrip(), "```"]
    for sub in subparsers(parser):
        parts += [f"## {sub.prog}", "", "```text", _help(sub).rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if "<!-- cli-reference -->" in markdown:
        return markdown.replace("<!-- cli-reference -->", cli_reference())
    return markdown
