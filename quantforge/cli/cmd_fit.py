"""`quantforge plan` (fit a recipe variant to a hardware target), `quantforge fit`, `quantforge target …`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from quantforge.cli._app import app
from quantforge.cli._options import BinDirOpt, ForceOpt, JsonOpt, OutDirOpt, VariantOpt
from quantforge.errors import UsageError
from quantforge.units import human_bytes as _gib

if TYPE_CHECKING:  # the solver is imported when fit runs, not at CLI start-up
    from quantforge.fit.solver import VerifyOptions

target_app = typer.Typer(
    help="Hardware targets: detect this machine, list and show the shipped ones.", no_args_is_help=True
)
app.add_typer(target_app, name="target")


def _settings(ctx: int, ctk: str, ctv: str, mla: int, fa: bool, ub: int, amb: int) -> Any:
    from quantforge.fit.report import Settings  # startup

    return Settings(n_ctx=ctx, ctk=ctk, ctv=ctv, mla=mla, flash_attn=fa, ub=ub, amb=amb)


def _render_report(r: Any) -> str:
    from quantforge.recipe import format_layers  # startup

    lines = [
        f"{r.quant} on {r.target} at -c {r.settings.n_ctx}: {r.verdict.replace('_', ' ').upper()}"
        + (f" (largest context that fits: {r.max_ctx})" if r.max_ctx else ""),
        f"weights {_gib(r.weights_bytes)}, KV cache {_gib(r.kv_bytes)} (K {_gib(r.kv_k_bytes)}, V "
        f"{_gib(r.kv_v_bytes)}, "
        f"{r.kv_size} cells)",
        "",
        f"{'device':8s} {'weights':>11s} {'KV':>11s} {'compute':>11s} {'overhead':>11s} {'total':>11s} "
        f"{'capacity':>11s} {'headroom':>11s}",
    ]
    for d in r.devices:
        lines.append(
            f"{d.name:8s} {_gib(d.weights_bytes):>11s} {_gib(d.kv_bytes):>11s} {_gib(d.compute_bytes):>11s} "
            f"{_gib(d.overhead_bytes):>11s} {_gib(d.total_bytes):>11s} {_gib(d.capacity_bytes):>11s} "
            f"{_gib(d.headroom_bytes):>11s}"
            + (f"  experts of layers {format_layers(d.expert_layers)}" if d.expert_layers else "")
            + ("  (pinned, mmap off)" if d.pinned else "")
        )
    margins = [d for d in r.devices if d.kind == "gpu" and d.margin_source]
    if margins:
        lines += ["", "margin kept beyond the buffers (in overhead, with the target's gpu_margin):"]
        lines += [f"  {d.name}: {_gib(d.margin_bytes)}: {d.margin_source}" for d in margins]
    if r.cheapest_change:
        lines += ["", f"cheapest change: {r.cheapest_change}"]
    lines += ["", f"token generation upper bound: {r.tg_tokens_per_s:.1f} t/s"]
    for f in r.findings:
        cost = f" (~{f.cost_ms_per_token} ms/token)" if f.cost_ms_per_token else ""
        lines.append(f"- [{f.code}] {f.message}{cost}")
    lines += ["", "command:", "  " + r.command_line]
    return "\n".join(lines)


def _render_matrix(m: Any) -> str:
    lines = [f"{m.model} at -c {m.n_ctx}", ""]
    width = max(12, *(len(t) for t in m.targets))
    lines.append(f"{'quant':18s} {'size':>10s}  " + "  ".join(f"{t:>{width}s}" for t in m.targets))
    cells = {(c.quant, c.target): c for c in m.cells}
    for q in m.quants:
        first = next(c for c in m.cells if c.quant == q)
        row = []
        for t in m.targets:
            c = cells[(q, t)]
            mark = {"fits": "yes", "fits_smaller_ctx": f"ctx {c.max_ctx // 1024}k", "does_not_fit": "no"}[
                c.verdict
            ]
            row.append(
                f"{mark + (f' {c.tg_tokens_per_s:.0f}t/s' if c.verdict != 'does_not_fit' else ''):>{width}s}"
            )
        lines.append(f"{q:18s} {_gib(first.file_bytes):>10s}  " + "  ".join(row))
    return "\n".join(lines)


def _render_command_plan(p: Any) -> str:
    head = (f"{p.engine} command at -c {p.n_ctx} ({p.kv_size} KV cells), -ub {p.n_ubatch}, FA "
            f"{'on' if p.flash_attn else 'off'}")
    if p.gpu_layers:
        head += ", layers per GPU " + "/".join(str(n) for n in p.gpu_layers)
    lines = [head, "", f"{'buffer':12s} {'kind':8s} {'size':>11s}"]
    for b in p.buffers:
        lines.append(f"{b.device:12s} {b.kind:8s} {_gib(b.bytes):>11s}")
    if p.verdict:
        lines += ["", f"on {p.target}: {p.verdict.replace('_', ' ').upper()}"]
        for d in p.devices:
            lines.append(f"  {d.name:8s} total {_gib(d.total_bytes):>11s} of {_gib(d.capacity_bytes):>11s}, "
                         f"headroom {_gib(d.headroom_bytes):>11s}")  # fmt: skip
            if d.kind == "gpu":
                lines.append(f"           margin kept {_gib(d.margin_bytes)}: {d.margin_source}")
    return "\n".join(lines)


@app.command("plan")
def plan_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML (or, with --command, a GGUF file or any shard "
                                            "of a set)."),
    quant: VariantOpt = None,
    target: str = typer.Option(None, "--target", "-t", help="Hardware target TOML (or a shipped name)."),
    ctx: int = typer.Option(32768, "--ctx", "-c", help="Context length in tokens."),
    ctk: str = typer.Option("f16", "--ctk", help="K cache type."),
    ctv: str = typer.Option("f16", "--ctv", help="V cache type."),
    mla: int = typer.Option(3, "--mla", help="ik MLA mode for DeepSeek-style models (1, 2, 3)."),
    fa: bool = typer.Option(True, "--fa/--no-fa", help="Flash attention."),
    ub: int = typer.Option(512, "--ub", help="u-batch size."),
    amb: int = typer.Option(512, "--amb", help="ik -amb (MiB) for MLA attention."),
    matrix: bool = typer.Option(
        False, "--matrix", help="Every variant x every target (the breakpoint matrix)."
    ),
    targets: Path = typer.Option(
        None, "--targets", help="Folder of targets for --matrix (default: shipped)."
    ),
    placement: bool = typer.Option(
        False, "--placement", help="Include the tensor -> device map in the JSON."
    ),
    command: str = typer.Option(
        None, "--command",
        help="Size the buffers of this llama-server/llama-cli/llama-sweep-bench command line "
        "(its -ngl, -ot, -ts, -c, -b, -ub, -fa, -mla, -amb, -ctk/-ctv, -ncmoe) instead of planning one.",
    ),
    engine: str = typer.Option(None, "--engine",
                               help="With --command on a GGUF: ik or mainline (default ik)."),
    engine_version: str = typer.Option(
        None, "--engine-version",
        help="With --command: the ik build (commit count) the command runs on, e.g. 4300 "
        "(ik before 4327 split layers over GPUs by count, since then by bytes).",
    ),
    as_json: JsonOpt = False,
) -> None:
    """Does a recipe variant fit a machine? Memory per device, verdict, largest context, command.

    Examples:

      quantforge plan recipes/deepseek-r1-0528.toml --quant IQ2_K_R4 --target hw_targets/256gb-24gb.toml --ctx
      32768

      quantforge plan recipes/deepseek-r1-0528.toml --matrix --json

      quantforge plan model.gguf --command 'llama-server -m model.gguf -c 32768 -ngl 99 -ot exps=CPU' --target
      256gb-24gb
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.fit.api import fit_recipe, plan_source_command, recipe_matrix  # startup

    if command is not None:
        if matrix:
            raise UsageError("--command and --matrix: choose one", hint="--command sizes one command line")
        if engine not in (None, "ik", "mainline"):
            raise UsageError(f"--engine {engine!r}: expected ik or mainline", hint="--engine mainline")
        build = None
        if engine_version is not None:
            from quantforge.plan._versions import parse_engine_version  # startup

            try:
                build = parse_engine_version(engine_version, where="--engine-version")
            except Exception as e:  # a RecipeError names the recipe key; this is a flag
                raise UsageError(f"--engine-version {engine_version!r}: not a build number",
                                 hint="e.g. --engine-version 4300") from e  # fmt: skip
        cp = plan_source_command(recipe, command, quant=quant, target=target,
                                 engine=engine,  # type: ignore[arg-type]
                                 engine_build=build)  # fmt: skip
        emit(cp, as_json=as_json, human=_render_command_plan)
        return

    s = _settings(ctx, ctk, ctv, mla, fa, ub, amb)
    if matrix:
        m = recipe_matrix(recipe, targets_dir=targets, settings=s, quant=quant)
        emit(m, as_json=as_json, human=_render_matrix)
        return
    if not target:
        raise UsageError(
            "--target is required (or use --matrix)", hint="e.g. --target hw_targets/256gb-24gb.toml"
        )
    r = fit_recipe(recipe, quant=quant, target=target, settings=s, placement=placement)
    emit(r, as_json=as_json, human=_render_report)


@app.command("fit")
def fit_cmd(
    recipe: Path = typer.Argument(..., help="Recipe TOML."),
    target: str = typer.Option(None, "--target", "-t", help="Hardware target TOML (or a shipped name)."),
    budget: str = typer.Option(
        None, "--budget",
        help='Tensor-data budget instead of a target: a size ("90 MB"), an ftype or a variant.'
    ),
    ladder: list[str] = typer.Option(
        None, "--ladder", help="One variant per target (repeatable; with --budget-ladder: per budget)."
    ),
    budget_ladder: bool = typer.Option(False, "--budget-ladder",
                                       help="--ladder values are budgets, not targets."),
    ctx: int = typer.Option(32768, "--ctx", "-c", help="Context length in tokens."),
    quant: VariantOpt = None,
    name: str = typer.Option(None, "--name", help="Name of the new variant (default: FIT-<target>)."),
    sensitivity: Path = typer.Option(
        None, "--sensitivity",
        help="Sensitivity table (quantforge sensitivity, Thireus' kld_results.csv, tensor,kld)."
    ),
    curve: Path = typer.Option(None, "--curve",
                               help="Thireus' group0/kld_results.csv for an imported table."),
    min_tg: float = typer.Option(None, "--min-tg",
                                 help="Minimum token generation speed (t/s, the speed model)."),
    down_step: bool = typer.Option(
        None, "--down-step/--no-down-step",
        help="ffn_down at least one bpw step above ffn_gate/up (default: on without a sensitivity table).",
    ),
    repack: str = typer.Option("auto", "--repack",
                               help="RAM-resident _r4/_r8 twins (ik): auto | always | never."),
    ctk: str = typer.Option("f16", "--ctk", help="K cache type."),
    ctv: str = typer.Option("f16", "--ctv", help="V cache type."),
    ub: int = typer.Option(512, "--ub", help="u-batch size."),
    write: bool = typer.Option(False, "--write", help="Append the variant(s) to the recipe file."),
    verify: bool = typer.Option(False, "--verify",
                                help="Build the variant, measure its KLD, report predicted vs measured."),
    corpus: str = typer.Option(None, "--corpus", "-f",
                               help="--verify: evaluation text (default: the table's)."),
    chunks: int = typer.Option(None, "--chunks", help="--verify: chunks (default: the table's)."),
    out_dir: OutDirOpt = None,
    bin_dir: BinDirOpt = None,
    plot: str = typer.Option(None, "--plot", help="--ladder: write the Pareto front here (PNG + SVG)."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Seconds the exact solver may take."),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Choose per-tensor types that fill a target's memory (weights + KV + compute + margin).

    With a sensitivity table every measured group (attention, shared experts, dense layers, embeddings,
    output, routed experts) gets the type, and every routed-expert unit the device, that minimize the
    predicted KLD; solved exactly (MILP), confirmed by the planner.

    Examples:

      quantforge fit recipes/deepseek-r1-0528.toml --target 256gb-24gb --ctx 32768 --write

      quantforge fit recipes/smollm2-135m.toml --budget Q3_K_M --sensitivity smol.sensitivity.csv --verify

      quantforge fit r1.toml --ladder 128gb-24gb --ladder 256gb-24gb --sensitivity r1.csv --plot front
    """
    from quantforge.cli._output import emit  # startup

    if repack not in ("auto", "always", "never"):
        raise UsageError(f"--repack {repack!r}", where="--repack", hint="auto, always or never")
    rp: Any = repack
    s = _settings(ctx, ctk, ctv, 3, True, ub, 512)
    vopts: VerifyOptions = {"corpus": corpus, "chunks": chunks, "out_dir": out_dir, "bin_dir": bin_dir}
    if ladder:
        if target or budget:
            raise UsageError("--ladder replaces --target/--budget", where="--ladder")
        from quantforge.fit.ladder import solve_ladder  # startup

        lad = solve_ladder(
            recipe, ladder, settings=s, quant=quant, sensitivity=sensitivity, curve=curve, min_tg=min_tg,
            down_step=down_step, repack=rp, write=write, force=force, plot=plot, budget_mode=budget_ladder,
            time_limit=time_limit, verify=verify, verify_options=vopts,
        )  # fmt: skip
        emit(lad, as_json=as_json, human=lambda r: r.summary())
        return
    if bool(target) == bool(budget):
        raise UsageError("give --target or --budget (one of them), or --ladder", where="fit",
                         hint="e.g. --target 256gb-24gb, or --budget Q4_K_M")  # fmt: skip
    from quantforge.fit.solver import solve_recipe  # startup

    res = solve_recipe(
        recipe, target=target, budget=budget, settings=s, quant=quant, name=name, sensitivity=sensitivity,
        curve=curve, min_tg=min_tg, down_step=down_step, repack=rp, write=write, force=force, verify=verify,
        verify_options=vopts, time_limit=time_limit,
    )  # fmt: skip
    emit(res, as_json=as_json, human=lambda r: r.summary())


@target_app.command("detect")
def target_detect(
    output: Path = typer.Option(None, "--output", "-o", help="Write the TOML here (default: print it)."),
    name: str = typer.Option(None, "--name", help="Target name (default: this-machine)."),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a target for this machine (RAM, cores, ISA; GPUs via nvidia-smi when present).

    Example: quantforge target detect -o hw_targets/mine.toml
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.targets import detect_target, target_toml, write_target  # startup

    t = detect_target(name=name)
    if output:
        write_target(t, output, force=force)
    if as_json:
        emit(t, as_json=True)
    elif not output:
        sys.stdout.write(target_toml(t))
    else:
        sys.stdout.write(f"wrote {output}: {t.summary()}\n")


@target_app.command("list")
def target_list(
    directory: Path = typer.Option(None, "--dir", help="Folder of target TOMLs (default: shipped)."),
    as_json: JsonOpt = False,
) -> None:
    """List hardware targets."""
    from quantforge.cli._output import emit  # startup
    from quantforge.targets import list_targets  # startup

    ts = list_targets(directory)
    emit(ts, as_json=as_json, human=lambda xs: "\n".join(f"{t.name:20s} {t.summary()}" for t in xs))


@target_app.command("show")
def target_show(
    target: str = typer.Argument(..., help="Target TOML or shipped name."),
    as_json: JsonOpt = False,
) -> None:
    """Show one target (validated)."""
    from quantforge.cli._output import emit  # startup
    from quantforge.targets import load_target, target_toml  # startup

    t = load_target(target)
    emit(t, as_json=as_json, human=target_toml)
