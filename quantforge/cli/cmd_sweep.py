"""`quantforge sweep` (+ `--vary`), `sweep compare` and `sweep bisect`: speed measurements users can trust."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

from quantforge.cli._app import app
from quantforge.cli._options import (
    BinDirOpt,
    ClusterOpt,
    ForceOpt,
    JsonOpt,
    ThreadsOpt,
    VariantOpt,
    recipe_variants,
)
from quantforge.errors import InputError, UsageError

sweep_app = typer.Typer(
    help="Speed sweeps (PP/TG vs N_KV) repeated with statistics; 'sweep compare' says if a change is real, "
    "'sweep bisect' finds the commit that made it.",
    no_args_is_help=True, invoke_without_command=True,
)
app.add_typer(sweep_app, name="sweep")


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _fmt_sweep(r: Any) -> str:
    lines = [f"{r.label}  [{r.engine}]  {len(r.runs)} runs, ctx {r.ctx}, ub {r.ubatch}, tg {r.tg}",
             f"| {'N_KV':>6} | {'PP':>5} | {'S_PP t/s':>18} | {'TG':>4} | {'S_TG t/s':>16} |",
             f"|{'-' * 8}|{'-' * 7}|{'-' * 20}|{'-' * 6}|{'-' * 18}|"]
    for s in r.summary:
        lines.append(f"| {s.n_kv:>6} | {s.pp:>5} | {_num(s.s_pp_mean):>9} ± {_num(s.s_pp_std):>6} | "
                     f"{s.tg:>4} |"
                     f" {_num(s.s_tg_mean):>8} ± {_num(s.s_tg_std):>5} |")
    lines += [f"note: {n}" for n in r.notes]
    if r.build:
        lines.append(f"build: {r.build}")
    if r.raw_jsonl:
        lines.append(f"raw runs: {r.raw_jsonl}")
    if r.node:
        lines.append(f"node: {r.node.get('ip')} {str(r.node.get('node_id'))[:8]} (rig:{r.node.get('rig')})")
    return "\n".join(lines)


def _fmt_vary(rep: Any) -> str:
    n = rep.points[0].runs if rep.points else 0
    lines = [f"{rep.knob}: {len(rep.values)} values, {n} runs each, interleaved; PP and TG as the "
             "geometric mean "
             "over each run's N_KV rows (mean ± sd of runs)",
             f"| {rep.knob:>8} | {'PP t/s':>17} | {'TG t/s':>15} | rows |",
             f"|{'-' * 10}|{'-' * 19}|{'-' * 17}|------|"]
    for p in rep.points:
        lines.append(f"| {p.value:>8} | {_num(p.pp_mean):>8} ± {_num(p.pp_std):>6} | {_num(p.tg_mean):>7} ± "
                     f"{_num(p.tg_std):>5} | {p.rows:>4} |")
    for metric, best in (("PP", rep.best_pp), ("TG", rep.best_tg)):
        if best is not None:
            lines.append(f"fastest {metric}: {rep.knob}={best}")
    if rep.plot:
        lines.append("plot: " + ", ".join(rep.plot))
    return "\n".join(lines)


@sweep_app.callback()
def sweep_cmd(
    ctx_: typer.Context,
    recipe: str = typer.Option(None, "--recipe",
                               help="Recipe TOML (with --quant) whose built variant to sweep."),
    quant: VariantOpt = None,
    model: str = typer.Option(None, "--model", "-m", help="Any GGUF to sweep."),
    target: str = typer.Option(None, "--target",
                               help="Hardware target TOML: run the command the planner generates for it."),
    engine: str = typer.Option("bundled", "--engine",
                               help="bundled (CPU, libllama) | ik (llama-sweep-bench) | mainline "
                                    "(llama-bench -d)"),
    cmd: str = typer.Option(None, "--cmd",
                            help="Your own llama-sweep-bench / llama-bench command line (quoted)."),
    repeat: int = typer.Option(3, "--repeat", "-r", help="Runs of the sweep."),
    ctx: int = typer.Option(512, "--ctx", "-c",
                            help="Context (bundled sweep; with --target the planned context)."),
    ubatch: int = typer.Option(128, "--ubatch", "-ub",
                               help="U-batch: PP size and N_KV step (bundled sweep)."),
    tg: int = typer.Option(16, "--tg", help="Generated tokens per row (bundled sweep)."),
    threads: ThreadsOpt = None,
    vary: str = typer.Option(None, "--vary",
                             help="Run the sweep at each value of one knob, interleaved, and plot "
                             "PP/TG against it: ub=512,1024,2048 | t=1,2 | rtr=off,on | any flag of --cmd."),
    plot: str = typer.Option(None, "--plot",
                             help="With --vary: write the plot here (default: next to -o, else "
                             "./sweep-vary-KNOB)."),
    warmup: int = typer.Option(0, "--warmup",
                               help="Discarded runs of each configuration before the measured ones."),
    keep_warmup: bool = typer.Option(False, "--keep-warmup",
                                     help="Keep a first row that is a warm-up outlier."),
    bin_dir: BinDirOpt = None,
    out: str = typer.Option(None, "--out", "-o",
                            help="Write the result JSON here (raw runs go to OUT.jsonl)."),
    force: ForceOpt = False,
    no_manifest: bool = typer.Option(False, "--no-manifest", help="Do not record results in the manifest."),
    rig: str = typer.Option(None, "--rig",
                            help="With --cluster: run on the node that offers the resource rig:RIG "
                            "(default: the --target's name)."),
    cluster: ClusterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a speed sweep N times; mean ± sd per N_KV row; raw runs in JSONL.

    Examples:

      quantforge sweep --model smol-Q8_0.gguf --repeat 3 --ctx 512 --ubatch 128 --tg 16 -o q8.json

      quantforge sweep --cmd "llama-sweep-bench -m m.gguf -c 4096 -ub 512 -t 16" --engine ik -r 5 -o ik.json

      quantforge sweep --model smol-Q8_0.gguf --vary ub=32,64,128 --repeat 2 -o ub.json

      quantforge sweep --cmd "llama-sweep-bench -m m.gguf -c 16384 -ub 4096 -ot exps=CPU" --vary rtr=off,on

      quantforge sweep compare q8-old.json q8-new.json

      quantforge sweep --recipe r.toml -q IQ2_KS --target 256gb-24gb --engine ik --cluster ray://head:10001
    """
    if ctx_.invoked_subcommand is not None:
        return
    from quantforge.cli._output import emit  # startup
    from quantforge.evaluate.sweep import (  # startup
        binary_runner,
        bundled_runner,
        bundled_vary_options,
        parse_vary,
        run_sweeps,
        save_result,
        split_command,
        vary_report,
        with_knob,
    )

    if engine not in ("bundled", "ik", "mainline"):
        raise UsageError(f"unknown engine {engine!r}", where="--engine", hint="bundled, ik or mainline")
    _refuse_overwrite(out, force, also_jsonl=True,
                      inputs=(("the model", model), ("the recipe", recipe), ("the target", target)))
    path: Path | None = None
    if recipe:
        variants, _ = recipe_variants(recipe, quant, False, None)
        path = variants[0][1]
    elif model:
        path = Path(model)
    meta: dict[str, Any] = {"engine": engine}
    argv: list[str] | None = None
    if cmd:
        argv = split_command(cmd)
        label = Path(argv[0]).name
    elif target:
        if path is None:
            raise UsageError("--target needs the model (--recipe/--quant or --model)", where="--target")
        argv = _target_command(recipe, quant, path, target, engine, bin_dir, ctx, tg)
        label = f"{path.stem} @ {Path(target).stem}"
    else:
        if path is None:
            raise UsageError("give --model FILE.gguf, --recipe R --quant Q, or --cmd", where="sweep")
        if engine != "bundled":
            raise UsageError("ik/mainline sweeps run a command", where="--engine",
                             hint="pass --cmd or --target")
        label = path.stem
    if path is not None:
        meta["model"] = str(path)
        _refuse_overwrite(out, True, also_jsonl=True, inputs=(("the model", path),
                                                              ))  # a recipe's built variant
    bundled_opts: dict[str, Any] = {"ctx": ctx, "ubatch": ubatch, "tg": tg, "threads": threads}
    knob, values = parse_vary(vary) if vary else ("", [])

    def measure(model_path: Path | None, raw: Path | None) -> list[Any]:
        """The sweep(s) themselves: here, or on the rig's node with that node's copy of the model."""
        configs = []
        metas = []
        nonlocal argv
        if argv is not None and path is not None and model_path is not None and model_path != path:
            argv = [str(model_path) if a == str(path) else a for a in argv]  # the node's copy of the model
        if vary:
            for v in values:
                if argv is not None:
                    configs.append((f"{knob}={v}", binary_runner(with_knob(argv, knob, v),
                                                                 keep_warmup=keep_warmup)))
                    metas.append({**meta, "command": with_knob(argv, knob, v)})
                else:
                    assert model_path is not None
                    opts = {**bundled_opts, **bundled_vary_options(knob, v)}
                    configs.append((f"{knob}={v}", bundled_runner(model_path, **opts)))
                    metas.append({**meta, "ctx": opts["ctx"], "ubatch": opts["ubatch"], "tg": opts["tg"],
                                  "threads": opts["threads"]})
            return run_sweeps(configs, repeat=repeat, meta=metas, raw_jsonl=raw, warmup=warmup,
                              progress=_progress_line)
        if argv is not None:
            runner = binary_runner(argv, keep_warmup=keep_warmup)
            one = {**meta, "command": argv}
        else:
            assert model_path is not None
            runner = bundled_runner(model_path, **bundled_opts)
            one = {**meta, "ctx": ctx, "ubatch": ubatch, "tg": tg, "threads": threads}
        return run_sweeps([(label, runner)], repeat=repeat, meta=[one], raw_jsonl=raw, warmup=warmup)

    if vary:
        base = Path(plot) if plot else (Path(out).with_suffix("") if out else Path(f"sweep-vary-{knob}"))
        for ext in (".png", ".svg"):
            _refuse_overwrite(str(base.with_suffix(ext)), force)
    raw = Path(out).with_suffix(".jsonl") if out else None
    from quantforge.cluster.config import resolve_cluster  # startup

    spec_cluster = resolve_cluster(cluster, recipe=_load_recipe(recipe) if recipe else None)
    if spec_cluster is not None:
        results = _sweep_on_rig(spec_cluster, rig or (Path(target).stem if target else None), path, measure,
                                raw,
                                label)
    else:
        if rig:
            raise UsageError("--rig names a cluster resource", where="--rig",
                             hint="use it with --cluster ray://HOST:PORT (or QUANTFORGE_CLUSTER)")
        results = measure(path, raw)
    if vary:
        rep = vary_report(knob, values, results)
        from quantforge.evaluate.plots import plot_vary  # startup

        paths = plot_vary(knob, values, results, base, title=f"{label}: speed vs {knob}")
        rep = rep.model_copy(update={"plot": tuple(str(p) for p in paths)})
        if out:
            from quantforge.fsutil import atomic_write_text  # startup

            Path(out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out), rep.model_dump_json(indent=2))
        emit(rep, as_json=as_json, human=_fmt_vary)
        return
    (res,) = results
    if out:
        save_result(res, out)
    if path is not None and not no_manifest:
        from quantforge.evaluate.sweep import record_sweep  # startup
        from quantforge.manifest import manifest_path  # startup

        man = manifest_path(path)
        if man.is_file():
            record_sweep(man, res)
    emit(res, as_json=as_json, human=_fmt_sweep)


def _load_recipe(recipe: str) -> Any:
    from quantforge.recipe import load_recipe  # startup

    return load_recipe(recipe)


def _sweep_on_rig(spec: Any, rig: str | None, path: Path | None, measure: Any, raw: Path | None,
                  label: str) -> list[Any]:
    """Run ``measure`` on the rig's node; the results name the driver's files and carry the node."""
    from quantforge.cli._progress import TaskBars, progress_enabled  # startup
    from quantforge.cluster.evaluate import sweep_on_cluster  # startup
    from quantforge.evaluate.models import SweepResult  # startup
    from quantforge.fsutil import atomic_write_text  # startup

    if not rig:
        raise UsageError("a sweep on a cluster needs the rig it measures", where="--rig",
                         hint="pass --rig NAME (nodes offer it as rig:NAME) or --target NAME")

    def execute(model_on_node: Path | None, cpus: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="quantforge-sweep-") as tmp:
            node_raw = Path(tmp) / "raw.jsonl"
            found = measure(model_on_node, node_raw)
            return {"results": [r.model_dump(mode="json") for r in found],
                    "raw": node_raw.read_text(encoding="utf-8") if node_raw.is_file() else None}

    view = TaskBars(progress_enabled(None))
    try:
        value, node = sweep_on_cluster(cluster=spec, rig=rig, model=path, execute=execute, label=label,
                                       progress=view)
    finally:
        view.close()
    if raw is not None and value.get("raw") is not None:
        raw.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(raw, value["raw"])
    update: dict[str, Any] = {"node": node, "raw_jsonl": str(raw) if raw is not None else None}
    if path is not None:
        update["model"] = str(path)
    return [SweepResult.model_validate(r).model_copy(update=update) for r in value["results"]]


def _refuse_overwrite(out: str | None, force: bool, *, also_jsonl: bool = False,
                      inputs: tuple[tuple[str, str | Path | None], ...] = ()) -> None:
    """Nothing is overwritten without --force, and an input never (even with it): checked before
    any run, so no sweep is wasted."""
    from quantforge.paths import refuse_input_as_output  # startup

    if not out:
        return
    outputs = (Path(out), *([Path(out).with_suffix(".jsonl")] if also_jsonl else []))
    given = [(what, p) for what, p in inputs if p and not str(p).startswith("hf://")]
    for p in outputs:
        refuse_input_as_output(p, given, field="--out", hint="choose another -o")
    if force:
        return
    for p in outputs:
        if p.exists():
            raise InputError("output exists", where=str(p),
                             hint="pass --force to overwrite it, or choose another -o")


def _progress_line(label: str, k: int, total: int) -> None:
    sys.stderr.write(f"sweep {k}/{total}: {label}\n")
    sys.stderr.flush()


def _target_command(recipe: str | None, quant: str | None, model: Path, target: str, engine: str,
                    bin_dir: str | None, ctx: int, tg: int) -> list[str]:
    """The planner's run command for ``target``, turned into a sweep-bench (ik) / llama-bench (mainline)
    run."""
    from quantforge.evaluate.sweep import sweep_command_from_run  # startup
    from quantforge.fit.api import fit_recipe  # startup
    from quantforge.fit.report import Settings  # startup
    from quantforge.toolchain import find_toolchain  # startup

    if not recipe:
        raise UsageError("--target needs the recipe the variant was planned from", where="--target",
                         hint="quantforge sweep --recipe R.toml --quant NAME --target T.toml")
    if engine == "bundled":
        raise UsageError("--target runs the engine's own sweep tool", where="--engine",
                         hint="use --engine ik or mainline")
    report = fit_recipe(Path(recipe), quant=quant, target=target, settings=Settings(n_ctx=ctx))
    tc = find_toolchain(engine, bin_dir=bin_dir)  # type: ignore[arg-type]
    binary = tc.require("sweep_bench" if engine == "ik" else "bench")
    return sweep_command_from_run(report.command, model=model, engine=engine, binary=binary, tg=tg)


# ---------------------------------------------------------------- compare


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f} %"


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _fmt_compare(rep: Any) -> str:
    lines = [f"baseline: {rep.baseline}   candidate: {rep.candidate}"]
    if rep.differences:
        lines.append("settings that differ (a speed change they explain is not the build's):")
        for d in rep.differences:
            lines.append(f"  {'-' + d.knob if d.knob != 'model' else 'model'}: "
                         f"{d.baseline or 'not stated'} -> "
                         f"{d.candidate or 'not stated'}")
    lines += [f"warning: {w}" for w in rep.warnings]
    for side, build, info in (("baseline", rep.baseline_build, rep.baseline_system_info),
                              ("candidate", rep.candidate_build, rep.candidate_system_info)):
        if build or info:
            lines.append(f"{side}: build {build or 'not stated'}" + (f"; system_info: {info}" if info
                                                                     else ""))
    lines.append("")
    paired = {p.metric: p for p in rep.paired}
    for s in rep.summary:
        name = s.metric.upper()
        ci = (f"95 % CI {_pct(s.ci_low_pct)} .. {_pct(s.ci_high_pct)}" if s.ci_low_pct is not None
              else "no interval")
        line = f"{name}: {s.verdict}, {s.change_pct:+.1f} % ({ci}; {s.method}"
        if s.p_value is not None:
            line += f", p = {_p(s.p_value)}"
        p = paired.get(s.metric)
        if s.decided_by == "paired" and p is not None:
            line += (f"; signed-rank p = {_p(p.signed_rank_p)}, sign test p = {_p(p.sign_test_p)}, "
                     f"{p.n_slower} of {p.n_pairs} depths slower, per-depth {p.min_ratio_pct:+.1f} .. "
                     f"{p.max_ratio_pct:+.1f} %")
        lines.append(line + ")")
        if (s.decided_by == "paired" and p is not None and p.rank_floor_p is not None
            and p.rank_floor_p >= rep.alpha):
            lines.append(f"  with {p.n_pairs} depths the signed-rank test cannot go below p = "
                         f"{p.rank_floor_p:.3g}: "
                         "it checks that the depths agree in direction")
        if s.decided_by == "paired" and p is not None and p.why:
            lines.append(f"  {p.why}")
        if s.recommendation:
            lines.append(f"  {s.recommendation}")
    if rep.summary and rep.summary[0].decided_by == "welch":
        for p in rep.paired:
            if p.p_value is not None:
                lines.append(f"  paired check ({p.metric.upper()}, {p.n_pairs} depths): "
                             f"{p.change_pct:+.1f} % "
                             f"(95 % CI {_pct(p.ci_low_pct)} .. {_pct(p.ci_high_pct)}), p = {_p(p.p_value)}, "
                             f"{p.verdict}")
    lines += [f"assumption: {a}" for a in rep.assumptions]
    lines.append(f"rule: p < {rep.alpha:g}, |t| > {rep.sigma_rule:g} and |change| >= "
                 f"{rep.min_effect_pct:g} % "
                 "for a regression or an improvement")
    lines += ["", f"| {'N_KV':>6} | metric | {'baseline t/s':>17} | {'candidate t/s':>17} | {'change':>8} | "
              f"{'95% CI':>19} | {'p':>7} | verdict",
              "|" + "-" * 8 + "|" + "-" * 8 + "|" + "-" * 19 + "|" + "-" * 19 + "|" + "-" * 10 + "|"
              + "-" * 21
              + "|" + "-" * 9 + "|" + "-" * 22]
    undefined = None
    for m in [*rep.rows, *rep.overall]:
        kv = "all" if m.n_kv is None else str(m.n_kv)
        ci = "n/a" if m.ci_low_pct is None else f"{m.ci_low_pct:+.2f}..{m.ci_high_pct:+.2f}%"
        if m.ci_low_pct is None and m.why:
            undefined = m.why
        sd_a = "" if m.baseline_std is None else f" ± {m.baseline_std:>6.2f}"
        sd_b = "" if m.candidate_std is None else f" ± {m.candidate_std:>6.2f}"
        lines.append(f"| {kv:>6} | {m.metric:>6} | {m.baseline_mean:>8.2f}{sd_a:<9} | "
                     f"{m.candidate_mean:>8.2f}{sd_b:<9}"
                     f" | {m.change_pct:>+7.2f}% | {ci:>19} | {_p(m.p_value):>7} | "
                     f"{m.verdict if m.test != 'none' else '- (not testable)'}")
    if undefined:
        lines.append(f"n/a: {undefined} (JSON: null)")
    lines += [f"note: {n}" for n in rep.notes]
    return "\n".join(lines)


@sweep_app.command("compare")
def sweep_compare_cmd(
    baseline: str = typer.Argument(None, help="Stored result (JSON from 'quantforge sweep'), a tool log or "
                                              "a pasted table."),
    candidate: str = typer.Argument(None, help="Stored result, log or pasted table to compare with the "
                                               "baseline."),
    model: str = typer.Option(None, "--model", "-m", help="The GGUF both sides run (A/B runs)."),
    a: str = typer.Option(None, "--a",
                          help="Baseline run: bundled options 'threads=1,ubatch=128' or a quoted "
                               "command line."),
    b: str = typer.Option(None, "--b", help="Candidate run: bundled options or a quoted command line."),
    a_bin_dir: str = typer.Option(None, "--a-bin-dir",
                                  help="Build A: a folder with llama-sweep-bench, llama-bench, "
                                  "llama-batched-bench or libllama.so."),
    b_bin_dir: str = typer.Option(None, "--b-bin-dir", help="Build B: the same kind of folder."),
    args: str = typer.Option(None, "--args",
                             help="Extra arguments for both builds' tool (quoted), e.g. '-t 16 -fa'."),
    tool: str = typer.Option(None, "--tool", help="With --a-bin-dir/--b-bin-dir: sweep-bench | llama-bench | "
                             "batched-bench | bundled (default: the first the folder has)."),
    repeat: int = typer.Option(3, "--repeat", "-r", help="Measured runs of each side."),
    warmup: int = typer.Option(1, "--warmup",
                               help="Discarded runs of each side before the measured ones (A/B runs)."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Context: the sweep's N_KV goes up to it (A/B runs)."),
    ubatch: int = typer.Option(128, "--ubatch", "-ub", help="U-batch: PP size and N_KV step (A/B runs)."),
    tg: int = typer.Option(16, "--tg", help="Generated tokens per row (A/B runs)."),
    select: list[str] = typer.Option(None, "--select",
                                     help="Pick one configuration of a llama-bench paste holding "
                                     "several, for both sides: COLUMN=VALUE (repeatable; e.g. "
                                     "build=1ec12b8e)."),
    a_select: list[str] = typer.Option(None, "--a-select", help="--select for the baseline only."),
    b_select: list[str] = typer.Option(None, "--b-select", help="--select for the candidate only."),
    keep_warmup: bool = typer.Option(False, "--keep-warmup",
                                     help="Keep a first row that is a warm-up outlier."),
    out: str = typer.Option(None, "--out", "-o",
                            help="Write the report JSON here (raw runs of A/B runs: OUT.jsonl)."),
    force: ForceOpt = False,
    alpha: float = typer.Option(0.05, "--alpha",
                                help="Significance level of the tests (false-positive rate per metric)."),
    min_effect: float = typer.Option(2.0, "--min-effect",
                                     help="Smallest change in % ever called a regression/improvement."),
    as_json: JsonOpt = False,
) -> None:
    """Is a speed difference real? Verdict per metric with its interval and test, then per N_KV row.

    Examples:

      quantforge sweep compare before.md after.md              # pasted sweep-bench tables, one run each

      quantforge sweep compare --model m.gguf --a-bin-dir ik-old/build/bin --b-bin-dir ik-new/build/bin --args
      '-t 16'

      quantforge sweep compare --model smol-Q8_0.gguf --a threads=1 --b threads=2 --repeat 3

      quantforge sweep compare paste.md paste.md --a-select build=1ec12b8e --b-select build=22cae8321
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.evaluate.stats import compare  # startup
    from quantforge.evaluate.sweep import load_result, parse_select  # startup

    if not 0.0 < alpha < 1.0:
        raise UsageError(f"--alpha must be between 0 and 1, not {alpha}", where="--alpha",
                         hint="e.g. --alpha 0.05")
    if min_effect < 0:
        raise UsageError(f"--min-effect must not be negative, not {min_effect}", where="--min-effect")
    _refuse_overwrite(out, force, also_jsonl=not (baseline and candidate),
                      inputs=(("the baseline", baseline), ("the candidate", candidate), ("the model", model)))
    warnings: list[str] = []
    if baseline and candidate:
        if a or b or model or a_bin_dir or b_bin_dir:
            raise UsageError("give two stored results or an A/B run (--a/--b or --a-bin-dir/--b-bin-dir), "
                             "not both",
                             where="sweep compare")
        both = parse_select(select or [])
        ra = load_result(baseline, select={**both, **parse_select(a_select or [])} or None,
                         keep_warmup=keep_warmup)
        rb = load_result(candidate, select={**both, **parse_select(b_select or [])} or None,
                         keep_warmup=keep_warmup)
    elif a_bin_dir or b_bin_dir:
        if not (a_bin_dir and b_bin_dir):
            raise UsageError("an A/B run of two builds needs both --a-bin-dir and --b-bin-dir",
                             where="sweep compare")
        if a or b:
            raise UsageError("--a/--b and --a-bin-dir/--b-bin-dir exclude each other", where="sweep compare")
        if not model:
            raise UsageError("an A/B run of two builds needs --model FILE.gguf", where="--model")
        ra, rb, warnings = _ab_builds(model, a_bin_dir, b_bin_dir, args, tool, repeat=repeat, warmup=warmup,
                                      ctx=ctx,
                                      ubatch=ubatch, tg=tg, out=out, keep_warmup=keep_warmup)
    elif a and b:
        ra, rb, warnings = _ab_specs(model, a, b, repeat=repeat, warmup=warmup, ctx=ctx, ubatch=ubatch, tg=tg,
                                     out=out,
                                     keep_warmup=keep_warmup)
    else:
        raise UsageError("give BASELINE CANDIDATE results, or an A/B run: --model M --a-bin-dir A "
                         "--b-bin-dir B, "
                         "or --a and --b", where="sweep compare")
    rep = compare(ra, rb, alpha=alpha, min_effect_pct=min_effect, warnings=warnings)
    if out:
        from quantforge.fsutil import atomic_write_text  # startup

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), rep.model_dump_json(indent=2))
    emit(rep, as_json=as_json, human=_fmt_compare)


def _ab_builds(model: str, a_dir: str, b_dir: str, args: str | None, tool: str | None, *, repeat: int,
               warmup: int,
               ctx: int, ubatch: int, tg: int, out: str | None, keep_warmup: bool) -> tuple[Any, Any,
                                                                                            list[str]]:
    from quantforge.evaluate._util import check_model_file  # startup
    from quantforge.evaluate.ab import bench_command, find_tool, setup_warnings, tool_version  # startup
    from quantforge.evaluate.sweep import binary_runner, run_sweeps, split_command  # startup

    if tool not in (None, "sweep-bench", "llama-bench", "batched-bench", "bundled"):
        raise UsageError(f"unknown tool {tool!r}", where="--tool",
                         hint="sweep-bench, llama-bench, batched-bench or bundled")
    check_model_file(model)
    extra = split_command(args) if args else []
    sides = []
    for d in (a_dir, b_dir):
        kind, path = find_tool(d, prefer=tool)  # type: ignore[arg-type]
        argv = bench_command(kind, path, model=model, ctx=ctx, ubatch=ubatch, tg=tg, args=extra)
        sides.append((d, kind, path, argv, tool_version(argv)))
    runners = [(f"A {d}" if i == 0 else f"B {d}", binary_runner(argv, keep_warmup=keep_warmup))
               for i, (d, _, _, argv, _) in enumerate(sides)]
    metas = [{"engine": "ik" if kind == "sweep-bench" else "bundled" if kind == "bundled" else "mainline",
              "command": argv, "binary": str(path), "model": model, "build": version}
             for _, kind, path, argv, version in sides]
    ra, rb = run_sweeps(runners, repeat=repeat, interleave=True, meta=metas, warmup=warmup,
                        raw_jsonl=Path(out).with_suffix(".jsonl") if out else None, progress=_progress_line)
    return ra, rb, setup_warnings(ra, rb, a_kind=sides[0][1], b_kind=sides[1][1])


def _ab_specs(model: str | None, a: str, b: str, *, repeat: int, warmup: int, ctx: int, ubatch: int, tg: int,
              out: str | None, keep_warmup: bool) -> tuple[Any, Any, list[str]]:
    from quantforge.evaluate.ab import setup_warnings, tool_version  # startup
    from quantforge.evaluate.sweep import (  # startup
        binary_runner,
        bundled_runner,
        parse_option_set,
        run_sweeps,
        split_command,
    )

    runners = []
    metas: list[dict[str, Any]] = []
    for spec in (a, b):
        if "=" in spec.split()[0] and not Path(spec.split()[0]).exists():
            opts = parse_option_set(spec)
            mpath = opts.pop("model", model)
            if not mpath:
                raise UsageError("bundled option sets need --model FILE.gguf", where="--model")
            o = {"ctx": ctx, "ubatch": ubatch, "tg": tg, **opts}
            runners.append((spec, bundled_runner(mpath, **o)))
            metas.append({"engine": "bundled", "model": str(mpath), "ctx": o["ctx"], "ubatch": o["ubatch"],
                          "tg": o["tg"], "threads": o.get("threads"),
                          "settings": {k: str(v) for k, v in (("t", o.get("threads")), ("ub", o["ubatch"]),
                                                              ("c", o["ctx"])) if v is not None}})
        else:
            argv = split_command(spec)
            runners.append((spec, binary_runner(argv, keep_warmup=keep_warmup)))
            metas.append({"engine": "ik" if "sweep-bench" in argv[0] else "mainline", "command": argv,
                          "build": tool_version(argv)})
    ra, rb = run_sweeps(runners, repeat=repeat, interleave=True, meta=metas, warmup=warmup,
                        raw_jsonl=Path(out).with_suffix(".jsonl") if out else None)
    return ra, rb, setup_warnings(ra, rb)


# ---------------------------------------------------------------- bisect


def _fmt_bisect(rep: Any) -> str:
    lines = []
    if rep.first_bad:
        lines.append(f"first bad commit: {rep.first_bad} {rep.first_bad_subject or ''}".rstrip())
    elif rep.candidates:
        lines.append("first bad commit: one of " + ", ".join(c[:12] for c in rep.candidates)
                     + " (commits that did not build were skipped)")
    g, b = rep.references
    lines.append(f"GOOD {g.commit[:12]} {g.subject}")
    lines.append(f"BAD  {b.commit[:12]} {b.subject}: {rep.metric.upper()} {_pct(b.change_pct)} "
                 f"(95 % CI {_pct(b.ci_low_pct)} .. {_pct(b.ci_high_pct)})")
    lines.append(f"a commit is bad when its {rep.metric.upper()} change vs GOOD is below "
                 f"-{rep.threshold_pct:.1f} % "
                 f"({rep.threshold_source})")
    lines += ["", f"| {'commit':<12} | verdict | {'change':>9} | {'95% CI':>19} | runs | subject",
              f"|{'-' * 14}|---------|{'-' * 11}|{'-' * 21}|------|{'-' * 30}"]
    for s in rep.steps:
        ci = "n/a" if s.ci_low_pct is None else f"{s.ci_low_pct:+.1f}..{s.ci_high_pct:+.1f} %"
        mark = " <- first bad" if s.commit == rep.first_bad else ""
        lines.append(f"| {s.commit[:12]:<12} | {s.verdict:<7} | {_pct(s.change_pct):>9} | {ci:>19} | "
                     f"{s.runs:>4} | "
                     f"{s.subject}{mark}")
    lines.append("")
    lines += [f"{s.commit[:12]}: {s.reason}" for s in rep.steps]
    if rep.plot:
        lines.append("plot: " + ", ".join(rep.plot))
    lines.append(f"every step's logs and results: {rep.out_dir}")
    return "\n".join(lines)


@sweep_app.command("bisect")
def sweep_bisect_cmd(
    repo: str = typer.Option(..., "--repo",
                             help="The engine's git checkout (clean: bisect checks out commits)."),
    good: str = typer.Option(..., "--good", help="A revision with the old speed."),
    bad: str = typer.Option(..., "--bad", help="A later revision with the drop."),
    build: str = typer.Option(..., "--build", help="Build command, run in the repository (no shell: use "
                              "\"sh -c '…'\" for &&); a failure skips the commit."),
    command: str = typer.Option(..., "--command", help="Bench command printing a sweep-bench / llama-bench / "
                                "batched-bench table, run in the repository."),
    metric: str = typer.Option("pp", "--metric", help="pp | tg: the speed that dropped."),
    threshold: float = typer.Option(None, "--threshold",
                                    help="A commit is bad when it is at least this many % "
                                    "slower than GOOD (default: half the measured GOOD->BAD drop)."),
    repeat: int = typer.Option(3, "--repeat", "-r", help="Runs of the bench command per commit."),
    max_repeat: int = typer.Option(9, "--max-repeat", help="Runs at most, when a commit is inconclusive."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds one build or bench run may take."),
    out_dir: str = typer.Option(None, "--out-dir", "-o", help="Folder for logs, results, report and plot "
                                "(default ./bisect-GOOD-BAD)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the GOOD vs BAD check."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier bisect in --out-dir."),
    as_json: JsonOpt = False,
) -> None:
    """Find the commit that made a sweep slower: git bisect run with the statistical verdict as the oracle.

    Examples:

      quantforge sweep bisect --repo ~/ik_llama.cpp --good 09764678 --bad 14292913 \\
        --build 'cmake --build build -j 16 --target llama-sweep-bench' \\
        --command './build/bin/llama-sweep-bench -m /models/m.gguf -c 8192 -ub 2048 -t 16' --metric pp
    """
    from quantforge.cli._output import emit  # startup
    from quantforge.evaluate.bisect import bisect  # startup

    if metric not in ("pp", "tg"):
        raise UsageError(f"--metric must be pp or tg, not {metric!r}", where="--metric")

    def say(msg: str) -> None:
        sys.stderr.write(f"bisect: {msg}\n")
        sys.stderr.flush()

    rep = bisect(repo, good=good, bad=bad, build=build, command=command,
                 metric=metric,  # type: ignore[arg-type]
                 threshold_pct=threshold, repeat=repeat, max_repeat=max_repeat, out_dir=out_dir,
                 timeout=timeout,
                 alpha=alpha, progress=say, force=force)
    emit(rep, as_json=as_json, human=_fmt_bisect)
