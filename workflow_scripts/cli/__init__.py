"""The `distillery` command line: `main.py` holds the parser and the registry, one module per stage the commands.

`workflow_scripts.cli:main` is the entry point (pyproject's `[project.scripts]`).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
