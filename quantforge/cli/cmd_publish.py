"""`quantforge card`, `quantforge publish`, `quantforge recipe import|diff` (the publish stage)."""

from __future__ import annotations

from typing import Any

import typer

from quantforge.cli import app
from quantforge.cli._options import AllQuantsOpt, ForceOpt, JsonOpt, OutDirOpt, WaitOpt
from quantforge.cli.cmd_recipe import recipe_app


@app.command("card")
def card_cmd(
    source: str = typer.Argument(
        ...,
        metavar="SOURCE",
        help="Recipe TOML whose variants were built (and evaluated), or a quantized GGUF (local, any shard, hf://).",
    ),
    quant: AllQuantsOpt = None,
    repo: str = typer.Option(None, "--repo", help="ORG/NAME shown in the download instructions."),
    out_dir: OutDirOpt = None,
    output: str = typer.Option("README.md", "--output", "-o", help="Where to write the card ('-' for stdout)."),
    force: ForceOpt = False,
) -> None:
    """Generate the model card (README.md) from the recipe and the build/eval manifests, or from a GGUF's header.

    Examples:

      quantforge card recipes/smollm2-135m.toml --repo my-org/SmolLM2-135M-GGUF

      quantforge card hf://org/repo/Model-IQ2_K_R4-00001-of-00005.gguf -o -
    """
    import sys
    from pathlib import Path

    if not source.lower().endswith(".toml"):
        from quantforge.errors import UsageError
        from quantforge.fsutil import atomic_write_text
        from quantforge.publish.card import card_from_source

        if quant:
            raise UsageError("--quant names recipe variants; a GGUF is one variant", where="--quant",
                             hint="drop --quant")  # fmt: skip
        text = card_from_source(source, repo=repo)
        if output == "-":
            sys.stdout.write(text)
            return
        out = Path(output)
        if out.exists() and not force:
            raise UsageError(f"{out} exists", where="--output", hint="pass --force to overwrite it")
        atomic_write_text(out, text)
        print(f"wrote {out} (from the header of {Path(source).name})")
        return

    from quantforge.publish.upload import make_card

    _warn_base_model(source)
    res = make_card(source, repo=repo, quants=quant or None, out_dir=out_dir,
                    output=None if output == "-" else output, force=force)
    if res.path is None:
        sys.stdout.write(res.text)
    else:
        print(f"wrote {res.path} ({len(res.variants)} variant(s): {', '.join(res.variants)})")


def _warn_base_model(recipe_path: str) -> None:
    """One warning line when the card will have no ``base_model`` (the Hub then shows the quant
    unlinked from its base model), with the fix."""
    import sys

    from quantforge.inventory import base_model_of
    from quantforge.recipe import load_recipe

    found, why = base_model_of(load_recipe(recipe_path))
    if found is None:
        print(f"quantforge: warning: the card will have no base_model ({why}), so the Hub will not link the "
              f'quant to its base model (set [publish] base_model = "org/name")', file=sys.stderr)  # fmt: skip


@app.command("publish")
def publish_cmd(
    recipe: str = typer.Argument(..., help="Recipe TOML whose variants were built."),
    repo: str = typer.Option(None, "--repo", help="Hugging Face repo ORG/NAME (created if needed)."),
    quant: AllQuantsOpt = None,
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan (and stage) only; no network."),
    staging: str = typer.Option(None, "--staging", help="With --dry-run: write the exact upload folder here."),
    out_dir: OutDirOpt = None,
    no_imatrix: bool = typer.Option(False, "--no-imatrix", help="Do not upload the importance matrix."),
    force: ForceOpt = False,
    max_file_bytes: int = typer.Option(None, "--max-file-bytes", hidden=True, help="Per-file limit (default 50 GB)."),
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload the built variants and the generated card to Hugging Face (card last).

    The token comes from HF_TOKEN or `hf auth login`; files already on the Hub with the same
    sha256 are skipped, so an interrupted publish is resumed by running it again. Only files
    inside the output folder (and the recipe's own imatrix) are published; the staging folder
    may not be or contain the build folder, and --force replaces only an earlier staging.

    Examples:

      quantforge publish recipes/smollm2-135m.toml --repo my-org/SmolLM2-135M-GGUF --dry-run --staging stage/

      quantforge publish recipes/smollm2-135m.toml --repo my-org/SmolLM2-135M-GGUF --quant IQ4_KS
    """
    import sys

    from quantforge.cli._output import emit
    from quantforge.constants import HF_MAX_FILE_BYTES
    from quantforge.errors import UsageError
    from quantforge.publish.upload import publish

    if staging and not dry_run:
        raise UsageError("--staging needs --dry-run", where="--staging", hint="add --dry-run")
    _warn_base_model(recipe)
    res = publish(recipe, repo=repo, quants=quant or None, private=private, dry_run=dry_run, staging=staging,
                  out_dir=out_dir, include_imatrix=not no_imatrix, force=force,
                  max_file_bytes=max_file_bytes or HF_MAX_FILE_BYTES, progress=sys.stderr.isatty(), wait=wait)
    emit(res.model_dump(mode="json", exclude={"plan": {"card"}}), as_json=as_json, human=lambda _: _human(res))


def _human(res: Any) -> str:
    from quantforge.publish.upload import iter_plan_lines
    from quantforge.units import human_bytes

    plan = res.plan
    if res.dry_run:
        head = f"dry run: {len(plan.files)} file(s), {human_bytes(plan.total_bytes)} for {plan.repo}"
        if plan.staging:
            head += f"; staged in {plan.staging} (upload-plan.json beside repo/)"
        return "\n".join([head, *iter_plan_lines(plan)])
    lines = [f"published {res.repo}: {len(res.uploaded)} file(s) uploaded ({human_bytes(res.bytes_uploaded)}), "
             f"{len(res.skipped)} already there"]
    for c in res.commits:
        lines.append(f"  {c.oid[:12] if c.oid else 'no change   '}  {c.summary}")
    return "\n".join(lines)


@recipe_app.command("import")
def import_cmd(
    source: str = typer.Argument(
        ...,
        help="A quantized GGUF (local, any shard, or hf://org/repo[@rev]/file.gguf), or a rule file: ik --custom-q, "
        "mainline --tensor-type / --tensor-type-file, or a Thireus .recipe.",
    ),
    output: str = typer.Option(None, "--output", "-o", help="Write the recipe here (default: stdout)."),
    name: str = typer.Option(None, "--name", help="Variant name (default: from the file name)."),
    engine: str = typer.Option(None, "--engine", help="ik or mainline (default: the file's fork or dialect)."),
    model: str = typer.Option(
        None, "--model", help="For a rule file: the model it is for (shipped id, config.json, GGUF or hf://)."
    ),
    dialect: str = typer.Option(
        None, "--dialect", help="custom-q, tensor-type, tensor-type-file or thireus (default: detected)."
    ),
    ftype: str = typer.Option(None, "--ftype", help="For a rule file: llama-quantize's ftype (default: from the rules)."),
    layout: str = typer.Option(None, "--layout", help="For a rule file: ik or mainline layout of the model."),
    force: ForceOpt = False,
) -> None:
    """Write a recipe that reproduces an existing quant's per-tensor types (header bytes only), or that holds
    another tool's rule file (--custom-q, --tensor-type, --tensor-type-file, Thireus .recipe).

    Examples:

      quantforge recipe import hf://ubergarm/DeepSeek-R1-0528-GGUF/IQ2_K_R4/DeepSeek-R1-0528-IQ2_K_R4-00001-of-00005.gguf -o r1.toml

      quantforge recipe import custom.txt --model deepseek-ai/DeepSeek-V3-0324 --ftype IQ2_XXS -o v3.toml
    """
    import sys
    from pathlib import Path

    from quantforge.errors import UsageError

    for flag, value, allowed in (("--engine", engine, ("ik", "mainline")), ("--layout", layout, ("ik", "mainline", "legacy")),
                                 ("--dialect", dialect, ("custom-q", "tensor-type", "tensor-type-file", "thireus"))):
        if value is not None and value not in allowed:
            raise UsageError(f"unknown {flag[2:]} {value!r}", where=flag, hint=f"use one of {', '.join(allowed)}")
    is_gguf = source.startswith("hf://") or source.lower().endswith(".gguf") or _has_gguf_magic(Path(source))
    # A config.json or a recipe is a model SOURCE (refused below as "not a quant"), never a rule file.
    is_model_source = source.lower().endswith((".json", ".toml"))
    if not is_gguf and not is_model_source:
        from quantforge.publish.dialects import import_dialect

        if not model:
            raise UsageError(f"{Path(source).name} is a rule file: it needs the model it is for", where="--model",
                             hint="add --model ORG/NAME (a shipped id), a config.json, a GGUF or hf://")  # fmt: skip
        d = import_dialect(source, model=model, dialect=dialect, engine=engine, layout=layout,  # type: ignore[arg-type]
                           ftype=ftype, name=name, output=output, force=force)  # fmt: skip
        if d.path is None:
            sys.stdout.write(d.text)
        else:
            print(f"wrote {d.path}: {d.rules} rule(s) from a {d.dialect} file, engine {d.engine}")
        if d.dropped:
            print(f"note: {len(d.dropped)} rule(s) only meet tensors llama-quantize never quantizes and were left out, "
                  f"e.g. {d.dropped[0]}", file=sys.stderr)  # fmt: skip
        return
    for flag, value in (("--model", model), ("--dialect", dialect), ("--ftype", ftype), ("--layout", layout)):
        if value:
            raise UsageError(f"{flag} is for rule files; a GGUF says all of it itself", where=flag, hint=f"drop {flag}")

    from quantforge.publish.importer import import_recipe

    res = import_recipe(source, name=name, engine=engine, output=output, force=force)
    if res.path is None:
        sys.stdout.write(res.text)
    else:
        print(f"wrote {res.path}: variant {res.name}, default {res.default}, {len(res.rules)} rule(s) "
              f"for {res.n_tensors} tensors")
    if res.mismatches:
        print(f"warning: {len(res.mismatches)} tensor(s) would re-expand differently, e.g. {res.mismatches[0]}",
              file=sys.stderr)


def _has_gguf_magic(path: Any) -> bool:
    from quantforge.errors import QuantforgeError
    from quantforge.paths import open_input

    try:  # open_input never blocks (a FIFO is refused, not waited on): the reader says why later
        with open_input(path) as f:
            return f.read(4) == b"GGUF"
    except (OSError, QuantforgeError):
        return False


@recipe_app.command("export")
def export_cmd(
    recipe: str = typer.Argument(..., help="Recipe TOML."),
    quant: str = typer.Option(None, "--quant", "-q", help="Variant (default: the first)."),
    dialect: str = typer.Option(
        ..., "--dialect", help="custom-q (ik), tensor-type or tensor-type-file (mainline), or thireus."
    ),
    output: str = typer.Option(None, "--output", "-o", help="Write here (default: stdout)."),
    force: ForceOpt = False,
) -> None:
    """Write a variant's rules in another tool's dialect: ik --custom-q, mainline --tensor-type /
    --tensor-type-file, or a Thireus .recipe (one line per tensor kind and type, from the expanded plan).

    Example: quantforge recipe export recipes/kimi-k2-instruct.toml -q IQ2_KL --dialect custom-q
    """
    import sys
    from pathlib import Path

    from quantforge.errors import UsageError
    from quantforge.fsutil import atomic_write_text
    from quantforge.plan import expand, recipe_inventory
    from quantforge.publish.dialects import DIALECTS, export_dialect
    from quantforge.recipe import load_recipe

    if dialect not in DIALECTS:
        raise UsageError(f"unknown dialect {dialect!r}", where="--dialect", hint=f"use one of {', '.join(DIALECTS)}")
    r = load_recipe(recipe)
    plan = expand(r, quant, recipe_inventory(r), imatrix=False) if dialect == "thireus" else None
    text = export_dialect(r, quant, dialect, plan=plan)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    from quantforge.paths import refuse_input_as_output

    out = Path(output)
    refuse_input_as_output(out, [("the recipe it is exported from", recipe)], field="--output",
                           hint="write the rules to a new file")
    if out.exists() and not force:
        raise UsageError(f"{out} exists", where="--output", hint="pass --force to overwrite it")
    atomic_write_text(out, text if text.endswith("\n") else text + "\n")
    print(f"wrote {out} ({dialect})")


@recipe_app.command("diff")
def diff_cmd(
    a: str = typer.Argument(..., help="First quant (GGUF path or hf://)."),
    b: str = typer.Argument(..., help="Second quant (GGUF path or hf://)."),
    as_json: JsonOpt = False,
) -> None:
    """List the tensors whose type differs between two quants, grouped, with byte totals.

    Example: quantforge recipe diff A-IQ4_KS.gguf B-IQ4_KS.gguf
    """
    from quantforge.cli._output import emit
    from quantforge.publish.importer import diff_quants

    emit(diff_quants(a, b), as_json=as_json, human=_human_diff)


def _human_diff(d: Any) -> str:
    from quantforge.units import human_bytes

    lines = [f"A: {d.a}", f"B: {d.b}"]
    if not d.tensors:
        lines.append(f"identical tensor types ({d.n_same} tensors)")
        return "\n".join(lines)
    for g in d.groups:
        where = f" layers {g.layers}" if g.layers else ""
        lines.append(f"{g.pattern}{where} ×{g.count}  {g.type_a or '-'} -> {g.type_b or '-'}  "
                     f"{human_bytes(g.bytes_a)} -> {human_bytes(g.bytes_b)}")
    sign = "+" if d.delta_bytes >= 0 else "-"
    lines.append(f"{len(d.tensors)} tensor(s) differ, {d.n_same} same; B - A = {sign}{human_bytes(abs(d.delta_bytes))} "
                 f"(A {human_bytes(d.bytes_a)}, B {human_bytes(d.bytes_b)})")
    return "\n".join(lines)
