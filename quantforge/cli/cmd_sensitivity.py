"""`quantforge sensitivity`: measure (or import) what each tensor group costs in KLD at each type."""

from __future__ import annotations

import sys
from typing import Any

import typer

from quantforge.cli._app import app
from quantforge.cli._options import BinDirOpt, ClusterOpt, ForceOpt, ImatrixOpt, JsonOpt, ThreadsOpt, WaitOpt
from quantforge.errors import UsageError


def _progress_line(p: Any) -> None:
    eta = ""
    if p.eta_s is not None:
        eta = f"  ETA {p.eta_s / 60:.0f} min" if p.eta_s >= 90 else f"  ETA {p.eta_s:.0f} s"
    value = f"  KLD {p.value:.6f}" if p.value is not None else ""
    delta = f" ({p.delta:+.6f})" if p.delta is not None else ""
    width = len(str(p.total))
    sys.stderr.write(f"[{p.done:>{width}}/{p.total}] {p.label:34s}{value}{delta}  {p.seconds:.1f} s{eta}\n")
    sys.stderr.flush()


@app.command("sensitivity")
def sensitivity_cmd(
    recipe: str = typer.Argument(..., help="Recipe TOML (its [sensitivity] table says what to measure)."),
    quant: str = typer.Option(
        None, "--quant", "-q",
        help="Base variant (or a bare ftype such as Q8_0); default: [sensitivity] base."
    ),
    output: str = typer.Option(None, "--output", "-o", help="Table to write (.csv or .json)."),
    corpus: str = typer.Option(None, "--corpus", "-f",
                               help="Evaluation text (default: [sensitivity] corpus)."),
    ctx: int = typer.Option(None, "--ctx", "-c",
                            help="Tokens per chunk (default: [sensitivity] ctx, else 512)."),
    chunks: int = typer.Option(None, "--chunks",
                               help="Chunks scored (default: [sensitivity] chunks, else 8)."),
    engine: str = typer.Option(None, "--engine",
                               help="Evaluator: bundled | ik | mainline (default bundled)."),
    kind: list[str] = typer.Option(None, "--kind", help="Only this tensor kind (repeatable)."),
    type_: list[str] = typer.Option(None, "--type", help="Candidate type for every kind (repeatable)."),
    buckets: int = typer.Option(None, "--buckets", help="Layer buckets per kind (default 3)."),
    check: bool = typer.Option(None, "--check/--no-check",
                               help="Measure the all-groups mixtures (additivity)."),
    jobs: int = typer.Option(None, "--jobs", "-j",
                             help="Variants in flight (quantize the next while measuring)."),
    threads: ThreadsOpt = None,
    bin_dir: BinDirOpt = None,
    base: str = typer.Option(None, "--base", help="F16/BF16 base GGUF (default: the recipe's [model] base)."),
    imatrix: ImatrixOpt = None,
    import_: str = typer.Option(
        None, "--import", help="Import a published table instead (Thireus' kld_results.csv, tensor,kld rows)."
    ),
    curve: str = typer.Option(None, "--curve", help="With --import: Thireus' group0/kld_results.csv curve."),
    baseline: float = typer.Option(None, "--baseline", help="With --import: the suite's baseline KLD."),
    baseline_type: str = typer.Option(None, "--baseline-type", help="With --import and no curve: its type."),
    keep: bool = typer.Option(False, "--keep", help="Keep the quantized variants (in the cache folder)."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="One line per run on stderr."),
    force: ForceOpt = False,
    wait: WaitOpt = False,
    cluster: ClusterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure each tensor group's KLD cost at each candidate type with the real engine (resumable).

    Every run quantizes the base variant with one group (a tensor kind in a layer bucket) at one type,
    verifies it against its plan and measures its KLD against the base's cached logits. Results are
    cached as they are measured: after Ctrl-C, a crash or a kill the same command resumes.

    Examples:

      quantforge sensitivity recipes/smollm2-135m.toml --quant Q8_0 --corpus eval.txt -o smol.sensitivity.csv

      quantforge sensitivity recipes/deepseek-r1-0528.toml --import kld_results.csv --curve
      group0/kld_results.csv -o r1.csv

      quantforge sensitivity recipes/smollm2-135m.toml --quant Q8_0 --cluster ray://10.0.0.1:10001
      (a task per run)
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.cli._progress import progress_enabled  # startup

    if engine is not None and engine not in ("bundled", "ik", "mainline"):
        raise UsageError(f"unknown evaluator {engine!r}", where="--engine", hint="bundled, ik or mainline")
    if import_:
        from quantforge.sensitivity.imports import import_for_recipe  # startup

        table, out = import_for_recipe(recipe, import_, quant=quant, output=output, curve=curve,
                                       baseline=baseline,
                                       baseline_type=baseline_type, force=force)  # fmt: skip
        emit(table, as_json=as_json, human=lambda t: t.summary() + f"\n\nwrote {out}")
        return
    if curve or baseline is not None or baseline_type:
        raise UsageError("--curve, --baseline and --baseline-type go with --import", where="sensitivity")
    from quantforge.cluster.config import resolve_cluster  # startup
    from quantforge.recipe import load_recipe  # startup
    from quantforge.sensitivity.measure import run_sensitivity  # startup

    eng: Any = engine  # checked above
    spec = resolve_cluster(cluster, recipe=load_recipe(recipe))
    res = run_sensitivity(
        recipe, quant=quant, output=output, engine=eng, corpus=corpus, ctx=ctx, chunks=chunks,
        kinds=kind or None, types=type_ or None, buckets=buckets, check=check, jobs=jobs, threads=threads,
        bin_dir=bin_dir, base=base, imatrix=imatrix, force=force, keep=keep, wait=wait,
        progress=_progress_line if progress_enabled(progress) else None, cluster=spec,
    )  # fmt: skip
    emit(res, as_json=as_json, human=lambda r: r.summary())

