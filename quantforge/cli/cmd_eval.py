"""`quantforge eval`, `sweep` (+ `sweep compare`) and `plot`: the evaluate stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from quantforge.cli import app
from quantforge.cli._options import BinDirOpt, JsonOpt, OutDirOpt, ThreadsOpt, VariantOpt, WaitOpt


def _fmt_eval(r: Any) -> str:
    from quantforge.evaluate.models import EvalResult

    assert isinstance(r, EvalResult)
    lines = [
        f"{Path(r.model).name}  [{r.engine}{' ' + r.engine_commit if r.engine_commit else ''}]",
        f"  PPL  {r.ppl:.4f} ± {r.ppl_err:.4f}   ({r.chunks} chunks × {r.ctx} ctx, {r.n_tokens_scored} tokens scored,"
        f" corpus {r.corpus_sha256[:12]}, {r.wall_s:.1f} s)",
    ]
    if r.kld is not None:
        k = r.kld
        lines += [
            f"  KLD  mean {k.mean:.6f} ± {k.mean_err:.6f}   median {k.median:.6f}   99% {k.percentiles.get('99.0', float('nan')):.6f}"
            f"   max {k.maximum:.6f}",
            f"  same top token {k.same_top_pct:.3f} ± {k.same_top_pct_err:.3f} %   RMS Δp {k.rms_dp_pct:.3f} ± {k.rms_dp_pct_err:.3f} %"
            f"   PPL(Q)/PPL(base) {k.ppl_ratio:.6f} ± {k.ppl_ratio_err:.6f}",
            f"  base {Path(r.base).name if r.base else '?'}  PPL {k.ppl_base:.4f} ± {k.ppl_base_err:.4f}",
        ]
    return "\n".join(lines)


def _recipe_variants(recipe_path: str, quant: str | None, all_: bool, out_dir: str | None) -> tuple[list[tuple[str, Path]], Path | None]:
    """(variant name, built GGUF) pairs of a recipe, and its base model path when local."""
    from quantforge.errors import InputError, UsageError
    from quantforge.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    rdir = Path(recipe.path).parent if recipe.path else Path.cwd()
    folder = Path(out_dir) if out_dir else rdir
    if quant and all_:
        raise UsageError("--quant and --all exclude each other", where="eval")
    names = [v.name for v in recipe.quants] if all_ else [recipe.variant(quant).name]
    out: list[tuple[str, Path]] = []
    for name in names:
        found = sorted(folder.glob(f"*-{name}.gguf")) or sorted(folder.glob(f"*-{name}-00001-of-*.gguf"))
        if not found:
            raise InputError(f"variant {name} has not been built (no *-{name}.gguf in {folder})", where=recipe_path,
                             hint=f"quantforge build {recipe_path} --quant {name}")
        out.append((name, found[0]))
    base = None
    src = getattr(recipe.model, "base", None)
    if src and not str(src).startswith("hf://"):
        p = Path(src).expanduser()
        base = p if p.is_absolute() else rdir / p
    return out, base


def _recipe_eval(recipe_path: str) -> dict[str, Any]:
    """The recipe's ``[eval]`` defaults (corpus relative to the recipe's folder)."""
    from quantforge.recipe import load_recipe

    r = load_recipe(recipe_path)
    ev = getattr(r, "eval", None)
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
    base_logits: str = typer.Option(None, "--base-logits", help="An existing --kl-divergence-base file (its key is checked)."),
    ppl: bool = typer.Option(False, "--ppl", help="Measure perplexity only."),
    kld: bool = typer.Option(False, "--kld", help="Measure KLD against --base (implies PPL)."),
    corpus: str | None = typer.Option(None, "--corpus", "-f", help="Evaluation text (UTF-8)."),
    ctx: int | None = typer.Option(None, "--ctx", "-c", help="Context of each chunk (tokens; default: the recipe's [eval] ctx, else 512)."),
    chunks: int | None = typer.Option(None, "--chunks", help="Number of chunks (default: the recipe's [eval] chunks, else all)."),
    engine: str = typer.Option("bundled", "--engine", help="bundled | ik | mainline"),
    threads: ThreadsOpt = None,
    batch: int = typer.Option(None, "--batch", "-b", help="Logical batch size."),
    binary: str = typer.Option(None, "--binary", help="Path of llama-perplexity (else the toolchain's)."),
    bin_dir: BinDirOpt = None,
    out_dir: OutDirOpt = None,
    no_manifest: bool = typer.Option(False, "--no-manifest", help="Do not record results in the variants' manifests."),
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """PPL and KLD of built variants (or any GGUF), the way llama-perplexity computes them.

    Examples:

      quantforge eval recipes/smollm2.toml --quant Q4_K_M --kld --corpus eval.txt --chunks 8

      quantforge eval --model smol-Q8_0.gguf --base smol-f16.gguf --corpus eval.txt --engine mainline --json
    """
    from quantforge.cli._output import emit
    from quantforge.errors import UsageError
    from quantforge.evaluate.perplexity import evaluate, record_in_manifest

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
        targets, recipe_base = _recipe_variants(recipe, quant, all_, out_dir)
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
    for _, path in targets:
        res = evaluate(path, engine=eng, corpus=corpus, ctx=ctx, chunks=chunks, base=base_model if want_kld else None,
                       base_logits=base_logits if want_kld else None, kld=want_kld, threads=threads, batch=batch,
                       binary=binary, bin_dir=bin_dir)
        results.append(res)
        man = Path(str(path) + ".manifest.json")
        if not no_manifest and man.is_file():
            record_in_manifest(man, res, wait=wait)
    data: Any = results[0] if len(results) == 1 else results
    emit(data, as_json=as_json, human=lambda d: "\n".join(_fmt_eval(r) for r in (d if isinstance(d, list) else [d])))


sweep_app = typer.Typer(
    help="Speed sweeps (PP/TG vs N_KV) repeated with statistics; 'sweep compare' says if a change is real.",
    no_args_is_help=True, invoke_without_command=True,
)
app.add_typer(sweep_app, name="sweep")


def _fmt_sweep(r: Any) -> str:
    lines = [f"{r.label}  [{r.engine}]  {len(r.runs)} runs, ctx {r.ctx}, ub {r.ubatch}, tg {r.tg}",
             f"| {'N_KV':>6} | {'PP':>5} | {'S_PP t/s':>18} | {'TG':>4} | {'S_TG t/s':>16} |",
             f"|{'-' * 8}|{'-' * 7}|{'-' * 20}|{'-' * 6}|{'-' * 18}|"]
    for s in r.summary:
        lines.append(f"| {s.n_kv:>6} | {s.pp:>5} | {s.s_pp_mean:>9.2f} ± {s.s_pp_std:>6.2f} | {s.tg:>4} |"
                     f" {s.s_tg_mean:>8.2f} ± {s.s_tg_std:>5.2f} |")
    if r.raw_jsonl:
        lines.append(f"raw runs: {r.raw_jsonl}")
    return "\n".join(lines)


@sweep_app.callback()
def sweep_cmd(
    ctx_: typer.Context,
    recipe: str = typer.Option(None, "--recipe", help="Recipe TOML (with --quant) whose built variant to sweep."),
    quant: VariantOpt = None,
    model: str = typer.Option(None, "--model", "-m", help="Any GGUF to sweep."),
    target: str = typer.Option(None, "--target", help="Hardware target TOML: run the command the planner generates for it."),
    engine: str = typer.Option("bundled", "--engine", help="bundled (CPU, libllama) | ik (llama-sweep-bench) | mainline (llama-bench -d)"),
    cmd: str = typer.Option(None, "--cmd", help="Your own llama-sweep-bench / llama-bench command line (quoted)."),
    repeat: int = typer.Option(3, "--repeat", "-r", help="Runs of the sweep."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Context (bundled sweep; with --target the planned context)."),
    ubatch: int = typer.Option(128, "--ubatch", "-ub", help="U-batch: PP size and N_KV step (bundled sweep)."),
    tg: int = typer.Option(16, "--tg", help="Generated tokens per row (bundled sweep)."),
    threads: ThreadsOpt = None,
    bin_dir: BinDirOpt = None,
    out: str = typer.Option(None, "--out", "-o", help="Write the result JSON here (raw runs go to OUT.jsonl)."),
    no_manifest: bool = typer.Option(False, "--no-manifest", help="Do not record results in the manifest."),
    as_json: JsonOpt = False,
) -> None:
    """Run a speed sweep N times; mean ± sd per N_KV row; raw runs in JSONL.

    Examples:

      quantforge sweep --model smol-Q8_0.gguf --repeat 3 --ctx 512 --ubatch 128 --tg 16 -o q8.json

      quantforge sweep --cmd "llama-sweep-bench -m m.gguf -c 4096 -ub 512 -t 16" --engine ik -r 5 -o ik.json

      quantforge sweep compare q8-old.json q8-new.json
    """
    if ctx_.invoked_subcommand is not None:
        return
    from quantforge.cli._output import emit
    from quantforge.errors import UsageError
    from quantforge.evaluate.sweep import (
        binary_runner,
        bundled_runner,
        run_sweeps,
        save_result,
        split_command,
    )

    if engine not in ("bundled", "ik", "mainline"):
        raise UsageError(f"unknown engine {engine!r}", where="--engine", hint="bundled, ik or mainline")
    path: Path | None = None
    if recipe:
        variants, _ = _recipe_variants(recipe, quant, False, None)
        path = variants[0][1]
    elif model:
        path = Path(model)
    meta: dict[str, Any] = {"engine": engine}
    if cmd:
        argv = split_command(cmd)
        runner = binary_runner(argv)
        meta["command"] = argv
        label = Path(argv[0]).name
    elif target:
        if path is None:
            raise UsageError("--target needs the model (--recipe/--quant or --model)", where="--target")
        argv = _target_command(recipe, quant, path, target, engine, bin_dir, ctx, tg)
        runner = binary_runner(argv)
        meta["command"] = argv
        label = f"{path.stem} @ {Path(target).stem}"
    else:
        if path is None:
            raise UsageError("give --model FILE.gguf, --recipe R --quant Q, or --cmd", where="sweep")
        if engine != "bundled":
            raise UsageError("ik/mainline sweeps run a command", where="--engine", hint="pass --cmd or --target")
        runner = bundled_runner(path, ctx=ctx, ubatch=ubatch, tg=tg, threads=threads)
        meta.update(ctx=ctx, ubatch=ubatch, tg=tg, threads=threads)
        label = path.stem
    if path is not None:
        meta["model"] = str(path)
    raw = Path(out).with_suffix(".jsonl") if out else None
    (res,) = run_sweeps([(label, runner)], repeat=repeat, meta=[meta], raw_jsonl=raw)
    if out:
        save_result(res, out)
    if path is not None and not no_manifest:
        man = Path(str(path) + ".manifest.json")
        if man.is_file():
            from quantforge.lock import folder_lock
            from quantforge.manifest import read_manifest, update_manifest

            with folder_lock(man.parent, purpose="quantforge sweep"):
                prev = getattr(read_manifest(man), "sweeps", None) or {}
                if not isinstance(prev, dict):
                    prev = {"runs": prev}
                update_manifest(man, sweeps={**prev, f"{res.engine}:{res.label}": res.model_dump(mode="json")})
    emit(res, as_json=as_json, human=_fmt_sweep)


def _target_command(recipe: str | None, quant: str | None, model: Path, target: str, engine: str,
                    bin_dir: str | None, ctx: int, tg: int) -> list[str]:
    """The planner's run command for ``target``, turned into a sweep-bench (ik) / llama-bench (mainline) run."""
    from quantforge.errors import UsageError
    from quantforge.evaluate.sweep import sweep_command_from_run
    from quantforge.fit.api import fit_recipe
    from quantforge.fit.report import Settings
    from quantforge.toolchain import find_toolchain

    if not recipe:
        raise UsageError("--target needs the recipe the variant was planned from", where="--target",
                         hint="quantforge sweep --recipe R.toml --quant NAME --target T.toml")
    if engine == "bundled":
        raise UsageError("--target runs the engine's own sweep tool", where="--engine", hint="use --engine ik or mainline")
    report = fit_recipe(Path(recipe), quant=quant, target=target, settings=Settings(n_ctx=ctx))
    tc = find_toolchain(engine, bin_dir=bin_dir)  # type: ignore[arg-type]
    binary = tc.require("sweep_bench" if engine == "ik" else "bench")
    return sweep_command_from_run(report.command, model=model, engine=engine, binary=binary, tg=tg)


def _fmt_compare(rep: Any) -> str:
    lines = [f"baseline: {rep.baseline}   candidate: {rep.candidate}   ({rep.method})",
             f"| {'N_KV':>6} | metric | {'baseline t/s':>17} | {'candidate t/s':>17} | {'change':>8} | {'95% CI':>19} | {'p':>6} | verdict",
             "|" + "-" * 8 + "|" + "-" * 8 + "|" + "-" * 19 + "|" + "-" * 19 + "|" + "-" * 10 + "|" + "-" * 21 + "|" + "-" * 8 + "|" + "-" * 22]
    for m in [*rep.rows, *rep.overall]:
        kv = "all" if m.n_kv is None else str(m.n_kv)
        p = "-" if m.p_value is None else f"{m.p_value:.3f}"
        lines.append(
            f"| {kv:>6} | {m.metric:>6} | {m.baseline_mean:>8.2f} ± {m.baseline_std:>6.2f} | {m.candidate_mean:>8.2f} ± {m.candidate_std:>6.2f}"
            f" | {m.change_pct:>+7.2f}% | {m.ci_low_pct:>+8.2f}..{m.ci_high_pct:>+7.2f}% | {p:>6} | {m.verdict}"
        )
    return "\n".join(lines)


@sweep_app.command("compare")
def sweep_compare_cmd(
    baseline: str = typer.Argument(None, help="Stored result (JSON from 'quantforge sweep', or a sweep-bench/llama-bench log)."),
    candidate: str = typer.Argument(None, help="Stored result to compare with the baseline."),
    model: str = typer.Option(None, "--model", "-m", help="Run two option sets on this GGUF, interleaved A B A B … (bundled)."),
    a: str = typer.Option(None, "--a", help="Baseline: bundled options 'threads=1,ubatch=128' or a quoted command line."),
    b: str = typer.Option(None, "--b", help="Candidate: bundled options or a quoted command line."),
    repeat: int = typer.Option(3, "--repeat", "-r", help="Runs of each configuration."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Context (bundled)."),
    ubatch: int = typer.Option(128, "--ubatch", "-ub", help="U-batch (bundled)."),
    tg: int = typer.Option(16, "--tg", help="Generated tokens per row (bundled)."),
    out: str = typer.Option(None, "--out", "-o", help="Write the report JSON here."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of Welch's t-test (false-positive rate per metric)."),
    min_effect: float = typer.Option(2.0, "--min-effect", help="Smallest change in % ever called a regression/improvement."),
    as_json: JsonOpt = False,
) -> None:
    """Is a speed difference real? Per N_KV row and overall: change, 95% CI, verdict.

    Examples:

      quantforge sweep compare before.json after.json

      quantforge sweep compare --model smol-Q8_0.gguf --a threads=1 --b threads=2 --repeat 3
    """
    from quantforge.cli._output import emit
    from quantforge.errors import UsageError

    if not 0.0 < alpha < 1.0:
        raise UsageError(f"--alpha must be between 0 and 1, not {alpha}", where="--alpha", hint="e.g. --alpha 0.05")
    if min_effect < 0:
        raise UsageError(f"--min-effect must not be negative, not {min_effect}", where="--min-effect")
    from quantforge.evaluate.stats import compare
    from quantforge.evaluate.sweep import (
        binary_runner,
        bundled_runner,
        load_result,
        parse_option_set,
        run_sweeps,
        split_command,
    )

    if baseline and candidate:
        if a or b or model:
            raise UsageError("give two stored results or --a/--b option sets, not both", where="sweep compare")
        ra, rb = load_result(baseline), load_result(candidate)
    elif a and b:
        runners = []
        metas = []
        for spec in (a, b):
            if "=" in spec.split()[0] and not Path(spec.split()[0]).exists():
                opts = parse_option_set(spec)
                mpath = opts.pop("model", model)
                if not mpath:
                    raise UsageError("bundled option sets need --model FILE.gguf", where="--model")
                o = {"ctx": ctx, "ubatch": ubatch, "tg": tg, **opts}
                runners.append((spec, bundled_runner(mpath, **o)))
                metas.append({"engine": "bundled", "model": str(mpath), "ctx": o["ctx"], "ubatch": o["ubatch"], "tg": o["tg"],
                              "threads": o.get("threads")})
            else:
                argv = split_command(spec)
                runners.append((spec, binary_runner(argv)))
                metas.append({"engine": "ik" if "sweep-bench" in argv[0] else "mainline", "command": argv})
        ra, rb = run_sweeps(runners, repeat=repeat, interleave=True, meta=metas,
                            raw_jsonl=Path(out).with_suffix(".jsonl") if out else None)
    else:
        raise UsageError("give BASELINE CANDIDATE results, or --a and --b to run both", where="sweep compare")
    rep = compare(ra, rb, alpha=alpha, min_effect_pct=min_effect)
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rep.model_dump_json(indent=2), encoding="utf-8")
    emit(rep, as_json=as_json, human=_fmt_compare)


plot_app = typer.Typer(help="Charts (PNG + SVG): speed vs N_KV, quality vs size.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")


@plot_app.command("sweep")
def plot_sweep_cmd(
    results: list[str] = typer.Argument(..., help="Sweep results (JSON from 'quantforge sweep') or tool logs."),
    out: str = typer.Option(..., "--out", "-o", help="Output path without extension (writes .png and .svg)."),
    title: str = typer.Option(None, "--title"),
) -> None:
    """PP and TG vs N_KV with error bars for one or more runs/configs.

    Example: quantforge plot sweep before.json after.json -o speed
    """
    from quantforge.evaluate.plots import plot_sweeps
    from quantforge.evaluate.sweep import load_result

    paths = plot_sweeps([load_result(r) for r in results], out, title=title)
    print("\n".join(str(p) for p in paths))


@plot_app.command("ladder")
def plot_ladder_cmd(
    results: list[str] = typer.Argument(..., help="Eval results (JSON from 'quantforge eval --json') or variant manifests."),
    out: str = typer.Option(..., "--out", "-o", help="Output path without extension (writes .png and .svg)."),
    x: str = typer.Option("gib", "--x", help="gib | bpw"),
    n_params: int = typer.Option(None, "--n-params", help="Parameter count (for --x bpw)."),
    title: str = typer.Option(None, "--title"),
) -> None:
    """PPL / KLD vs size across a quant ladder.

    Example: quantforge plot ladder q8.json q6.json q4.json -o ladder --x bpw --n-params 134515008
    """

    from quantforge.errors import InputError
    from quantforge.evaluate.models import EvalResult
    from quantforge.evaluate.plots import plot_ladder

    if x not in ("gib", "bpw"):
        raise InputError(f"--x must be gib or bpw, not {x!r}", where="--x")
    evals = []
    for r in results:
        from pydantic import ValidationError

        from quantforge.paths import read_input_json

        p = Path(r)
        if not p.exists() and not p.is_symlink():
            raise InputError("result file not found", where=r)
        data: Any = read_input_json(p, what="result file")
        if isinstance(data, dict) and isinstance(data.get("eval"), dict):  # a manifest
            data = data["eval"].get("latest")
        for d in data if isinstance(data, list) else [data]:
            try:
                evals.append(EvalResult.model_validate(d))
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InputError(f"not an evaluation result: {'.'.join(map(str, first['loc'])) or 'value'}: "
                                 f"{first['msg']}", where=r, hint="give the JSON of quantforge eval or a manifest") from None
    paths = plot_ladder(evals, out, x=x, n_params=n_params, title=title)  # type: ignore[arg-type]
    print("\n".join(str(p) for p in paths))
