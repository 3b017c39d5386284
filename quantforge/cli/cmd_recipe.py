"""`quantforge recipe …`: lint, show, args, schema (and import/diff from the publish stage)."""

from __future__ import annotations

import typer

from quantforge.cli import app

recipe_app = typer.Typer(help="Work with TOML quant recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
