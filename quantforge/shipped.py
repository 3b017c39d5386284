"""Where the shipped recipes and hardware targets live.

In a wheel they are the packages ``quantforge.shipped_recipes`` / ``quantforge.shipped_targets``
(setup.py maps the top-level ``recipes/`` and ``hw_targets/`` folders there); in a source
checkout or an editable install they are those folders themselves.
"""

from __future__ import annotations

from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _locate(package: str, folder: str) -> Path:
    checkout = _REPO / folder
    if checkout.is_dir() and (_REPO / "pyproject.toml").is_file():
        return checkout
    try:
        from importlib.resources import files

        return Path(str(files(package)))
    except (ModuleNotFoundError, TypeError):
        return checkout


def recipes_dir() -> Path:
    return _locate("quantforge.shipped_recipes", "recipes")


def targets_dir() -> Path:
    return _locate("quantforge.shipped_targets", "hw_targets")
