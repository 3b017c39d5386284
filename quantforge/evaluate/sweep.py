"""Speed sweeps: ik ``llama-sweep-bench``, mainline ``llama-bench -d``, or the bundled CPU sweep, repeated.

Each configuration is run ``repeat`` times; raw rows go to a JSONL file (one line per row,
with the run index), the result (raw runs + mean ± sd per N_KV row) to JSON. Two
configurations can be run interleaved (A B A B …) so slow drifts of the machine (thermal,
other load) hit both alike.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quantforge.errors import EvalError, InputError
from quantforge.evaluate import _util
from quantforge.evaluate.models import EvalEngine, SweepResult, SweepRow
from quantforge.evaluate.parsers import (
    bench_to_sweep_rows,
    parse_bench_json,
    parse_bench_markdown,
    parse_sweep,
)
from quantforge.evaluate.stats import summarize

Runner = Callable[[], tuple[SweepRow, ...]]


def bundled_runner(model: str | Path, *, ctx: int = 512, ubatch: int = 128, tg: int = 16,
                   threads: int | None = None, flash_attn: bool = True) -> Runner:
    _util.check_model_file(model)
    if ctx < ubatch or ubatch < 1 or tg < 1:
        raise InputError(f"impossible sweep: ctx {ctx}, ubatch {ubatch}, tg {tg}", hint="need ctx >= ubatch >= 1 and tg >= 1")
    counter = {"i": 0}

    def run() -> tuple[SweepRow, ...]:
        from quantforge.evaluate.bundled import sweep_bundled

        counter["i"] += 1
        return sweep_bundled(model, ctx=ctx, ubatch=ubatch, tg=tg, threads=threads, seed=counter["i"],
                             flash_attn=flash_attn)

    return run


def binary_runner(cmd: Sequence[str], *, timeout: float | None = None) -> Runner:
    """Run a ``llama-sweep-bench`` or ``llama-bench`` command line and parse its table."""
    from quantforge.evaluate.perplexity import _run

    if not cmd:
        raise InputError("empty sweep command")
    exe = Path(cmd[0])
    if not (exe.is_file() or _which(cmd[0])):
        from quantforge.errors import ToolError

        raise ToolError(f"{cmd[0]} not found", where="sweep command", hint="build llama-sweep-bench / llama-bench or pass its path")

    def run() -> tuple[SweepRow, ...]:
        out, _ = _run(list(cmd), where=" ".join(cmd[:3]), timeout=timeout)
        name = exe.name
        if "llama-bench" in name:
            rows = parse_bench_json(out) if '"avg_ts"' in out else parse_bench_markdown(out)
            return bench_to_sweep_rows(rows)
        return parse_sweep(out, where=name)

    return run


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def run_sweeps(
    configs: Sequence[tuple[str, Runner]], *, repeat: int = 3, interleave: bool = True,
    meta: Sequence[dict[str, Any]] | None = None, raw_jsonl: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[SweepResult]:
    """Run each (label, runner) ``repeat`` times, interleaved and counterbalanced (A B, B A, A B …)
    by default, so that a drift of the machine (warming up, another job starting) does not favour
    the configuration that always runs first; one SweepResult each."""
    if repeat < 1:
        raise InputError(f"--repeat must be at least 1, not {repeat}", where="--repeat")
    runs: list[list[tuple[SweepRow, ...]]] = [[] for _ in configs]
    n = len(configs)
    order = ([(r, i if r % 2 == 0 else n - 1 - i) for r in range(repeat) for i in range(n)] if interleave
             else [(r, i) for i in range(n) for r in range(repeat)])
    for k, (_rep, i) in enumerate(order):
        label, runner = configs[i]
        if progress:
            progress(label, k + 1, len(order))
        runs[i].append(runner())
    created = _util.now_iso()
    results = []
    for i, (label, _) in enumerate(configs):
        m = dict(meta[i]) if meta else {}
        first = runs[i][0]
        results.append(
            SweepResult(
                label=label, engine=m.pop("engine", "bundled"), ctx=m.pop("ctx", first[-1].n_kv + first[-1].pp),
                ubatch=m.pop("ubatch", first[0].pp), tg=m.pop("tg", first[0].tg), runs=tuple(runs[i]),
                summary=summarize(runs[i]), created=created, raw_jsonl=str(raw_jsonl) if raw_jsonl else None, **m,
            )
        )
    if raw_jsonl is not None:
        write_raw_jsonl(raw_jsonl, results)
    return results


def write_raw_jsonl(path: str | Path, results: Sequence[SweepResult]) -> Path:
    """One JSON line per (config, run, row): every raw measurement, for later re-analysis."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for res in results:
            for i, run in enumerate(res.runs):
                for row in run:
                    f.write(json.dumps({"label": res.label, "run": i, **row.model_dump()}) + "\n")
    os.replace(tmp, p)
    return p


def read_raw_jsonl(path: str | Path) -> dict[str, list[list[SweepRow]]]:
    from quantforge.paths import MAX_JSON_BYTES, read_input_text

    out: dict[str, dict[int, list[SweepRow]]] = {}
    text = read_input_text(path, what="sweep runs file", max_bytes=MAX_JSON_BYTES)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            label, run = d.pop("label"), d.pop("run")
            out.setdefault(label, {}).setdefault(run, []).append(SweepRow(**d))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise InputError(f"not a sweep run record: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             where=f"{path}:{n}", hint="give the .jsonl written by quantforge sweep") from None
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def save_result(result: SweepResult, path: str | Path, *, force: bool = True) -> Path:
    p = Path(path)
    if p.exists() and not force:
        raise InputError("output exists", where=str(p), hint="pass --force to overwrite")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".partial")
    tmp.write_text(result.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, p)
    return p


def load_result(path: str | Path) -> SweepResult:
    """A stored sweep result (JSON from ``quantforge sweep``) or a sweep-bench/llama-bench log."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("sweep result not found", where=str(p), hint="pass a JSON written by 'quantforge sweep' or a sweep-bench log")
    from quantforge.paths import MAX_JSON_BYTES, read_input_bytes

    text = read_input_bytes(p, what="sweep result", max_bytes=MAX_JSON_BYTES).decode("utf-8", errors="replace")
    if text.lstrip().startswith("{") and '"runs"' in text[:2000] or '"summary"' in text:
        try:
            return SweepResult.model_validate_json(text)
        except ValueError as exc:
            raise InputError(f"not a quantforge sweep result: {str(exc).splitlines()[0]}", where=str(p)) from exc
    # a raw tool log: one run
    try:
        rows = parse_sweep(text, where=str(p))
        engine: EvalEngine = "ik"
    except EvalError:
        rows = bench_to_sweep_rows(parse_bench_json(text) if '"avg_ts"' in text else parse_bench_markdown(text, where=str(p)))
        engine = "mainline"
    return SweepResult(label=p.stem, engine=engine, ctx=rows[-1].n_kv + rows[-1].pp, ubatch=rows[0].pp, tg=rows[0].tg,
                       runs=(rows,), summary=summarize([rows]), created=_util.now_iso())


def parse_option_set(text: str) -> dict[str, Any]:
    """``threads=1,ubatch=128`` → dict for the bundled runner (ints where they look like ints)."""
    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise InputError(f"expected key=value, got {part!r}", where="--a/--b", hint="e.g. --a threads=1 --b threads=2")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in ("threads", "ubatch", "ctx", "tg", "flash_attn", "model"):
            raise InputError(f"unknown option {k!r}", where="--a/--b", hint="threads, ubatch, ctx, tg, flash_attn, model")
        out[k] = (v.lower() in ("1", "true", "on", "yes")) if k == "flash_attn" else (int(v) if k != "model" else v)
    return out


def split_command(text: str) -> list[str]:
    return shlex.split(text)


def sweep_command_from_run(run_cmd: Sequence[str], *, model: str | Path, engine: str, binary: str,
                           tg: int | None = None) -> list[str]:
    """Turn the planner's ``llama-server`` run command into the matching speed sweep.

    ik: ``llama-sweep-bench`` takes the same model/offload/cache flags (``-c``, ``-ngl``, ``-ot``,
    ``-ctk``, ``-fa``, ``-mla``, ``-fmoe`` …). mainline: ``llama-bench`` with one test per depth
    (``-d 0,ub,2ub,…``), ``-p ub -n tg``, JSON output; flags it lacks (``-c``) are dropped.
    """
    argv = list(run_cmd)
    if not argv:
        raise InputError("the planner produced no run command")
    argv = [str(model) if a == "MODEL.gguf" else a for a in argv[1:]]
    if engine == "ik":
        out = [binary, *argv]
        if tg and "-n" not in argv:
            out += ["-n", str(tg)]
        return out
    # mainline llama-bench
    opts: dict[str, str] = {}
    ot: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        has_value = nxt is not None and not (nxt.startswith("-") and not nxt.lstrip("-").replace(".", "").isdigit())
        if a == "-ot" and nxt is not None:
            ot.append(nxt)
            i += 2
        elif a.startswith("-") and has_value:
            opts[a] = str(nxt)
            i += 2
        else:
            opts[a] = ""  # a switch such as -fa, -fmoe
            i += 1
    ctx = int(opts.get("-c", "4096"))
    ub = int(opts.get("-ub", "512"))
    depths = ",".join(str(d) for d in range(0, max(ctx - ub, 0) + 1, ub))
    out = [binary, "-m", opts.get("-m", str(model)), "-p", str(ub), "-n", str(tg or max(ub // 4, 1)), "-d", depths,
           "-ub", str(ub), "-o", "json", "-r", "1"]
    for k in ("-b", "-t", "-ngl", "-ctk", "-ctv", "-ts"):
        if k in opts:
            out += [k, opts[k]]
    if "-fa" in opts:
        out += ["-fa", "1" if opts["-fa"] in ("on", "1", "") else "0"]
    for o in ot:
        out += ["-ot", o]
    return out
