"""The typer application every command module adds its commands to (``cli/__init__`` runs it).

Kept apart from ``cli/__init__`` so that a command module imports ``app`` without importing
the package that imports it.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="quantforge",
    help=(
        "Declarative GGUF quant recipes: plan exact sizes and hardware fit, build with "
        "llama-quantize, evaluate PPL/KLD and speed, publish to Hugging Face.\n\n"
        "Examples:\n\n"
        "  quantforge demo\n\n"
        "  quantforge recipe show recipes/smollm2-135m.toml\n\n"
        "  quantforge plan recipes/deepseek-r1-0528.toml --quant IQ2_K_R4 --target "
        "hw_targets/256gb-24gb.toml --ctx 32768"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: ``--debug`` as the root callback saw it (``main`` also reads it from the arguments first).
debug_requested = [False]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    debug_requested[0] = debug or debug_requested[0]

#: ``quantforge recipe …``: added to ``app`` by cmd_recipe; cmd_publish adds import/export/diff to it.
recipe_app = typer.Typer(help="Work with TOML quant recipes.", no_args_is_help=True)
