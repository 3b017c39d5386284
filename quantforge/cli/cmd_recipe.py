"""`quantforge recipe …`: lint, show, args, schema (and import/diff from the publish stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from quantforge.cli._app import app, recipe_app
from quantforge.cli._options import ImatrixOpt, InventoryOpt, JsonOpt, QuantOpt, RecipeArg
from quantforge.errors import RecipeError
from quantforge.units import human_bytes

app.add_typer(recipe_app, name="recipe")


@recipe_app.command("schema")
def schema_cmd(
    output: str = typer.Option(
        None, "--output", "-o", help="Write the schema to this file instead of stdout."
    ),
) -> None:
    """Print the JSON Schema of recipe files (for editor validation and completion).

    Example: quantforge recipe schema -o recipe.schema.json
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.recipe import recipe_json_schema  # startup

    schema = recipe_json_schema()
    if output:
        from quantforge.fsutil import atomic_write_text  # startup

        atomic_write_text(Path(output), json.dumps(schema, indent=2) + "\n")
    else:
        emit(schema, as_json=True)


# -- plan commands: lint, show, args (the plan stage) --------------------------------------


EngineVersionOpt = Annotated[
    str | None,
    typer.Option(
        "--engine-version",
        help='mainline llama.cpp build whose llama-quantize rules to plan, e.g. b5524 (overrides [model] '
             'engine_version).',
    ),
]


def _load(recipe: str, inventory: str | None, imatrix: str | None,  # type: ignore[no-untyped-def]
          quant: str | None,
          engine_version: str | None = None):
    from quantforge.plan import recipe_inventory  # startup
    from quantforge.recipe import load_recipe  # startup

    r = load_recipe(recipe)
    if engine_version is not None:
        from quantforge.plan._versions import parse_engine_version  # startup

        parse_engine_version(engine_version, where="--engine-version")
        r = r.model_copy(update={"model": r.model.model_copy(update={"engine_version": engine_version})})
    names = [r.variant(quant).name] if quant else [q.name for q in r.quants]
    inv = recipe_inventory(r, inventory)
    imx = imatrix if imatrix else None
    return r, inv, names, imx


@recipe_app.command("lint")
def lint_cmd(
    recipe: RecipeArg,
    quant: QuantOpt = None,
    inventory: InventoryOpt = None,
    imatrix: ImatrixOpt = None,
    engine_version: EngineVersionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a recipe against its model: unknown types, bad regexes, rules that match nothing or are
    shadowed, fallbacks, imatrix refusals, _r4 on token_embd, up/gate mismatch, no CUDA kernel.
    Exit status 2 when there is an error, 0 with only warnings.

    Example: quantforge recipe lint recipes/smollm2-135m.toml --quant IQ4_K
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.plan import lint  # startup

    r, inv, names, imx = _load(recipe, inventory, imatrix, quant, engine_version)
    result = [{"quant": n, "findings": lint(r, n, inv, imatrix=imx)} for n in names]
    emit({"recipe": r.path, "quants": result}, as_json=as_json, human=_render_lint)
    n_err = sum(1 for q in result for f in q["findings"] if f.severity == "error")
    if n_err:
        first = next(f for q in result for f in q["findings"] if f.severity == "error")
        raise RecipeError(f"{n_err} lint error(s), first: {first.message}", where=first.where or r.path)


def _render_lint(data: dict) -> str:  # type: ignore[type-arg]
    lines = []
    for q in data["quants"]:
        if not q["findings"]:
            lines.append(f"[{q['quant']}] ok")
        for f in q["findings"]:
            where = f"{f.where}: " if f.where else ""
            ex = f" ({f.count} tensors, e.g. {', '.join(f.examples)})" if f.count else ""
            lines.append(f"[{q['quant']}] {where}{f.severity}[{f.code}]: {f.message}{ex}")
    return "\n".join(lines)


@recipe_app.command("show")
def show_cmd(
    recipe: RecipeArg,
    quant: QuantOpt = None,
    inventory: InventoryOpt = None,
    imatrix: ImatrixOpt = None,
    engine_version: EngineVersionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Expand a recipe: per-tensor types llama-quantize will write, tensor data (GiB, BPW), ik row metadata
    and file bytes, each exact.

    Example: quantforge recipe show recipes/smollm2-135m.toml --json
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.plan import expand  # startup

    r, inv, names, imx = _load(recipe, inventory, imatrix, quant, engine_version)
    plans = [expand(r, n, inv, imatrix=imx) for n in names]
    data = {"quants": [_plan_json(p) for p in plans]}
    emit(data if as_json else plans, as_json=as_json, human=_render_show)


def _plan_json(p) -> dict:  # type: ignore[no-untyped-def, type-arg]
    from quantforge.plan import group_totals, layer_totals  # startup

    return {
        "name": p.name,
        "engine": p.engine,
        "ftype": p.ftype,
        "tensor_bytes": p.tensor_bytes,
        "row_meta_bytes": p.row_meta_bytes,
        "weight_bytes": p.weight_bytes,
        "tensor_gib": round(p.tensor_bytes / 2**30, 3),
        "file_bytes": p.file_bytes,
        "file_bytes_exact": p.file_bytes_exact,
        "bpw": round(p.bpw, 4),
        "n_params": p.n_params,
        "quantize_args": p.quantize_args,
        "groups": group_totals(p),
        "layers": {str(k): v for k, v in sorted(layer_totals(p).items())},
        "tensors": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "type": t.type,
                "requested_type": t.requested_type,
                "bytes": t.bytes,
                "rule": t.rule,
                "note": t.note,
                "group": t.group,
                "layer": t.layer,
                "place": t.place,
            }
            for t in p.tensors
        ],  # fmt: skip
    }


def _render_show(plans: list) -> str:  # type: ignore[type-arg]
    from quantforge.plan import collapse, group_totals  # startup

    out = []
    for p in plans:
        # Three sizes that people quote and mix up: tensor data in GiB as llama.cpp's load log and
        # model cards print it (ik's per-row scales included), those scales alone (gguf-py and
        # Thireus' listings leave them out), and the bytes of the file(s).
        exact = "exact" if p.file_bytes_exact else "estimate"
        out.append(
            f"{p.name}  [{p.engine} {p.ftype}]  {p.tensor_bytes / 2**30:.3f} GiB ({p.bpw:.3f} BPW) "
            "tensor data, "
            f"{p.row_meta_bytes / 2**30:.3f} GiB of it row metadata; file {p.file_bytes:,} bytes ({exact}); "
            f"{p.n_params / 1e9:.3f} B params"
        )
        totals = group_totals(p)
        out.append("  " + "  ".join(f"{g} {human_bytes(b)}" for g, b in totals.items()))
        rows = collapse(p)
        width = max((len(r.pattern) for r in rows), default=10)
        for row in rows:
            mult = f"×{row.count}" if row.count > 1 else ""
            req = f"  (asked {row.requested_type}: {row.note})" if row.note else ""
            out.append(
                f"  {row.pattern:<{width}} {mult:>5}  {row.type:<10} {human_bytes(row.bytes):>11}{req}"
            )
        out.append("")
    return "\n".join(out)


@recipe_app.command("args")
def args_cmd(
    recipe: RecipeArg,
    quant: QuantOpt = None,
    inventory: InventoryOpt = None,
    imatrix: ImatrixOpt = None,
    binary: str = typer.Option("llama-quantize", "--binary", help="llama-quantize to name in the command."),
    output: str = typer.Option(None, "--output", "-o", help="Output file (default: <model>-<variant>.gguf)."),
    engine_version: EngineVersionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the exact llama-quantize command for each variant (ik --custom-q / mainline --tensor-type).

    Example: quantforge recipe args recipes/smollm2-135m.toml --quant IQ4_K
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.names import output_stem  # startup
    from quantforge.plan import expand, quantize_command, shell_join  # startup

    r, inv, names, imx = _load(recipe, inventory, imatrix, quant, engine_version)
    base = r.resolve_path(r.model.base) if r.model.base else (inventory or r.model.id or "model.gguf")
    stem = output_stem(r, Path(str(base)))  # the name `quantforge build` gives the output
    items = []
    for n in names:
        p = expand(r, n, inv, imatrix=imx)
        out = output if (output and len(names) == 1) else f"{stem}-{n}.gguf"
        cmd = quantize_command(p, binary=binary, input_path=str(base), output_path=out)
        items.append({"name": n, "args": cmd, "command": shell_join(cmd)})
    emit({"quants": items}, as_json=as_json, human=lambda d: "\n".join(i["command"] for i in d["quants"]))
