"""quantforge: declarative GGUF quant recipes, exact size and fit planning, build, evaluate, publish.

The package is cut along the data flow: ``recipe`` → ``inventory`` → ``plan`` → ``fit`` →
``build`` → ``evaluate`` → ``publish``. ``catalogue`` alone holds quant-type facts.

Public names are re-exported lazily (PEP 562 ``__getattr__``): ``import quantforge`` loads no
stage, pydantic or numpy, so the CLI's ``--help`` stays fast; ``quantforge.expand`` imports
``quantforge.plan`` on first use.

``quantforge.build`` is the build *stage module* (a submodule name always wins over a package
attribute once it is imported); its entry point is ``quantforge.build_recipe``
(= ``quantforge.build.build``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute in it); attribute None: the module itself.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # recipe / inventory / plan
    "load_recipe": ("quantforge.recipe", "load_recipe"),
    "Recipe": ("quantforge.recipe", "Recipe"),
    "load_inventory": ("quantforge.inventory", "load_inventory"),
    "TensorInventory": ("quantforge.inventory", "TensorInventory"),
    "expand": ("quantforge.plan", "expand"),
    "lint": ("quantforge.plan", "lint"),
    "quantize_command": ("quantforge.plan", "quantize_command"),
    "QuantPlan": ("quantforge.plan", "QuantPlan"),
    "TensorPlan": ("quantforge.plan", "TensorPlan"),
    "catalogue": ("quantforge.catalogue", None),
    # tools, imatrix, build, manifests
    "find_toolchain": ("quantforge.toolchain", "find_toolchain"),
    "read_imatrix": ("quantforge.imatrix", "read_imatrix"),
    "build": ("quantforge.build", None),
    "build_recipe": ("quantforge.build", "build"),
    "read_manifest": ("quantforge.manifest", "read_manifest"),
    "update_manifest": ("quantforge.manifest", "update_manifest"),
    # fit
    "plan_fit": ("quantforge.fit", "plan_fit"),
    "FitReport": ("quantforge.fit", "FitReport"),
    "HardwareTarget": ("quantforge.targets", "HardwareTarget"),
    "load_target": ("quantforge.targets", "load_target"),
    "solve_fit": ("quantforge.fit.solver", "solve_recipe"),
    # sensitivity
    "run_sensitivity": ("quantforge.sensitivity.measure", "run_sensitivity"),
    "read_sensitivity": ("quantforge.sensitivity.table", "read_table"),
    "SensitivityTable": ("quantforge.sensitivity.table", "SensitivityTable"),
    # test models
    "write_miniature": ("quantforge.miniature", "write_miniature"),
    # errors
    **{
        name: ("quantforge.errors", name)
        for name in (
            "QuantforgeError",
            "InputError",
            "UsageError",
            "RecipeError",
            "InventoryError",
            "TargetError",
            "ToolError",
            "BuildError",
            "EvalError",
            "PublishError",
            "Interrupted",
        )
    },
}

__all__ = [  # literal, so linters see the re-exports; a test checks it against _EXPORTS
    "__version__",
    "BuildError",
    "EvalError",
    "FitReport",
    "HardwareTarget",
    "InputError",
    "Interrupted",
    "InventoryError",
    "PublishError",
    "QuantPlan",
    "QuantforgeError",
    "Recipe",
    "RecipeError",
    "SensitivityTable",
    "TargetError",
    "TensorInventory",
    "TensorPlan",
    "ToolError",
    "UsageError",
    "build",
    "build_recipe",
    "catalogue",
    "expand",
    "find_toolchain",
    "lint",
    "load_inventory",
    "load_recipe",
    "load_target",
    "plan_fit",
    "quantize_command",
    "read_imatrix",
    "read_manifest",
    "read_sensitivity",
    "run_sensitivity",
    "solve_fit",
    "update_manifest",
    "write_miniature",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'quantforge' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and editors see; nothing is imported at run time
    from quantforge import build, catalogue
    from quantforge.build import build as build_recipe
    from quantforge.errors import (
        BuildError,
        EvalError,
        InputError,
        Interrupted,
        InventoryError,
        PublishError,
        QuantforgeError,
        RecipeError,
        TargetError,
        ToolError,
        UsageError,
    )
    from quantforge.fit import FitReport, plan_fit
    from quantforge.fit.solver import solve_recipe as solve_fit
    from quantforge.imatrix import read_imatrix
    from quantforge.inventory import TensorInventory, load_inventory
    from quantforge.manifest import read_manifest, update_manifest
    from quantforge.miniature import write_miniature
    from quantforge.plan import QuantPlan, TensorPlan, expand, lint, quantize_command
    from quantforge.recipe import Recipe, load_recipe
    from quantforge.sensitivity.measure import run_sensitivity
    from quantforge.sensitivity.table import SensitivityTable
    from quantforge.sensitivity.table import read_table as read_sensitivity
    from quantforge.targets import HardwareTarget, load_target
    from quantforge.toolchain import find_toolchain
