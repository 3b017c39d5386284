"""`quantforge demo`: the whole pipeline, offline, on the real SmolLM2-135M model."""

from __future__ import annotations

import sys

import typer

from quantforge.cli._app import app
from quantforge.cli._options import JsonOpt, ThreadsOpt
from quantforge.units import human_bytes


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("quantforge-demo", "--out", "-o", help="Folder for everything the demo makes."),
    chunks: int = typer.Option(6, "--chunks",
                               help="PPL/KLD chunks of 512 tokens (more is slower and tighter)."),
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Show progress bars for long steps (default: on a terminal)."
    ),
) -> None:
    """Run every stage on SmolLM2-135M offline: inventory, lint, fit matrix, imatrix, a 3-variant
    ladder built with the bundled ik_llama.cpp, PPL/KLD, a repeated sweep with plots, the model
    card and a publish dry run. A second run resumes from what is already verified.

    Example: quantforge demo --out quantforge-demo
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.demo import DemoResult, DemoStep, run_demo  # startup

    def report(step: DemoStep) -> None:
        tag = "resumed" if step.skipped else f"{step.seconds:6.1f} s"
        print(f"[demo] {step.name:<9} {tag:>8}  {step.detail}", file=sys.stderr, flush=True)

    def human(r: DemoResult) -> str:
        lines = [
            "",
            f"quantforge demo: SmolLM2-135M-Instruct, {len(r.variants)} variants in {r.seconds:.0f} s  "
            f"({r.folder})",
            f"  base F16 PPL {r.base_ppl:.4f}" if r.base_ppl is not None else "  base F16 PPL: not measured",
            "",
            f"  {'variant':<8} {'size':>10} {'planned = actual':>17} {'BPW':>6} {'PPL':>16} {'KLD mean':>9} "
            f"{'KLD p99':>8}  fits",
        ]
        for v in r.variants:
            exact = "yes" if v.planned_file_bytes == v.file_bytes else f"NO ({v.planned_file_bytes})"
            ppl = f"{v.ppl:.4f} ± {v.ppl_err:.4f}" if v.ppl is not None and v.ppl_err is not None else "-"
            kld = f"{v.kld_mean:.5f}" if v.kld_mean is not None else "-"
            p99 = f"{v.kld_p99:.4f}" if v.kld_p99 is not None else "-"
            lines.append(
                f"  {v.name:<8} {human_bytes(v.file_bytes):>10} {exact:>17} {v.bpw:>6.3f} {ppl:>16} "
                f"{kld:>9} {p99:>8}  "
                f"{len(v.fits)} targets"
            )
        lines += [
            "",
            "  files:",
            *[f"    {v.path}" for v in r.variants],
            f"    {r.sweep_jsonl}",
            *[f"    {p}" for p in r.plots],
            f"    {r.card}",
            f"    {r.staging}/  (publish --dry-run)",
        ]
        return "\n".join(lines)

    from quantforge.cli._progress import Bars, progress_enabled  # startup

    bars = Bars(progress_enabled(progress))
    try:
        result = run_demo(out, chunks=chunks, threads=threads, report=report, build_progress=bars)
    finally:
        bars.close()
    emit(result, as_json=as_json, human=human)
