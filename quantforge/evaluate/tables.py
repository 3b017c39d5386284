"""Read every speed table users have: tool output, files the tools wrote, and tables pasted from issues.

Formats: ``llama-sweep-bench`` tables (ik and the mainline port; with or without the header and
separator lines, with or without leading/trailing pipes, with extra spaces, tab-separated as
copied from a rendered GitHub table, ``--sweep-memory`` columns, several tables or ``-nrep``
repeats as runs), sweep-bench JSONL and CSV, ``llama-bench`` markdown (both engines, with or
without the header, log lines between rows, several builds or configurations in one paste),
JSON, JSONL and CSV, and mainline ``llama-batched-bench`` tables and JSONL.

Numbers are taken as printed. What the reader does to the input is said in ``notes``: the
warm-up outlier row it dropped (the first row of a sweep is often far off because caches,
page tables or CUDA graphs are still cold), the repetition count it assumed for a llama-bench
``mean ± sd``. A table that cannot be read is an ``InputError`` naming ``file:line`` and the
fix; nothing is guessed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from quantforge.errors import InputError
from quantforge.evaluate import knobs
from quantforge.evaluate.models import ReportedSpread, SweepRow

SWEEP_COLUMNS = ("PP", "TG", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s")
SWEEP_MEMORY_COLUMNS = (*SWEEP_COLUMNS, "RSS HWM", "VRAM delta")
BATCHED_COLUMNS = ("PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s")
#: llama-bench's default ``-r``: the repetitions behind a printed ``mean ± sd`` when the paste does not say.
BENCH_DEFAULT_REPS = 5

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PM = re.compile(rf"^\s*({_NUM})\s*(?:±|\+/-)\s*({_NUM})\s*$")
_TEST = re.compile(r"^(pp|tg|pg)\s*(\d+)(?:\s*\+\s*tg\s*(\d+))?(?:\s*@\s*d\s*(\d+))?$", re.I)
_BUILD_PATTERNS = (
    re.compile(r"^\s*build:\s*(\S+\s*\(\d+\))\s*$", re.M),  # llama-bench: "build: 09764678 (3715)"
    re.compile(r"\bbuild\s*=\s*(\d+\s*\([^)]*\))"),  # ik tools: "main: build = 3715 (09764678)"
    re.compile(r"^\s*version:\s*(.+?)\s*$", re.M),  # "version: 3715 (09764678)"
    re.compile(r"^\s*build_info:\s*(\S+)", re.M),
)
_SYSTEM_INFO = re.compile(r"^\s*system_info:\s*(.+?)\s*$", re.M)
_BENCH_REPS = re.compile(r"llama-bench\b.*?\s(?:-r|--repetitions)\s+(\d+)")


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


_SIGNATURES = {
    _norm("".join(SWEEP_MEMORY_COLUMNS)): ("sweep-bench", SWEEP_MEMORY_COLUMNS),
    _norm("".join(SWEEP_COLUMNS)): ("sweep-bench", SWEEP_COLUMNS),
    _norm("".join(BATCHED_COLUMNS)): ("batched-bench", BATCHED_COLUMNS),
}


class ParsedTable(BaseModel):
    """One configuration read from a text: its runs, what it states about itself, what was done to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    format: str
    runs: tuple[tuple[SweepRow, ...], ...]
    spread: tuple[ReportedSpread, ...] = ()
    settings: dict[str, str] = {}
    build: str | None = None
    system_info: str | None = None
    notes: tuple[str, ...] = ()
    line: int | None = None  # first line of the (first) table


def read_table(text: str, *, source: str, select: Mapping[str, str] | None = None,
               keep_warmup: bool = False) -> ParsedTable:
    """The one configuration in ``text`` (any supported format), warm-up outlier rows dropped.

    ``select`` picks one configuration where the text holds several: ``{"table": "2"}`` (the second
    table; ``"all"`` reads every sweep table as a run of one configuration), a llama-bench column or
    knob (``{"build": "1ec12b8e"}``, ``{"n_batch": "128"}``, ``{"model": "Q4_0"}``: a substring for
    build and model), or ``{"label": …}`` in quantforge's raw-runs JSONL. Without it such a text is
    an error that names what it holds.
    """
    stripped = text.lstrip()
    if not stripped:
        raise InputError("the file is empty", where=source, hint=_WHAT)
    if stripped.startswith("[") or (re.search(r'^\s*\[\s*$', text, re.M) and '"avg_ts"' in text):
        rows = _json_array(text)
        if rows is not None:
            return _bench_records(rows, text, source=source, fmt="llama-bench-json", select=select,
                                  keep_warmup=keep_warmup)
    jl = _jsonl(text, source=source)
    if jl is not None:
        kind, records, line = jl
        if kind == "bench":
            return _bench_records(records, text, source=source, fmt="llama-bench-jsonl", select=select,
                                  keep_warmup=keep_warmup)
        if all("label" in d and "run" in d for d in records):
            return _raw_runs(records, source=source, select=select)
        return _sweep_records(records, text, source=source, fmt=kind, line=line, keep_warmup=keep_warmup)
    c = _csv(text, source=source)
    if c is not None:
        kind, records, line = c
        if kind == "bench":
            return _bench_records(records, text, source=source, fmt="llama-bench-csv", select=select,
                                  keep_warmup=keep_warmup)
        return _sweep_records(records, text, source=source, fmt=kind, line=line, keep_warmup=keep_warmup)
    return _text_tables(text, source=source, select=select, keep_warmup=keep_warmup)


_WHAT = ("paste a llama-sweep-bench table (| PP | TG | N_KV | …), llama-bench output "
         "(md/json/jsonl/csv) or a "
         "llama-batched-bench table, or pass a JSON written by 'quantforge sweep'")


def stated_build(text: str) -> str | None:
    for pat in _BUILD_PATTERNS:
        m = pat.search(text)
        if m:
            return " ".join(m.group(1).split())
    return None


def stated_system_info(text: str) -> str | None:
    m = _SYSTEM_INFO.search(text)
    return " ".join(m.group(1).split()) if m else None


# ---------------------------------------------------------------- warm-up outliers


def warmup_outlier(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    """The value the first point should have had when it is a warm-up outlier, else ``None``.

    The rows after the first give a robust trend (Theil-Sen line, MAD scale). The first row is an
    outlier only when it is *slower* than that trend by more than 4 robust standard deviations
    and 10 % of the trend: speeds fall with depth, so a first row faster than its successors is
    normal, while a cold first measurement is slow. Needs 4 rows after the first.
    """
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if len(pts) < 5 or pts[0][0] != float(xs[0]):
        return None
    x0, y0 = pts[0]
    rest = np.array(pts[1:])
    rx, ry = rest[:, 0], rest[:, 1]
    slopes = [(ry[j] - ry[i]) / (rx[j] - rx[i]) for i in range(len(rx)) for j in range(i + 1, len(rx))
              if rx[j] != rx[i]]
    slope = float(np.median(slopes)) if slopes else 0.0
    intercept = float(np.median(ry - slope * rx))
    resid = ry - (intercept + slope * rx)
    scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    expected = intercept + slope * x0
    if expected <= 0:
        return None
    if y0 < expected - max(4.0 * scale, 0.10 * expected):
        return expected
    return None


def first_sample_outlier(samples: Sequence[float]) -> bool:
    """Is the first repetition of a llama-bench test a warm-up outlier (slower than the others)?"""
    if len(samples) < 3:
        return False
    rest = np.array(samples[1:], dtype=float)
    med = float(np.median(rest))
    mad = 1.4826 * float(np.median(np.abs(rest - med)))
    return samples[0] < med - max(5.0 * mad, 0.25 * med)


def _drop_warmup(runs: list[list[SweepRow]], *, fmt: str) -> tuple[list[list[SweepRow]], list[str]]:
    notes = []
    out = []
    for i, run in enumerate(runs):
        xs = [r.n_kv for r in run]
        if len(run) < 5 or sorted(xs) != xs or len({(r.pp, r.tg) for r in run}) != 1:
            out.append(run)
            continue
        why = []
        for metric in ("pp", "tg"):
            exp = warmup_outlier(xs, [getattr(r, f"s_{metric}") for r in run])
            if exp is not None:
                why.append(f"S_{metric.upper()} {getattr(run[0], f's_{metric}'):.2f} t/s where the "
                           "other rows "
                           f"give about {exp:.2f}")
        if why:
            run_txt = f"run {i + 1}, " if len(runs) > 1 else ""
            notes.append(f"warm-up outlier dropped ({run_txt}first row, N_KV {run[0].n_kv}): "
                         f"{'; '.join(why)}")
            out.append(run[1:])
        else:
            out.append(run)
    return out, notes


# ---------------------------------------------------------------- JSON / JSONL / CSV


def _json_array(text: str) -> list[dict[str, Any]] | None:
    dec = json.JSONDecoder()
    for m in re.finditer(r"^\s*\[", text, re.M):
        try:
            data, _ = dec.raw_decode(text, m.start() + (len(m.group(0)) - 1))
        except json.JSONDecodeError:
            continue
        if isinstance(data, list) and data and all(isinstance(d, dict) for d in data) and "avg_ts" in data[0]:
            return data
    return None


def _jsonl(text: str, *, source: str) -> tuple[str, list[dict[str, Any]], int] | None:
    records: list[dict[str, Any]] = []
    kind: str | None = None
    first = 0
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not (s.startswith("{") and s.endswith("}")):
            continue
        try:
            d = json.loads(s)
        except json.JSONDecodeError as exc:
            if '"n_kv"' in s or '"avg_ts"' in s:
                raise InputError(f"not a JSON line: {exc.msg} at column {exc.colno}", where=f"{source}:{no}",
                                 hint="each line of a JSONL file must be one complete JSON object") from exc
            continue
        if not isinstance(d, dict):
            continue
        k = "bench" if "avg_ts" in d else "batched-bench-jsonl" if "n_kv" in d and "pl" in d else \
            "sweep-bench-jsonl" if "n_kv" in d else None
        if k is None:
            continue
        if kind is not None and k != kind:
            raise InputError("the file mixes JSON lines of different tools", where=f"{source}:{no}",
                             hint="keep one tool's output per file")
        kind = kind or k
        first = first or no
        d["__line__"] = no
        records.append(d)
    return (kind, records, first) if kind else None


def _csv(text: str, *, source: str) -> tuple[str, list[dict[str, Any]], int] | None:
    lines = text.splitlines()
    for no, line in enumerate(lines, 1):
        if "," not in line:
            continue
        header = [h.strip().strip('"') for h in next(csv.reader([line]))]
        low = [_norm(h) for h in header]
        if "avg_ts" in low and ("n_prompt" in low or "test" in low):
            kind = "bench"
        elif {"pp", "tg", "n_kv"} <= set(low) and any(h in low for h in ("speed_pp", "s_ppt/s", "s_pp")):
            kind = "sweep-bench-csv"
        else:
            continue
        body = "\n".join(lines[no - 1:])
        records = []
        for j, rec in enumerate(csv.DictReader(io.StringIO(body))):
            if not any((v or "").strip() for v in rec.values()):
                continue
            clean = {_csv_key(k): (v or "").strip() for k, v in rec.items() if k is not None}
            if None in rec:
                raise InputError(f"this row has more fields than the header ({len(header)})",
                                 where=f"{source}:{no + j + 1}", hint="paste the CSV as the tool wrote it")
            clean["__line__"] = no + j + 1
            records.append(clean)
        if not records:
            raise InputError("the CSV header has no rows under it", where=f"{source}:{no}", hint=_WHAT)
        return kind, records, no
    return None


def _csv_key(k: str) -> str:
    n = _norm(k.strip().strip('"'))
    return {"s_ppt/s": "speed_pp", "s_tgt/s": "speed_tg", "t_pps": "t_pp", "t_tgs": "t_tg",
            "s_pp": "speed_pp",
            "s_tg": "speed_tg"}.get(n, n)


def _num(rec: Mapping[str, Any], key: str, *, source: str, kind: type = float) -> Any:
    line = rec.get("__line__")
    where = f"{source}:{line}" if line else source
    if key not in rec:
        raise InputError(f"the record has no '{key}' field", where=where,
                         hint="pass the tool's output unchanged")
    value = rec[key]
    try:
        x = kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"'{key}' is {value!r}, not a number", where=where,
                         hint="pass the tool's output unchanged") from exc
    return x


def _sweep_records(records: list[dict[str, Any]], text: str, *, source: str, fmt: str, line: int,
                   keep_warmup: bool) -> ParsedTable:
    rows = []
    for d in records:
        pp = _num(d, "pp", source=source, kind=int)
        tg = _num(d, "tg", source=source, kind=int)
        s_pp = _num(d, "speed_pp" if "speed_pp" in d else "s_pp", source=source)
        s_tg = _num(d, "speed_tg" if "speed_tg" in d else "s_tg", source=source)
        rows.append(SweepRow(pp=pp, tg=tg, n_kv=_num(d, "n_kv", source=source, kind=int),
                             t_pp=_num(d, "t_pp", source=source) if "t_pp" in d else pp / s_pp,
                             s_pp=s_pp, t_tg=_num(d, "t_tg", source=source) if "t_tg" in d else tg / s_tg,
                             s_tg=s_tg))
    settings = knobs.from_text(text)
    first = records[0]
    for key, knob in (("n_kv_max", "c"), ("n_batch", "b"), ("n_ubatch", "ub"), ("flash_attn", "fa"),
                      ("n_gpu_layers", "ngl"), ("n_threads", "t"), ("n_threads_batch", "tb")):
        if key in first and str(first[key]).strip():
            settings[knob] = knobs.normalise(knob, first[key])
    runs = _split_repeats(rows)
    notes: list[str] = []
    if len(runs) > 1:
        notes.append(f"{len(runs)} runs: every N_KV appears {len(runs)} times")
    if not keep_warmup:
        runs, dropped = _drop_warmup(runs, fmt=fmt)
        notes += dropped
    return ParsedTable(source=source, format=fmt, runs=tuple(tuple(r) for r in runs), settings=settings,
                       build=stated_build(text), system_info=stated_system_info(text), notes=tuple(notes),
                       line=line)


def _raw_runs(records: list[dict[str, Any]], *, source: str, select: Mapping[str, str] | None) -> ParsedTable:
    """The raw runs ``quantforge sweep`` writes next to a result (``OUT.jsonl``: label, run, row)."""
    labels = list(dict.fromkeys(str(d["label"]) for d in records))
    want = (select or {}).get("label")
    if want is None and len(labels) > 1:
        raise InputError(f"the file holds the runs of {len(labels)} configurations ({', '.join(labels)})",
                         where=source, hint="pick one with --select label=NAME, or pass the result JSON")
    chosen = want if want is not None else labels[0]
    if chosen not in labels:
        raise InputError(f"--select label={chosen}: no such configuration", where=source,
                         hint=f"one of: {', '.join(labels)}")
    by_run: dict[int, list[SweepRow]] = {}
    for d in records:
        if str(d["label"]) != chosen:
            continue
        fields = {k: d.get(k) for k in ("pp", "tg", "n_kv", "t_pp", "s_pp", "t_tg", "s_tg")}
        try:
            row = SweepRow.model_validate(fields)
        except ValueError as exc:
            raise InputError(f"not a sweep row: {str(exc).splitlines()[0]}",
                             where=f"{source}:{d['__line__']}",
                             hint="pass the file quantforge wrote unchanged") from exc
        by_run.setdefault(int(d["run"]), []).append(row)
    runs = tuple(tuple(by_run[i]) for i in sorted(by_run))
    return ParsedTable(source=source, format="quantforge-jsonl", runs=runs,
                       notes=(f"{len(runs)} runs of {chosen}",), line=records[0]["__line__"])


def _split_repeats(rows: Sequence[SweepRow]) -> list[list[SweepRow]]:
    """Rows whose (N_KV, PP, TG) repeats are repetitions: the k-th occurrence belongs to run k."""
    seen: dict[tuple[int, int, int], int] = {}
    runs: list[list[SweepRow]] = []
    for r in rows:
        k = (r.n_kv, r.pp, r.tg)
        i = seen.get(k, 0)
        seen[k] = i + 1
        while len(runs) <= i:
            runs.append([])
        runs[i].append(r)
    return runs


# ---------------------------------------------------------------- llama-bench


@dataclass
class _BenchTest:
    kind: str  # pp | tg
    n: int
    depth: int
    avg: float
    std: float | None
    samples: tuple[float, ...]
    config: dict[str, str]
    line: int | None
    table: int = 1  # which table of the paste (a new header, or a "build:" line, starts the next)


def _test_kind(test: str, n_prompt: int = 0, n_gen: int = 0) -> tuple[str, int, int] | None:
    m = _TEST.match(test.strip())
    if m:
        kind, n = m.group(1).lower(), int(m.group(2))
        if kind == "pg" or m.group(3):
            return None  # prompt + generation in one number: not a PP or a TG speed
        return kind, n, int(m.group(4) or 0)
    if n_prompt and not n_gen:
        return "pp", n_prompt, 0
    if n_gen and not n_prompt:
        return "tg", n_gen, 0
    return None


_RESULT_KEYS = frozenset({"avg_ts", "stddev_ts", "avg_ns", "stddev_ns", "samples_ts", "samples_ns",
                          "test_time",
                          "test", "n_prompt", "n_gen", "n_depth", "__line__", "t/s"})


def _bench_records(records: list[dict[str, Any]], text: str, *, source: str, fmt: str,
                   select: Mapping[str, str] | None, keep_warmup: bool) -> ParsedTable:
    tests: list[_BenchTest] = []
    skipped = 0
    for d in records:
        n_prompt = int(float(d.get("n_prompt", 0) or 0))
        n_gen = int(float(d.get("n_gen", 0) or 0))
        depth = int(float(d.get("n_depth", 0) or 0))
        kind = _test_kind(str(d.get("test") or ""), n_prompt, n_gen)
        if kind is None:
            skipped += 1
            continue
        avg = _num(d, "avg_ts", source=source)
        std = _num(d, "stddev_ts", source=source) if str(d.get("stddev_ts", "")).strip() else None
        samples = d.get("samples_ts") or ()
        if isinstance(samples, str):
            samples = [float(x) for x in re.findall(_NUM, samples)]
        config = {k: _cell(v) for k, v in d.items() if k not in _RESULT_KEYS}
        build = config.pop("build_commit", None)
        number = config.pop("build_number", None)
        if build is not None:
            config["build"] = f"{build} ({number})" if number is not None else build
        tests.append(_BenchTest(kind=kind[0], n=kind[1], depth=depth or kind[2], avg=avg, std=std,
                                samples=tuple(float(x) for x in samples), config=config,
                                line=d.get("__line__")))
    return _bench_result(tests, text, source=source, fmt=fmt, select=select, keep_warmup=keep_warmup,
                         skipped=skipped)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


_IDENTITY = ("build", "model_type", "model", "model_filename", "size", "model_size", "params",
             "model_n_params",
             "backend", "backends", "cpu_info", "gpu_info")


def _bench_result(tests: list[_BenchTest], text: str, *, source: str, fmt: str,
                  select: Mapping[str, str] | None,
                  keep_warmup: bool, skipped: int) -> ParsedTable:
    if not tests:
        raise InputError("the llama-bench output has no pp/tg tests", where=source, hint=_WHAT)
    select = dict(select or {})
    want_table = select.pop("table", None)
    if want_table is not None:
        n_tables = max(t.table for t in tests)
        if not want_table.isdigit() or not 1 <= int(want_table) <= n_tables:
            raise InputError(f"--select table={want_table}: the output holds {n_tables} table"
                             f"{'s' if n_tables > 1 else ''}", where=source,
                             hint=f"use table=1 … table={n_tables}")
        tests = [t for t in tests if t.table == int(want_table)]
    configs: dict[tuple[tuple[str, str], ...], list[_BenchTest]] = {}
    for t in tests:
        configs.setdefault(tuple(sorted(t.config.items())), []).append(t)
    if select:
        chosen = {k: v for k, v in configs.items() if _selected(dict(k), select)}
        if not chosen:
            raise InputError(f"no llama-bench result matches --select {_sel_text(select)}", where=source,
                             hint=f"the output holds: {_describe(configs)}")
        configs = chosen
    if len(configs) > 1:
        keys = list(configs)
        varying = _varying(keys)
        line = configs[keys[1]][0].line
        raise InputError(f"the llama-bench output holds {len(keys)} configurations ({_describe(configs)})",
                         where=f"{source}:{line}" if line else source,
                         hint=f"pick one with --select {varying[0]}=VALUE, or split the file")
    (config_key, group), = configs.items()
    config = dict(config_key)
    seen: dict[tuple[str, int, int], _BenchTest] = {}
    for t in group:
        key = (t.kind, t.n, t.depth)
        if key in seen:
            raise InputError(f"{_test_name(t)} appears twice with the same settings (lines "
                             f"{seen[key].line} and "
                             f"{t.line})", where=f"{source}:{t.line}",
                             hint="pick one table with --select table=N, or split the file")
        seen[key] = t
    notes: list[str] = []
    if skipped:
        notes.append(f"{skipped} prompt+generation (pg) test(s) ignored: they are neither a PP nor a "
                     "TG speed")
    # samples -> runs; the first sample of a test is dropped when it is a warm-up outlier
    n_samples = {len(t.samples) for t in group}
    runs: list[list[SweepRow]] = []
    spread: list[ReportedSpread] = []
    if all(len(t.samples) >= 2 for t in group) and len(n_samples) == 1:
        samples = {id(t): list(t.samples) for t in group}
        if not keep_warmup:
            cold = [t for t in group if first_sample_outlier(t.samples)]
            if cold:
                for t in group:
                    samples[id(t)] = samples[id(t)][1:]
                notes.append("warm-up outlier dropped: the first repetition of "
                             + ", ".join(f"{_test_name(t)} ({t.samples[0]:.2f} t/s vs median "
                                         f"{float(np.median(t.samples[1:])):.2f})" for t in cold)
                             + "; the first repetition of every test was dropped so runs stay aligned")
        n = len(next(iter(samples.values())))
        for i in range(n):
            runs.append(_bench_rows([(t, samples[id(t)][i]) for t in group]))
        notes.append(f"{n} runs: llama-bench's repetitions of each test")
    else:
        runs.append(_bench_rows([(t, t.avg) for t in group]))
        reps = _BENCH_REPS.search(text)
        n_reps = int(reps.group(1)) if reps else BENCH_DEFAULT_REPS
        for t in group:
            if t.std is None:
                continue
            row = _bench_key(t, group)
            spread.append(ReportedSpread(n_kv=row[0], pp=row[1], tg=row[2],
                                         metric=t.kind,  # type: ignore[arg-type]
                                         mean=t.avg, std=t.std, n=n_reps, n_assumed=reps is None))
        if spread:
            notes.append(f"llama-bench printed mean ± sd of {n_reps} repetitions"
                         + ("" if reps else f" (not stated: llama-bench's default -r {BENCH_DEFAULT_REPS} "
                                            "assumed)"))
    settings = knobs.from_bench_fields(config)
    cmd_settings = knobs.from_text(text)
    for k, v in cmd_settings.items():
        settings.setdefault(k, v)
    for k in ("model_type", "model"):
        if k in config:
            settings.setdefault("model", config[k])
            break
    build = config.get("build") or stated_build(text)
    sysinfo = stated_system_info(text) or " | ".join(config[k] for k in ("cpu_info", "gpu_info", "backends",
                                                                         "backend")
                                                      if config.get(k)) or None
    return ParsedTable(source=source, format=fmt, runs=tuple(tuple(r) for r in runs), spread=tuple(spread),
                       settings=settings, build=build, system_info=sysinfo, notes=tuple(notes),
                       line=group[0].line)


def _test_name(t: _BenchTest) -> str:
    return f"{t.kind}{t.n}" + (f" @ d{t.depth}" if t.depth else "")


def _bench_key(t: _BenchTest, group: Sequence[_BenchTest]) -> tuple[int, int, int]:
    at_depth = [g for g in group if g.depth == t.depth]
    pps = {g.n for g in at_depth if g.kind == "pp"}
    tgs = {g.n for g in at_depth if g.kind == "tg"}
    if len(pps) <= 1 and len(tgs) <= 1:
        return (t.depth, next(iter(pps), 0), next(iter(tgs), 0))
    return (t.depth, t.n if t.kind == "pp" else 0, t.n if t.kind == "tg" else 0)


def _bench_rows(values: Sequence[tuple[_BenchTest, float]]) -> list[SweepRow]:
    """llama-bench tests to sweep rows: ``ppN @ dD`` and ``tgM @ dD`` share a row when they are the only ones
    at D."""
    group = [t for t, _ in values]
    rows: dict[tuple[int, int, int], dict[str, float]] = {}
    for t, v in values:
        rows.setdefault(_bench_key(t, group), {})[t.kind] = v
    out = []
    for (depth, pp, tg), d in sorted(rows.items()):
        s_pp, s_tg = d.get("pp"), d.get("tg")
        out.append(SweepRow(pp=pp, tg=tg, n_kv=depth, t_pp=pp / s_pp if s_pp else None, s_pp=s_pp,
                            t_tg=tg / s_tg if s_tg else None, s_tg=s_tg))
    return out


def _selected(config: Mapping[str, str], select: Mapping[str, str]) -> bool:
    for key, want in select.items():
        names = [key] + [k for k, knob in knobs.BENCH_FIELDS.items() if knob == key]
        found = [config[n] for n in names if n in config]
        if not found:
            return False
        v = found[0]
        if key == "build" or key.startswith("model"):
            if want not in v:
                return False
        elif knobs.normalise(knobs.BENCH_FIELDS.get(key, key),
                             v) != knobs.normalise(knobs.BENCH_FIELDS.get(key, key), want):
            return False
    return True


def _sel_text(select: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in select.items())


def _varying(keys: Sequence[tuple[tuple[str, str], ...]]) -> list[str]:
    cols = sorted({k for key in keys for k, _ in key})
    return [c for c in cols if len({dict(key).get(c) for key in keys}) > 1]


def _describe(configs: Mapping[tuple[tuple[str, str], ...], list[_BenchTest]]) -> str:
    keys = list(configs)
    varying = _varying(keys) or ["build"]
    return "; ".join(", ".join(f"{k}={dict(key).get(k, '-')}" for k in varying) for key in keys)


# ---------------------------------------------------------------- text tables (sweep-bench, batched-bench,
# llama-bench md)


def _cells(line: str) -> list[str]:
    s = line.strip()
    if "|" in s:
        return [c.strip() for c in s.strip("|").split("|")]
    if "\t" in s:
        return [c.strip() for c in s.split("\t") if c.strip()]
    return s.split()


def _is_sep(cells: Sequence[str]) -> bool:
    return bool(cells) and all(c and set(c) <= set("-:") for c in cells)


def _numeric(cells: Sequence[str]) -> bool:
    return bool(cells) and all(re.fullmatch(_NUM, c) or c.lower() == "n/a" for c in cells)


def _header(line: str) -> tuple[str, tuple[str, ...]] | None:
    norm = _norm(line.replace("|", " "))
    hit = _SIGNATURES.get(norm)
    if hit:
        return hit
    cells = _cells(line)
    low = [c.lower() for c in cells]
    if "test" in low and "t/s" in low:
        return "llama-bench", tuple(cells)
    return None


@dataclass
class _Block:
    kind: str  # sweep-bench | batched-bench
    columns: tuple[str, ...]
    header_line: int | None
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    start: int = 0  # line index where the block's context begins (after the previous block)


_NOISE = re.compile(r"^\s*(?:=+|-{3,}|`{3}.*|#.*|\.\.\.)?\s*$")


def _text_tables(text: str, *, source: str, select: Mapping[str, str] | None,
                 keep_warmup: bool) -> ParsedTable:
    lines = text.splitlines()
    blocks: list[_Block] = []
    bench_lines: list[tuple[int, list[str]]] = []
    bench_builds: list[tuple[int, str]] = []
    cur: _Block | None = None
    prev_end = 0
    for idx, line in enumerate(lines):
        no = idx + 1
        if not line.strip():
            continue
        hdr = _header(line)
        if hdr and hdr[0] == "llama-bench":
            bench_lines.append((no, ["__header__", *hdr[1]]))
            cur = None
            continue
        if hdr:
            cur = _Block(kind=hdr[0], columns=hdr[1], header_line=no, start=prev_end)
            blocks.append(cur)
            continue
        bm = re.match(r"^\s*build:\s*(.+?)\s*$", line)
        if bm:
            bench_builds.append((no, bm.group(1)))
            continue
        cells = _cells(line)
        if _is_sep(cells):
            continue
        if "|" in line and any(_PM.match(c) for c in cells[-1:]) and any(_TEST.match(c) for c in cells):
            bench_lines.append((no, cells))
            continue
        if cur is not None and ("|" in line or "\t" in line or _numeric(cells)):
            if len(cells) != len(cur.columns):
                if _numeric(cells) or "|" in line:
                    raise InputError(
                        f"this row has {len(cells)} cells, the table header (line {cur.header_line}) has "
                        f"{len(cur.columns)}: {' | '.join(cur.columns)}" if cur.header_line else
                        f"this row has {len(cells)} cells, the rows above have {len(cur.columns)}",
                        where=f"{source}:{no}",
                        hint="paste the table as the tool printed it, one row per line")
            else:
                cur.rows.append((no, cells))
                prev_end = idx + 1
                continue
        if cur is None and _numeric(cells) and len(cells) in (7, 9, 10) and ("|" in line or "\t" in line
                                                                            or len(cells) == 7):
            cols = {7: SWEEP_COLUMNS, 9: SWEEP_MEMORY_COLUMNS, 10: BATCHED_COLUMNS}[len(cells)]
            kind = "batched-bench" if len(cells) == 10 else "sweep-bench"
            cur = _Block(kind=kind, columns=cols, header_line=None, start=prev_end)
            cur.rows.append((no, cells))
            blocks.append(cur)
            prev_end = idx + 1
            continue
        if cur is not None and cur.rows and not _NOISE.match(line):
            cur = None  # text after the rows ends the table
    if bench_lines and not blocks:
        return _bench_markdown(bench_lines, bench_builds, text, source=source, select=select,
                               keep_warmup=keep_warmup)
    blocks = [b for b in blocks if b.rows]
    if not blocks:
        raise InputError("no speed table found", where=source, hint=_WHAT)
    want = (select or {}).get("table")
    extra = sorted(set(select or {}) - {"table"})
    if extra:
        raise InputError(f"--select {extra[0]}: a {blocks[0].kind} table has no such column", where=source,
                         hint="only table=N (or table=all) selects among sweep tables")
    single = len(blocks) == 1
    if len(blocks) > 1 or want is not None:
        starts = [b.header_line or b.rows[0][0] for b in blocks]
        if want is None:
            raise InputError(f"the file holds {len(blocks)} tables (lines {', '.join(map(str, starts))})",
                             where=f"{source}:{starts[1]}",
                             hint="pick one with --select table=N, or read them as repeated runs of one "
                                  "configuration with --select table=all")
        if want != "all":
            if not want.isdigit() or not 1 <= int(want) <= len(blocks):
                raise InputError(f"--select table={want}: the file holds {len(blocks)} table"
                                 f"{'s' if len(blocks) > 1 else ''}", where=source,
                                 hint=f"use table=1 … table={len(blocks)} or table=all")
            blocks = [blocks[int(want) - 1]]
    kinds = {b.kind for b in blocks}
    if len(kinds) > 1:
        raise InputError(f"the file holds tables of different tools ({', '.join(sorted(kinds))})",
                         where=f"{source}:{blocks[1].rows[0][0]}", hint="keep one configuration per file")
    return _sweep_blocks(blocks, lines, text, source=source, keep_warmup=keep_warmup, single=single)


def _parse_row(block: _Block, no: int, cells: Sequence[str], *, source: str) -> SweepRow:
    vals: dict[str, float] = {}
    for col, cell in zip(block.columns, cells, strict=True):
        if col in ("RSS HWM", "VRAM delta"):
            continue
        try:
            vals[col] = float(cell)
        except ValueError:
            raise InputError(f"{col} is {cell!r}, not a number", where=f"{source}:{no}",
                             hint="paste the table as the tool printed it") from None
    for col in ("PP", "TG", "N_KV"):
        if not float(vals[col]).is_integer():
            raise InputError(f"{col} is {vals[col]}, not a whole number of tokens", where=f"{source}:{no}",
                             hint="the columns are PP | TG | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s")
    return SweepRow(pp=int(vals["PP"]), tg=int(vals["TG"]), n_kv=int(vals["N_KV"]), t_pp=vals["T_PP s"],
                    s_pp=vals["S_PP t/s"], t_tg=vals["T_TG s"], s_tg=vals["S_TG t/s"])


def _sweep_blocks(blocks: list[_Block], lines: list[str], text: str, *, source: str, keep_warmup: bool,
                  single: bool = True) -> ParsedTable:
    runs: list[list[SweepRow]] = []
    block_settings: list[tuple[int, dict[str, str]]] = []
    sizes: list[tuple[int, tuple[int, int]]] = []
    for b in blocks:
        rows = [_parse_row(b, no, cells, source=source) for no, cells in b.rows]
        first_line = b.header_line or b.rows[0][0]
        context = "\n".join(lines[b.start:first_line])
        block_settings.append((first_line, knobs.from_text(context)))
        sizes.append((first_line, (rows[0].pp, rows[0].tg)))
        runs += _split_repeats(rows)
    if len({s for _, s in sizes}) > 1:
        (l1, s1), (l2, s2) = sizes[0], next(x for x in sizes if x[1] != sizes[0][1])
        raise InputError(f"the file holds tables of different PP/TG sizes (line {l1}: PP {s1[0]} TG {s1[1]}; "
                         f"line {l2}: PP {s2[0]} TG {s2[1]})", where=f"{source}:{l2}",
                         hint="one configuration per file: split the tables into two files and compare them")
    stated = [(ln, s) for ln, s in block_settings if s]
    for ln, s in stated[1:]:
        diff = knobs.differences(stated[0][1], s)
        if diff:
            d = diff[0]
            raise InputError(f"the file holds tables of different settings (line {stated[0][0]}: {d.knob} "
                             f"{d.baseline}; "
                             f"line {ln}: {d.knob} {d.candidate})", where=f"{source}:{ln}",
                             hint="one configuration per file: split the tables into two files and "
                                  "compare them")
    # the whole text when it holds one table; else what precedes the (first) chosen table
    settings = knobs.from_text(text) if single else dict(block_settings[0][1])
    notes: list[str] = []
    if len(runs) > 1:
        notes.append(f"{len(runs)} runs: " + (f"{len(blocks)} tables" if len(blocks) > 1 else
                                               "every N_KV appears more than once"))
    if blocks[0].header_line is None:
        notes.append("no header line: columns read as " + " | ".join(blocks[0].columns))
    if not keep_warmup:
        runs, dropped = _drop_warmup(runs, fmt=blocks[0].kind)
        notes += dropped
    return ParsedTable(source=source, format=blocks[0].kind, runs=tuple(tuple(r) for r in runs),
                       settings=settings,
                       build=stated_build(text), system_info=stated_system_info(text), notes=tuple(notes),
                       line=blocks[0].header_line or blocks[0].rows[0][0])


def _bench_markdown(entries: list[tuple[int, list[str]]], builds: list[tuple[int, str]], text: str, *,
                    source: str,
                    select: Mapping[str, str] | None, keep_warmup: bool) -> ParsedTable:
    """llama-bench ``-o md`` rows (header optional; log lines between rows and several tables allowed)."""
    headers = [cells[1:] for _, cells in entries if cells[0] == "__header__"]
    tests: list[_BenchTest] = []
    skipped = 0
    header: list[str] | None = None
    table, rows_in_table = 1, 0
    build_lines = [ln for ln, _ in builds]
    last = 0
    for no, cells in entries:
        if rows_in_table and any(last < ln < no for ln in build_lines):
            table, rows_in_table = table + 1, 0  # a "build:" line ended the previous table
        last = no
        if cells[0] == "__header__":
            if rows_in_table:
                table, rows_in_table = table + 1, 0
            header = cells[1:]
            continue
        rows_in_table += 1
        cols = header if header is not None and len(header) == len(cells) else next(
            (h for h in headers if len(h) == len(cells)), None)
        if cols is None:
            cols = [f"col{i + 1}" for i in range(len(cells))]
            ti = next(i for i, c in enumerate(cells) if _TEST.match(c))
            cols[ti] = "test"
            cols[-1] = "t/s"
            cols[0] = "model"
        row = dict(zip(cols, cells, strict=True))
        m = _PM.match(row.get("t/s", ""))
        if not m:
            raise InputError(f"t/s is {row.get('t/s')!r}, not 'mean ± sd'", where=f"{source}:{no}",
                             hint="paste the llama-bench table as printed")
        kind = _test_kind(row.get("test", ""))
        if kind is None:
            skipped += 1
            continue
        build = next((b for ln, b in builds if ln > no), None)
        config = {k: v for k, v in row.items() if k not in ("test", "t/s")}
        if build:
            config["build"] = build
        tests.append(_BenchTest(kind=kind[0], n=kind[1], depth=kind[2], avg=float(m.group(1)),
                                std=float(m.group(2)),
                                samples=(), config=config, line=no, table=table))
    return _bench_result(tests, text, source=source, fmt="llama-bench-md", select=select,
                         keep_warmup=keep_warmup,
                         skipped=skipped)
