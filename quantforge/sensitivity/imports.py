"""Published sensitivity tables imported against a recipe's model (tensor names checked, bytes known)."""

from __future__ import annotations

from pathlib import Path

from quantforge.errors import InputError
from quantforge.fit.api import recipe_inventory
from quantforge.recipe import load_recipe
from quantforge.sensitivity.table import SensitivityTable, read_table, write_table


def import_for_recipe(
    recipe_path: str | Path,
    source: str | Path,
    *,
    quant: str | None = None,
    output: str | Path | None = None,
    curve: str | Path | None = None,
    baseline: float | None = None,
    baseline_type: str | None = None,
    force: bool = False,
) -> tuple[SensitivityTable, Path]:
    """Read ``source`` (any supported format) for the recipe's model and write it in quantforge's form."""
    from quantforge.paths import refuse_input_as_output

    recipe = load_recipe(recipe_path)
    rdir = Path(recipe.path or ".").resolve().parent
    out = Path(output) if output else rdir / f"{Path(str(source)).stem}.sensitivity.csv"
    refuse_input_as_output(out, [("the table it is imported from", source), ("the recipe", recipe.path or ""),
                                 *([("the curve", curve)] if curve else [])],
                           field="--output", hint="write the table to a new .csv or .json file")  # fmt: skip
    inv = recipe_inventory(recipe)
    shapes = [(t.name, tuple(t.shape)) for t in inv.tensors]
    table = read_table(source, engine=recipe.engine, curve=curve, baseline=baseline, baseline_type=baseline_type,
                       tensors=shapes)  # fmt: skip
    names = {n for n, _ in shapes}
    foreign = [t for g in table.groups for t in g.tensors if t not in names]
    if foreign and len(foreign) == sum(len(g.tensors) for g in table.groups):
        raise InputError(
            f"none of the table's tensors is in {inv.source} (e.g. {foreign[0]})", where=str(source),
            hint="import a table measured on this model (or one of the same architecture and layout)",
        )  # fmt: skip
    notes = list(table.notes)
    if foreign:
        notes.append(f"{len(foreign)} tensors of the table are not in this model and are ignored, "
                     f"e.g. {', '.join(foreign[:3])}")  # fmt: skip
    model = recipe.model.name or recipe.model.id or inv.source
    table = table.model_copy(update={"model": model, "arch": inv.arch, "notes": tuple(notes),
                                     "base_variant": recipe.variant(quant).name if quant else None})  # fmt: skip
    write_table(table, out, force=force)
    return table, out
