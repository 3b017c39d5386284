"""`quantforge recipe …`: lint, show, args, schema (and import/diff from the publish stage)."""

from __future__ import annotations

import typer

from quantforge.cli import app

recipe_app = typer.Typer(help="Work with TOML quant recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("schema")
def schema_cmd(
    output: str = typer.Option(None, "--output", "-o", help="Write the schema to this file instead of stdout."),
) -> None:
    """Print the JSON Schema of recipe files (for editor validation and completion).

    Example: quantforge recipe schema -o recipe.schema.json
    """
    import json
    from pathlib import Path

    from quantforge.cli._output import emit
    from quantforge.recipe import recipe_json_schema

    schema = recipe_json_schema()
    if output:
        from quantforge.fsutil import atomic_write_text

        atomic_write_text(Path(output), json.dumps(schema, indent=2) + "\n")
    else:
        emit(schema, as_json=True)
