"""Options several commands share, defined once as ``Annotated`` aliases.

Use as ``as_json: JsonOpt = False``: the name, short flag and help text live here only, so
``--threads`` means the same thing (and reads the same in ``--help``) in every command.
Only typer, the standard library and the error types are imported: ``quantforge --help`` must
stay fast. ``recipe_variants`` resolves the RECIPE / --quant / --all / --out options eval and
sweep share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantforge import units
from quantforge.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
BinDirOpt = Annotated[
    str | None,
    typer.Option(
        "--bin-dir",
        help="Folder of an ik_llama.cpp or llama.cpp build (its llama-* tools); overrides the bundled ones.",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: all cores).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite (rebuild) existing outputs.")]
#: One variant, or every variant of the recipe when left out (lint, show, args, imatrix coverage).
QuantOpt = Annotated[str | None, typer.Option("--quant", "-q", help="Only this variant (default: all).")]
#: The variant a command works on (eval, sweep): one, the recipe's first when left out.
VariantOpt = Annotated[
    str | None, typer.Option("--quant", "-q", help="Variant of the recipe (default: the first).")
]
#: Several variants (build): repeatable.
QuantsOpt = Annotated[
    list[str] | None, typer.Option("--quant", "-q", help="Variant(s) (repeatable; default: the first).")
]
#: Several variants, every variant of the recipe when left out (card, publish): repeatable.
AllQuantsOpt = Annotated[
    list[str] | None,
    typer.Option("--quant", "-q",
                 help="Variant to include (repeatable; default: every variant of the recipe)."),
]
OutDirOpt = Annotated[
    str | None, typer.Option("--out-dir", help="Folder of the built variants (default: the recipe's folder).")
]
#: Plan against another model than the recipe's [model] (recipe lint/show/args).
InventoryOpt = Annotated[
    str | None,
    typer.Option("--inventory", help="Plan against this GGUF / hf:// / model id instead of [model]."),
]
ImatrixOpt = Annotated[
    str | None,
    typer.Option("--imatrix", help="Importance matrix file; overrides the recipe's [imatrix] file."),
]
RecipeArg = Annotated[str, typer.Argument(help="Recipe TOML file.")]
#: Another run holds the folder: wait for it instead of stopping (build, eval, publish staging).
WaitOpt = Annotated[
    bool, typer.Option("--wait",
                       help="If another quantforge run is using the folder, wait for it instead of stopping.")
]
#: A Ray cluster to run on (build, eval, sensitivity, sweep); resolved by quantforge.cluster.config.
ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="Run the tasks on a Ray cluster: ray://HOST:PORT (default: QUANTFORGE_CLUSTER, else [cluster] "
        "address in the user config; 'local' runs here).",
    ),
]


def recipe_variants(recipe_path: str, quant: str | None, all_: bool,
                    out_dir: str | None) -> tuple[list[tuple[str, Path]], Path | None]:
    """(variant name, built GGUF) pairs of a recipe, and its base model path when local."""
    from quantforge.names import built_outputs, is_hf  # startup
    from quantforge.recipe import load_recipe  # startup

    recipe = load_recipe(recipe_path)
    if quant and all_:
        raise UsageError("--quant and --all exclude each other", where="eval")
    names = [v.name for v in recipe.quants] if all_ else [recipe.variant(quant).name]
    out = built_outputs(recipe, names, out_dir=Path(out_dir) if out_dir else None)
    src = recipe.model.base
    base = Path(str(recipe.resolve_path(src))).expanduser() if src and not is_hf(src) else None
    return out, base


def size_flag(text: str | int | None, flag: str) -> int | None:
    """A size flag's value: ``"50G"``/``"40M"``/``"1.5T"``/``"123"`` -> bytes (decimal units, like
    llama-gguf-split and the Hub); None when the flag was not given."""
    if text is None:
        return None
    try:
        return units.parse_size(text, bare=True)
    except ValueError:
        raise UsageError(f"bad size {text!r}", where=flag, hint="write e.g. 50G, 40M, 500000000") from None
