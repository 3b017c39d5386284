"""Expansion of a recipe variant against a tensor inventory: exact types, bytes, lint, command.

``expand`` predicts, for every tensor, the type the engine's ``llama-quantize`` really writes
(rules first-match-wins, the recipe's ``default`` as the final catch-all, row-length
fallbacks, ``_rN`` -> base where rows do not divide, token_embd never interleaved) and the
exact output file size (header serialized with the changed KV + tensor data padded to the
alignment). ``quantize_args_for``/``quantize_command`` emit the arguments that make the engine
do exactly that; ``lint`` reports what is valid but probably wrong.

Emission choice: the variant's ``default`` is always emitted as a last ``.*=default`` rule
(``--custom-q`` on ik, ``--tensor-type`` on mainline). Rules only ever reach quantizable
tensors (both engines decide "quantize or copy" before looking at rules), so the catch-all
never quantizes a norm or a 1-D tensor, and the ftype mixture never decides a type. A
variant whose ``default`` is ``"mixture"`` (``MIXTURE``) asks for the engine's own ftype
mixture instead; ``quantforge.plan._engine`` replicates it.
"""

from __future__ import annotations

from quantforge.imatrix import ImatrixMeta, read_imatrix_meta
from quantforge.inventory import recipe_inventory
from quantforge.plan._expand import (
    collapse,
    expand,
    file_plan,
    group_totals,
    layer_totals,
    quantize_args_for,
    quantize_command,
    recipe_build,
    shell_join,
    source_plans,
    tensor_group,
)
from quantforge.plan._lint import lint
from quantforge.plan._models import CollapsedRow, Group, LintFinding, QuantPlan, TensorPlan
from quantforge.recipe import MIXTURE

# The documented home of the stage's functions is ``quantforge.plan`` (reprs, docs, pickles).
for _fn in (collapse, expand, file_plan, group_totals, layer_totals, lint, quantize_args_for,
            quantize_command,
            recipe_build, shell_join, source_plans, tensor_group):
    _fn.__module__ = __name__
del _fn

__all__ = [
    "MIXTURE",
    "CollapsedRow",
    "Group",
    "ImatrixMeta",
    "LintFinding",
    "QuantPlan",
    "TensorPlan",
    "collapse",
    "expand",
    "file_plan",
    "group_totals",
    "layer_totals",
    "lint",
    "quantize_args_for",
    "quantize_command",
    "read_imatrix_meta",
    "recipe_build",
    "recipe_inventory",
    "shell_join",
    "source_plans",
    "tensor_group",
]
