"""`quantforge card`, `quantforge publish`, `quantforge recipe import|diff` (the publish stage)."""

from __future__ import annotations

from typing import Any

import typer

from quantforge.cli import app
from quantforge.cli._options import AllQuantsOpt, ForceOpt, JsonOpt, OutDirOpt, WaitOpt
from quantforge.cli.cmd_recipe import recipe_app


@app.command("card")
def card_cmd(
    recipe: str = typer.Argument(..., help="Recipe TOML whose variants were built (and evaluated)."),
    quant: AllQuantsOpt = None,
    repo: str = typer.Option(None, "--repo", help="ORG/NAME shown in the download instructions."),
    out_dir: OutDirOpt = None,
    output: str = typer.Option("README.md", "--output", "-o", help="Where to write the card ('-' for stdout)."),
    force: ForceOpt = False,
) -> None:
    """Generate the model card (README.md) from the recipe and the build/eval manifests.

    Example: quantforge card recipes/smollm2-135m.toml --repo my-org/SmolLM2-135M-GGUF
    """
    import sys

    from quantforge.publish.upload import make_card

    res = make_card(recipe, repo=repo, quants=quant or None, out_dir=out_dir,
                    output=None if output == "-" else output, force=force)
    if res.path is None:
        sys.stdout.write(res.text)
    else:
        print(f"wrote {res.path} ({len(res.variants)} variant(s): {', '.join(res.variants)})")


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
    source: str = typer.Argument(..., help="A GGUF (local, split set, or hf://org/repo[@rev]/file.gguf)."),
    output: str = typer.Option(None, "--output", "-o", help="Write the recipe here (default: stdout)."),
    name: str = typer.Option(None, "--name", help="Variant name (default: from the file name)."),
    engine: str = typer.Option(None, "--engine", help="ik or mainline (default: ik when an ik-only type is used)."),
    force: ForceOpt = False,
) -> None:
    """Write a recipe that reproduces an existing quant's per-tensor types (header bytes only).

    Example: quantforge recipe import hf://ubergarm/DeepSeek-R1-0528-GGUF/IQ2_K_R4/DeepSeek-R1-0528-IQ2_K_R4-00001-of-00005.gguf -o r1.toml
    """
    import sys

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
