"""Where the shipped recipes and hardware targets live.

In a wheel they are the packages ``quantforge.shipped_recipes`` / ``quantforge.shipped_targets``
(setup.py maps the top-level ``recipes/`` and ``hw_targets/`` folders there); in a source
checkout or an editable install they are those folders themselves.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _locate(package: str, folder: str) -> Path:
    checkout = _REPO / folder
    if checkout.is_dir() and (_REPO / "pyproject.toml").is_file():
        return checkout
    # In a wheel the folders are namespace packages (no __init__.py): ask the import system
    # where they are rather than importlib.resources, whose MultiplexedPath is not a Path.

    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    return checkout


def recipes_dir() -> Path:
    return _locate("quantforge.shipped_recipes", "recipes")


def targets_dir() -> Path:
    return _locate("quantforge.shipped_targets", "hw_targets")
