"""`quantforge eval` and `plot`: the evaluate stage's commands (speed sweeps are in cmd_sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from quantforge.cli._app import app
from quantforge.cli._options import (
    BinDirOpt,
    ClusterOpt,
    JsonOpt,
    OutDirOpt,
    ThreadsOpt,
    VariantOpt,
    WaitOpt,
    recipe_variants,
)
from quantforge.errors import InputError, UsageError


def _fmt_eval(r: Any) -> str:
    from quantforge.evaluate.models import EvalResult  # startup

    assert isinstance(r, EvalResult)
    lines = [
        f"{Path(r.model).name}  [{r.engine}{' ' + r.engine_commit if r.engine_commit else ''}]",
        f"  PPL  {r.ppl:.4f} ± {r.ppl_err:.4f}   ({r.chunks} chunks × {r.ctx} ctx, {r.n_tokens_scored} "
        "tokens scored,"
        f" corpus {r.corpus_sha256[:12]}, {r.wall_s:.1f} s)",
    ]
    if r.kld is not None:
        k = r.kld
        lines += [
            f"  KLD  mean {k.mean:.6f} ± {k.mean_err:.6f}   median {k.median:.6f}   99% "
            f"{k.percentiles.get('99.0', float('nan')):.6f}"
            f"   max {k.maximum:.6f}",
            f"  same top token {k.same_top_pct:.3f} ± {k.same_top_pct_err:.3f} %   RMS Δp "
            f"{k.rms_dp_pct:.3f} ± {k.rms_dp_pct_err:.3f} %"
            f"   PPL(Q)/PPL(base) {k.ppl_ratio:.6f} ± {k.ppl_ratio_err:.6f}",
            f"  base {Path(r.base).name if r.base else '?'}  PPL {k.ppl_base:.4f} ± {k.ppl_base_err:.4f}",
        ]
    if r.node:
        lines.append(f"  node {r.node.get('ip')} {str(r.node.get('node_id'))[:8]} ({r.node.get('hostname')})")
    return "\n".join(lines)


def _recipe_eval(recipe_path: str) -> dict[str, Any]:
    """The recipe's ``[eval]`` defaults (corpus relative to the recipe's folder)."""
    from quantforge.recipe import load_recipe  # startup

    r = load_recipe(recipe_path)
    ev = r.eval
    if ev is None:
        return {}
    out: dict[str, Any] = {"ctx": ev.ctx, "chunks": ev.chunks}
    if ev.corpus:
        p = Path(ev.corpus).expanduser()
        out["corpus"] = str(p if p.is_absolute() else Path(recipe_path).resolve().parent / p)
    return out


@app.command("eval")
def eval_cmd(
    recipe: str = typer.Argument(None, help="Recipe TOML whose built variants to evaluate (or use --model)."),
    quant: VariantOpt = None,
    all_: bool = typer.Option(False, "--all", help="Every variant of the recipe."),
    model: str = typer.Option(None, "--model", "-m", help="Any GGUF file to evaluate."),
    base: str = typer.Option(None, "--base", help="Reference GGUF for KLD (F16/BF16/Q8_0)."),
    base_logits: str = typer.Option(None, "--base-logits",
                                    help="An existing --kl-divergence-base file (its key is checked)."),
    ppl: bool = typer.Option(False, "--ppl", help="Measure perplexity only."),
    kld: bool = typer.Option(False, "--kld", help="Measure KLD against --base (implies PPL)."),
    corpus: str | None = typer.Option(None, "--corpus", "-f", help="Evaluation text (UTF-8)."),
    ctx: int | None = typer.Option(None, "--ctx", "-c",
                                   help="Context of each chunk (tokens; default: the recipe's [eval] ctx, "
                                        "else 512)."),
    chunks: int | None = typer.Option(None, "--chunks",
                                      help="Number of chunks (default: the recipe's [eval] chunks, "
                                           "else all)."),
    engine: str = typer.Option("bundled", "--engine", help="bundled | ik | mainline"),
    threads: ThreadsOpt = None,
    batch: int = typer.Option(None, "--batch", "-b", help="Logical batch size."),
    binary: str = typer.Option(None, "--binary", help="Path of llama-perplexity (else the toolchain's)."),
    bin_dir: BinDirOpt = None,
    out_dir: OutDirOpt = None,
    no_manifest: bool = typer.Option(False, "--no-manifest",
                                     help="Do not record results in the variants' manifests."),
    wait: WaitOpt = False,
    cluster: ClusterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """PPL and KLD of built variants (or any GGUF), the way llama-perplexity computes them.

    Examples:

      quantforge eval recipes/smollm2.toml --quant Q4_K_M --kld --corpus eval.txt --chunks 8

      quantforge eval --model smol-Q8_0.gguf --base smol-f16.gguf --corpus eval.txt --engine mainline --json

      quantforge eval recipes/smollm2.toml --all --kld --cluster ray://10.0.0.1:10001   (one task per variant)
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.evaluate.perplexity import evaluate, record_in_manifest  # startup
    from quantforge.manifest import manifest_path  # startup

    if engine not in ("bundled", "ik", "mainline"):
        raise UsageError(f"unknown engine {engine!r}", where="--engine", hint="bundled, ik or mainline")
    if bool(recipe) == bool(model):
        raise UsageError("give a RECIPE or --model FILE.gguf (one of them)", where="eval")
    if ppl and kld:
        raise UsageError("--ppl and --kld exclude each other (--kld reports PPL too)", where="eval")
    targets: list[tuple[str, Path]]
    base_model: str | None
    if model:
        targets = [(Path(model).stem, Path(model))]
        base_model = base
    else:
        targets, recipe_base = recipe_variants(recipe, quant, all_, out_dir)
        base_model = base or (str(recipe_base) if recipe_base and (kld or base_logits) else None)
        spec = _recipe_eval(recipe)
        corpus = corpus or spec.get("corpus")
        ctx = ctx or spec.get("ctx")
        chunks = chunks or spec.get("chunks")
    ctx = ctx or 512
    if corpus is None:
        raise UsageError("an evaluation corpus is needed", where="--corpus",
                         hint="pass --corpus FILE (plain text) or set [eval] corpus in the recipe")
    want_kld = kld or (not ppl and (base_model is not None or base_logits is not None))
    if kld and base_model is None and base_logits is None:
        raise UsageError("--kld needs a reference model", where="--kld", hint="pass --base FILE.gguf")
    results = []
    eng: Any = engine  # checked above: bundled | ik | mainline
    from quantforge.cluster.config import resolve_cluster  # startup

    spec_cluster = resolve_cluster(cluster, recipe=_load(recipe) if recipe else None)
    if spec_cluster is not None:
        from quantforge.cli._progress import TaskBars, progress_enabled  # startup
        from quantforge.cluster.evaluate import eval_on_cluster  # startup

        view = TaskBars(progress_enabled(None) and not as_json)
        try:
            results = eval_on_cluster(
                [p for _, p in targets], cluster=spec_cluster, engine=eng, corpus=corpus, ctx=ctx,
                chunks=chunks,
                base=base_model if want_kld else None, base_logits=base_logits if want_kld else None,
                kld=want_kld,
                threads=threads, batch=batch, binary=binary, bin_dir=bin_dir, progress=view,
            )  # fmt: skip
        finally:
            view.close()
        for (_, path), res in zip(targets, results, strict=True):
            man = Path(str(path) + ".manifest.json")
            if not no_manifest and man.is_file():
                record_in_manifest(man, res, wait=wait)
        targets = []  # measured on the cluster
    for _, path in targets:
        res = evaluate(path, engine=eng, corpus=corpus, ctx=ctx, chunks=chunks,
                       base=base_model if want_kld else None,
                       base_logits=base_logits if want_kld else None, kld=want_kld, threads=threads,
                       batch=batch,
                       binary=binary, bin_dir=bin_dir)
        results.append(res)
        man = manifest_path(path)
        if not no_manifest and man.is_file():
            record_in_manifest(man, res, wait=wait)
    data: Any = results[0] if len(results) == 1 else results
    emit(data, as_json=as_json,
         human=lambda d: "\n".join(_fmt_eval(r) for r in (d if isinstance(d, list) else [d])))


def _load(recipe: str) -> Any:
    from quantforge.recipe import load_recipe  # startup

    return load_recipe(recipe)


plot_app = typer.Typer(help="Charts (PNG + SVG): speed vs N_KV, quality vs size.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")


@plot_app.command("sweep")
def plot_sweep_cmd(
    results: list[str] = typer.Argument(..., help="Sweep results (JSON from 'quantforge sweep') or "
                                                  "tool logs."),
    out: str = typer.Option(..., "--out", "-o", help="Output path without extension (writes .png and .svg)."),
    title: str = typer.Option(None, "--title"),
) -> None:
    """PP and TG vs N_KV with error bars for one or more runs/configs.

    Example: quantforge plot sweep before.json after.json -o speed
    """
    from quantforge.evaluate.plots import plot_sweeps  # startup
    from quantforge.evaluate.sweep import load_result  # startup

    paths = plot_sweeps([load_result(r) for r in results], out, title=title)
    print("\n".join(str(p) for p in paths))


@plot_app.command("ladder")
def plot_ladder_cmd(
    results: list[str] = typer.Argument(..., help="Eval results (JSON from 'quantforge eval --json') or "
                                                  "variant manifests."),
    out: str = typer.Option(..., "--out", "-o", help="Output path without extension (writes .png and .svg)."),
    x: str = typer.Option("gib", "--x", help="gib | bpw"),
    n_params: int = typer.Option(None, "--n-params", help="Parameter count (for --x bpw)."),
    title: str = typer.Option(None, "--title"),
) -> None:
    """PPL / KLD vs size across a quant ladder.

    Example: quantforge plot ladder q8.json q6.json q4.json -o ladder --x bpw --n-params 134515008
    """

    from quantforge.evaluate.perplexity import read_results  # startup
    from quantforge.evaluate.plots import plot_ladder  # startup

    if x not in ("gib", "bpw"):
        raise InputError(f"--x must be gib or bpw, not {x!r}", where="--x")
    evals = read_results(results)
    paths = plot_ladder(evals, out, x=x, n_params=n_params, title=title)  # type: ignore[arg-type]
    print("\n".join(str(p) for p in paths))
