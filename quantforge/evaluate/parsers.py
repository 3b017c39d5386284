"""Parsers for what ``llama-perplexity``, ``llama-sweep-bench`` and ``llama-bench`` print.

Both engines (ik_llama.cpp and mainline llama.cpp) are covered: the numbers are taken
exactly as printed, never recomputed, so a parsed value equals the value in the log.
Parsers raise ``EvalError`` naming the log when the expected block is absent; they never
guess a number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from quantforge.errors import EvalError, InputError
from quantforge.evaluate.models import BenchRow, KLDChunkRow, KLDStats, PerplexityLog, SweepRow
from quantforge.evaluate.tables import read_table

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)"

# ik: "Final estimate: PPL over 199 chunks for n_ctx=512 = 5.6357 +/- 0.06192"
# mainline: "Final estimate: PPL = 5.6357 +/- 0.06192"
_FINAL = re.compile(rf"Final estimate: PPL(?: over (\d+) chunks for n_ctx=(\d+))? = ({_NUM}) \+/- ({_NUM})")
_CHUNK = re.compile(rf"\[(\d+)\]({_NUM}),")
_CALC = re.compile(
    r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)"
)
_THREADS = re.compile(r"system_info: n_threads = (\d+)")
_BUILD = re.compile(r"build = (\d+ \([^)]*\))")
_SAVING = re.compile(r"saving all logits to (.+)$", re.M)
_PM = r"\s*±\s*"
_KLD_ROW = re.compile(
    rf"^\s*(\d+)\s+({_NUM}){_PM}({_NUM})\s+({_NUM}){_PM}({_NUM})\s+({_NUM}){_PM}({_NUM})"
    rf"\s+({_NUM}){_PM}({_NUM})\s*%\s+({_NUM}){_PM}({_NUM})\s*%\s*$",
    re.M,
)


def _f(x: str) -> float:
    return float(x)


def _stat_line(text: str, label: str, *, pm: bool, pct: bool = False) -> tuple[float, float | None]:
    """Value (and ± error) of a ``label: value [± err] [%]`` line of the statistics blocks."""
    pat = re.escape(label) + r"\s*:\s*(" + _NUM + r")\s*%?"
    if pm:
        pat += r"\s*±\s*(" + _NUM + r")"
    m = re.search(r"^" + pat, text, re.M)
    if not m:
        raise EvalError(f"statistics line '{label}' not found", where="llama-perplexity output")
    return float(m.group(1)), (float(m.group(2)) if pm else None)


def _percentiles(text: str, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(r"^\s*(\d+\.\d)%\s+" + re.escape(what) + r":\s*(" + _NUM + r")%?\s*$", text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def parse_kld_stats(text: str) -> KLDStats | None:
    """The final statistics of a KLD run, or None when the run printed none (under 100 tokens)."""
    if "====== KL divergence statistics ======" not in text:
        return None
    head, _, rest = text.partition("====== Perplexity statistics ======")
    kl_part = rest.split("====== KL divergence statistics ======", 1)[1]
    ppl_part = rest.split("====== KL divergence statistics ======", 1)[0]
    kl_block, _, tp_block = kl_part.partition("====== Token probability statistics ======")

    ppl, ppl_err = _stat_line(ppl_part, "Mean PPL(Q)", pm=True)
    base, base_err = _stat_line(ppl_part, "Mean PPL(base)", pm=True)
    cor, _ = _stat_line(ppl_part, "Cor(ln(PPL(Q)), ln(PPL(base)))", pm=False)
    lnr, lnr_err = _stat_line(ppl_part, "Mean ln(PPL(Q)/PPL(base))", pm=True)
    ratio, ratio_err = _stat_line(ppl_part, "Mean PPL(Q)/PPL(base)", pm=True)
    diff, diff_err = _stat_line(ppl_part, "Mean PPL(Q)-PPL(base)", pm=True)
    mean, mean_err = _stat_line(kl_block, "Mean    KLD", pm=True)
    mx, _ = _stat_line(kl_block, "Maximum KLD", pm=False)
    med, _ = _stat_line(kl_block, "Median  KLD", pm=False)
    mn, _ = _stat_line(kl_block, "Minimum KLD", pm=False)
    dpm, dpm_err = _stat_line(tp_block, "Mean    Δp", pm=True)
    dpmax, _ = _stat_line(tp_block, "Maximum Δp", pm=False)
    dpmed, _ = _stat_line(tp_block, "Median  Δp", pm=False)
    dpmin, _ = _stat_line(tp_block, "Minimum Δp", pm=False)
    rms, rms_err = _stat_line(tp_block, "RMS Δp    ", pm=True)
    top, top_err = _stat_line(tp_block, "Same top p", pm=True)
    assert ppl_err is not None and base_err is not None and lnr_err is not None
    assert ratio_err is not None and diff_err is not None and mean_err is not None
    assert dpm_err is not None and rms_err is not None and top_err is not None
    return KLDStats(
        ppl=ppl, ppl_err=ppl_err, ppl_base=base, ppl_base_err=base_err, cor_ln_ppl_pct=cor,
        ln_ppl_ratio=lnr, ln_ppl_ratio_err=lnr_err, ppl_ratio=ratio, ppl_ratio_err=ratio_err,
        ppl_diff=diff, ppl_diff_err=diff_err, mean=mean, mean_err=mean_err, median=med,
        maximum=mx, minimum=mn, percentiles=_percentiles(kl_block, "KLD"),
        dp_mean_pct=dpm, dp_mean_pct_err=dpm_err, dp_median_pct=dpmed, dp_max_pct=dpmax,
        dp_min_pct=dpmin, dp_percentiles_pct=_percentiles(tp_block, "Δp"),
        rms_dp_pct=rms, rms_dp_pct_err=rms_err, same_top_pct=top, same_top_pct_err=top_err,
    )


def parse_perplexity_log(text: str, *, where: str = "llama-perplexity output") -> PerplexityLog:
    """Parse a full ``llama-perplexity`` log (stdout and stderr together), PPL or KLD mode."""
    calc = _CALC.search(text)
    threads = _THREADS.search(text)
    build = _BUILD.search(text)
    saving = _SAVING.search(text)
    common: dict[str, Any] = {
        "n_batch": int(calc.group(3)) if calc else None,
        "n_seq": int(calc.group(4)) if calc else None,
        "n_threads": int(threads.group(1)) if threads else None,
        "build": build.group(1) if build else None,
        "saved_logits": saving.group(1).strip() if saving else None,
    }
    rows = tuple(
        KLDChunkRow(
            chunk=int(m.group(1)), ppl=_f(m.group(2)), ppl_err=_f(m.group(3)), ln_ratio=_f(m.group(4)),
            ln_ratio_err=_f(m.group(5)), kld=_f(m.group(6)), kld_err=_f(m.group(7)),
            rms_dp_pct=_f(m.group(8)), rms_dp_pct_err=_f(m.group(9)), same_top_pct=_f(m.group(10)),
            same_top_pct_err=_f(m.group(11)),
        )
        for m in _KLD_ROW.finditer(text)
    )
    if rows or "KL divergence statistics" in text:
        stats = parse_kld_stats(text)
        if stats is not None:
            ppl, ppl_err = stats.ppl, stats.ppl_err
        elif rows:
            ppl, ppl_err = rows[-1].ppl, rows[-1].ppl_err
        else:
            raise EvalError("the KLD run printed no chunk results", where=where)
        return PerplexityLog(
            mode="kld", ppl=ppl, ppl_err=ppl_err, n_chunks=len(rows), n_ctx=None,
            chunk_ppl=tuple(r.ppl for r in rows), kld_chunks=rows, kld=stats, **common,
        )
    final = _FINAL.search(text)
    if not final:
        raise EvalError("no 'Final estimate: PPL' line: the run did not finish", where=where)
    chunks = tuple(float(m.group(2)) for m in _CHUNK.finditer(text))
    n_chunks = int(final.group(1)) if final.group(1) else (int(calc.group(1)) if calc else len(chunks))
    n_ctx = int(final.group(2)) if final.group(2) else (int(calc.group(2)) if calc else None)
    return PerplexityLog(
        mode="ppl", ppl=float(final.group(3)), ppl_err=float(final.group(4)), n_chunks=n_chunks,
        n_ctx=n_ctx, chunk_ppl=chunks, **common,
    )


# ---------------------------------------------------------------- sweep-bench

_SWEEP_HEADER = re.compile(r"^\|\s*PP\s*\|\s*TG\s*\|\s*N_KV\s*\|\s*T_PP s\s*\|\s*S_PP t/s\s*\|\s*T_TG "
                           r"s\s*\|\s*S_TG t/s\s*\|", re.M)


def parse_sweep_markdown(text: str, *, where: str = "llama-sweep-bench output") -> tuple[SweepRow, ...]:
    """Rows of the ``| PP | TG | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s |`` table, as printed.

    The table reader is :func:`quantforge.evaluate.tables.read_table` (every pasted shape, runs,
    warm-up rows); this is its strict view for tool output: all rows, none dropped.
    """
    if not _SWEEP_HEADER.search(text):
        raise EvalError("no sweep-bench table (| PP | TG | N_KV | ...) in the output", where=where)
    try:
        table = read_table(text, source=where, keep_warmup=True)
    except InputError as exc:
        raise EvalError(exc.message, where=exc.where, hint=exc.hint) from exc
    rows = tuple(r for run in table.runs for r in run)
    if not rows:
        raise EvalError("the sweep-bench table has no rows (the run stopped early?)", where=where)
    return rows


def parse_sweep_jsonl(lines: Iterable[str] | str, *,
                      where: str = "llama-sweep-bench output") -> tuple[SweepRow, ...]:
    """Rows of ``llama-sweep-bench --output-format jsonl`` (other lines are skipped)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    rows: list[SweepRow] = []
    for line in lines:
        line = line.strip()
        if not (line.startswith("{") and '"n_kv"' in line):
            continue
        d = json.loads(line)
        rows.append(
            SweepRow(
                pp=int(d["pp"]), tg=int(d["tg"]), n_kv=int(d["n_kv"]), t_pp=float(d["t_pp"]),
                s_pp=float(d.get("speed_pp", d.get("s_pp", 0.0))), t_tg=float(d["t_tg"]),
                s_tg=float(d.get("speed_tg", d.get("s_tg", 0.0))),
            )
        )
    if not rows:
        raise EvalError("no sweep-bench JSONL rows in the output", where=where)
    return tuple(rows)


def parse_sweep(text: str, *, where: str = "llama-sweep-bench output") -> tuple[SweepRow, ...]:
    """Markdown table or JSONL, whichever the output holds."""
    if _SWEEP_HEADER.search(text):
        return parse_sweep_markdown(text, where=where)
    return parse_sweep_jsonl(text, where=where)


# ---------------------------------------------------------------- llama-bench

_DEPTH = re.compile(r"@ d(\d+)")


def parse_bench_json(text: str, *, where: str = "llama-bench output") -> tuple[BenchRow, ...]:
    """Tests of ``llama-bench -o json`` (the JSON array may be surrounded by log lines)."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"^\[", text, re.M):
        try:
            data, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(data, list) and data and isinstance(data[0], dict) and "avg_ts" in data[0]:
            break
    else:
        raise EvalError("no llama-bench JSON array in the output", where=where)
    out = []
    for d in data:
        n_prompt, n_gen = int(d.get("n_prompt", 0)), int(d.get("n_gen", 0))
        depth = int(d.get("n_depth", 0) or 0)
        test = d.get("test") or (f"pp{n_prompt}" if n_prompt else f"tg{n_gen}")
        if depth and "@" not in test:
            test = f"{test} @ d{depth}"
        out.append(
            BenchRow(
                test=test, n_prompt=n_prompt, n_gen=n_gen, n_depth=depth, avg_ts=float(d["avg_ts"]),
                stddev_ts=float(d["stddev_ts"]), samples_ts=tuple(float(x) for x in d.get("samples_ts", ())),
                model_type=d.get("model_type"), backend=d.get("backends") or _backend(d),
                threads=int(d["n_threads"]) if "n_threads" in d else None,
            )
        )
    return tuple(out)


def _backend(d: dict[str, object]) -> str | None:
    if d.get("cuda"):
        return "CUDA"
    return "CPU" if "cuda" in d else None


def parse_bench_markdown(text: str, *, where: str = "llama-bench output") -> tuple[BenchRow, ...]:
    """Tests of ``llama-bench -o md``: ``| model | size | params | backend | threads | test | t/s |``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    header_idx = next((i for i, ln in enumerate(lines) if re.search(r"\|\s*test\s*\|", ln) and "t/s" in ln),
                      None)
    if header_idx is None:
        raise EvalError("no llama-bench markdown table in the output", where=where)
    cols = [c.strip() for c in lines[header_idx].strip("|").split("|")]
    out = []
    for ln in lines[header_idx + 1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(cols) or all(set(c) <= {"-", ":"} for c in cells):
            continue
        row = dict(zip(cols, cells, strict=False))
        test = row["test"]
        m = re.match(rf"({_NUM})\s*±\s*({_NUM})", row["t/s"])
        if not m:
            raise EvalError(f"malformed llama-bench row: {ln!r}", where=where)
        kind = re.match(r"(pp|tg)(\d+)(?:\+tg(\d+))?", test)
        n_prompt = int(kind.group(2)) if kind and kind.group(1) == "pp" else 0
        n_gen = int(kind.group(2)) if kind and kind.group(1) == "tg" else (int(kind.group(3)) if kind
                                                                           and kind.group(3) else 0)
        depth = _DEPTH.search(test)
        threads = row.get("threads")
        out.append(
            BenchRow(
                test=test, n_prompt=n_prompt, n_gen=n_gen, n_depth=int(depth.group(1)) if depth else 0,
                avg_ts=float(m.group(1)), stddev_ts=float(m.group(2)), model_type=row.get("model"),
                backend=row.get("backend"), threads=int(threads) if threads and threads.isdigit() else None,
            )
        )
    if not out:
        raise EvalError("the llama-bench table has no rows", where=where)
    return tuple(out)


def bench_to_sweep_rows(rows: Iterable[BenchRow]) -> tuple[SweepRow, ...]:
    """Pair llama-bench ``ppN @ dD`` and ``tgM @ dD`` tests into sweep rows, one per depth."""
    by_depth: dict[int, dict[str, BenchRow]] = {}
    for r in rows:
        kind = "pp" if r.n_prompt and not r.n_gen else "tg" if r.n_gen and not r.n_prompt else None
        if kind:
            by_depth.setdefault(r.n_depth, {})[kind] = r
    out = []
    for depth in sorted(by_depth):
        d = by_depth[depth]
        pp, tg = d.get("pp"), d.get("tg")
        # a half that llama-bench did not measure is None, never NaN (results are strict JSON)
        out.append(
            SweepRow(
                pp=pp.n_prompt if pp else 0, tg=tg.n_gen if tg else 0, n_kv=depth,
                t_pp=pp.n_prompt / pp.avg_ts if pp else None, s_pp=pp.avg_ts if pp else None,
                t_tg=tg.n_gen / tg.avg_ts if tg else None, s_tg=tg.avg_ts if tg else None,
            )
        )
    return tuple(out)
