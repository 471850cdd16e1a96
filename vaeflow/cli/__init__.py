"""The ``vaeflow`` command line."""

from vaeflow.cli.main import main

__all__ = ["main"]
