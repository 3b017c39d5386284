"""Options several commands share, defined once as ``Annotated`` aliases.

Use as ``as_json: JsonOpt = False``: the name, short flag and help text live here only, so
``--threads`` means the same thing (and reads the same in ``--help``) in every command.
Only typer and the standard library are imported: ``quantforge --help`` must stay fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

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
    typer.Option("--quant", "-q", help="Variant to include (repeatable; default: every variant of the recipe)."),
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
    bool, typer.Option("--wait", help="If another quantforge run is using the folder, wait for it instead of stopping.")
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
