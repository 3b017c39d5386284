"""Speed sweeps: ik ``llama-sweep-bench``, mainline ``llama-bench -d``, or the bundled CPU sweep, repeated.

Each configuration is run ``repeat`` times; raw rows go to a JSONL file (one line per row,
with the run index), the result (raw runs + mean ± sd per N_KV row) to JSON. Two
configurations can be run interleaved (A B A B …) so slow drifts of the machine (thermal,
other load) hit both alike, after ``warmup`` discarded runs of each (the first run after a
build or a model change pays for cold page cache and lazy initialisation). A result keeps what
the tool said about itself: its settings, version/commit and system_info line.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import EvalError, InputError, ToolError
from quantforge.evaluate import _util, knobs
from quantforge.evaluate.bundled import sweep_bundled
from quantforge.evaluate.models import EvalEngine, SweepResult, SweepRow, VaryPoint, VaryReport
from quantforge.evaluate.stats import summarize
from quantforge.evaluate.tables import read_table
from quantforge.fsutil import atomic_write_text
from quantforge.lock import folder_lock
from quantforge.manifest import Manifest, read_manifest, update_manifest
from quantforge.paths import MAX_JSON_BYTES, read_input_bytes, read_input_text


@dataclass(frozen=True)
class RunOutput:
    """One invocation of a sweep: its run(s) (llama-bench ``-r N`` gives N) and what the tool stated."""

    runs: tuple[tuple[SweepRow, ...], ...]
    settings: dict[str, str] = field(default_factory=dict)
    build: str | None = None
    system_info: str | None = None
    notes: tuple[str, ...] = ()
    format: str | None = None


Runner = Callable[[], "tuple[SweepRow, ...] | RunOutput"]


def bundled_runner(model: str | Path, *, ctx: int = 512, ubatch: int = 128, tg: int = 16,
                   threads: int | None = None, flash_attn: bool = True) -> Runner:
    _util.check_model_file(model)
    if ctx < ubatch or ubatch < 1 or tg < 1:
        raise InputError(f"impossible sweep: ctx {ctx}, ubatch {ubatch}, tg {tg}",
                         hint="need ctx >= ubatch >= 1 and tg >= 1")
    counter = {"i": 0}

    def run() -> tuple[SweepRow, ...]:
        counter["i"] += 1
        return sweep_bundled(model, ctx=ctx, ubatch=ubatch, tg=tg, threads=threads, seed=counter["i"],
                             flash_attn=flash_attn)

    return run


def binary_runner(cmd: Sequence[str], *, timeout: float | None = None, keep_warmup: bool = False) -> Runner:
    """Run a ``llama-sweep-bench`` / ``llama-bench`` / ``llama-batched-bench`` command line and read its
    table."""
    if not cmd:
        raise InputError("empty sweep command")
    exe = Path(cmd[0])
    if not (exe.is_file() or _which(cmd[0])):
        raise ToolError(f"{cmd[0]} not found", where="sweep command",
                        hint="build llama-sweep-bench / llama-bench or pass its path")
    stated = knobs.from_command(list(cmd))

    def run() -> RunOutput:
        out, _ = _util.tool_output(list(cmd), where=" ".join(cmd[:3]), timeout=timeout)
        try:
            table = read_table(out, source=f"{exe.name} output", keep_warmup=keep_warmup)
        except InputError as exc:  # the tool printed something we cannot read: a runtime failure
            raise EvalError(exc.message, where=exc.where, hint=exc.hint) from exc
        settings = {**table.settings, **stated}
        return RunOutput(runs=table.runs, settings=settings, build=table.build, system_info=table.system_info,
                         notes=table.notes, format=table.format)

    return run


def _which(name: str) -> str | None:
    return shutil.which(name)


def _as_output(value: tuple[SweepRow, ...] | RunOutput) -> RunOutput:
    return value if isinstance(value, RunOutput) else RunOutput(runs=(tuple(value),))


def run_sweeps(
    configs: Sequence[tuple[str, Runner]], *, repeat: int = 3, interleave: bool = True,
    meta: Sequence[Mapping[str, object]] | None = None, raw_jsonl: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None, warmup: int = 0,
) -> list[SweepResult]:
    """Run each (label, runner) ``repeat`` times, interleaved and counterbalanced (A B, B A, A B …)
    by default, so that a drift of the machine (warming up, another job starting) does not favour
    the configuration that always runs first; one SweepResult each. ``warmup`` runs of each
    configuration come first and are discarded."""
    if repeat < 1:
        raise InputError(f"--repeat must be at least 1, not {repeat}", where="--repeat")
    if warmup < 0:
        raise InputError(f"--warmup must not be negative, not {warmup}", where="--warmup")
    outputs: list[list[RunOutput]] = [[] for _ in configs]
    n = len(configs)
    order = ([(r, i if r % 2 == 0 else n - 1 - i) for r in range(repeat) for i in range(n)] if interleave
             else [(r, i) for i in range(n) for r in range(repeat)])
    total = warmup * n + len(order)
    k = 0
    for _ in range(warmup):
        for label, runner in configs:
            k += 1
            if progress:
                progress(f"{label} (warm-up, discarded)", k, total)
            runner()
    for _rep, i in order:
        label, runner = configs[i]
        k += 1
        if progress:
            progress(label, k, total)
        outputs[i].append(_as_output(runner()))
    created = _util.now_iso()
    results = []
    for i, (label, _) in enumerate(configs):
        m: dict[str, object] = dict(meta[i]) if meta else {}
        outs = outputs[i]
        runs = tuple(run for o in outs for run in o.runs)
        first = runs[0]
        notes = tuple(dict.fromkeys(note for o in outs for note in o.notes))
        if warmup:
            notes = (f"{warmup} warm-up run{'s' if warmup > 1 else ''} discarded", *notes)
        extra_settings = m.pop("settings", None) or {}
        assert isinstance(extra_settings, Mapping)
        builds = {o.build for o in outs if o.build}
        # What the caller states about a configuration wins over what the runs show; the model
        # validates the caller's fields (they are SweepResult's own).
        data: dict[str, object] = {
            "engine": "bundled", "ctx": first[-1].n_kv + first[-1].pp, "ubatch": first[0].pp,
            "tg": first[0].tg, **m, "label": label, "runs": runs, "summary": summarize(runs),
            "created": created, "raw_jsonl": str(raw_jsonl) if raw_jsonl else None,
            "settings": {**outs[0].settings, **extra_settings}, "notes": notes,
        }  # fmt: skip
        fallbacks = {"build": builds.pop() if len(builds) == 1 else None, "system_info": outs[0].system_info,
                     "source_format": outs[0].format}  # fmt: skip
        for key, value in fallbacks.items():
            data[key] = data.get(key) or value
        results.append(SweepResult.model_validate(data))
    if raw_jsonl is not None:
        write_raw_jsonl(raw_jsonl, results)
    return results


def write_raw_jsonl(path: str | Path, results: Sequence[SweepResult]) -> Path:
    """One JSON line per (config, run, row): every raw measurement, for later re-analysis."""
    lines = [json.dumps({"label": res.label, "run": i, **row.model_dump()}) + "\n"
             for res in results for i, run in enumerate(res.runs) for row in run]
    return atomic_write_text(Path(path), "".join(lines), what="sweep runs file")


def read_raw_jsonl(path: str | Path) -> dict[str, list[list[SweepRow]]]:
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
            raise InputError("not a sweep run record: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             where=f"{path}:{n}",
                             hint="give the .jsonl written by quantforge sweep") from None
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def save_result(result: SweepResult, path: str | Path, *, force: bool = True) -> Path:
    p = Path(path)
    if p.exists() and not force:
        raise InputError("output exists", where=str(p), hint="pass --force to overwrite")
    return atomic_write_text(p, result.model_dump_json(indent=2), what="sweep result")


def load_result(path: str | Path, *, select: dict[str, str] | None = None,
                keep_warmup: bool = False) -> SweepResult:
    """A stored sweep result (JSON from ``quantforge sweep``) or any speed table a tool printed or a user
    pasted."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("sweep result not found", where=str(p),
                         hint="pass a JSON written by 'quantforge sweep' or a sweep-bench log")

    raw = read_input_bytes(p, what="sweep result", max_bytes=MAX_JSON_BYTES)
    if b"\0" in raw[:4096]:
        raise InputError("not a text file", where=str(p),
                         hint="pass a sweep result JSON or a tool log (text)")
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith("{") and ('"runs"' in text[:2000] or '"summary"' in text):
        try:
            return SweepResult.model_validate_json(text)
        except ValueError as exc:
            raise InputError(f"not a quantforge sweep result: {str(exc).splitlines()[0]}",
                             where=str(p)) from exc
    table = read_table(text, source=str(p), select=select, keep_warmup=keep_warmup)
    first = table.runs[0]
    if not first:
        raise InputError("the table has no rows left after dropping its warm-up row", where=str(p),
                         hint="pass --keep-warmup to keep it")
    engine: EvalEngine = "ik" if table.format.startswith("sweep-bench") else "mainline"
    settings = table.settings
    ub = int(settings["ub"]) if settings.get("ub", "").isdigit() else max(r.pp for r in first)
    ctx = int(settings["c"]) if settings.get("c", "").isdigit() else first[-1].n_kv + first[-1].pp
    return SweepResult(label=p.stem, engine=engine, ctx=ctx, ubatch=ub, tg=max(r.tg for r in first),
                       runs=table.runs, summary=summarize(table.runs), created=_util.now_iso(),
                       source_format=table.format, settings=settings, build=table.build,
                       system_info=table.system_info, spread=table.spread, notes=table.notes,
                       threads=int(settings["t"]) if settings.get("t", "").isdigit() else None)


def parse_select(items: Sequence[str]) -> dict[str, str]:
    """``--select build=1ec12b8e --select n_batch=128`` -> a dict (column or knob names)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise InputError(f"expected COLUMN=VALUE, got {item!r}", where="--select",
                             hint="e.g. --select n_batch=128 or --select build=1ec12b8e")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- one knob, several values

#: knob -> the bundled sweep's parameter it sets
_BUNDLED_KNOBS = {"ub": "ubatch", "t": "threads", "c": "ctx", "fa": "flash_attn", "tg": "tg", "n": "tg"}


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``ub=512,1024,2048`` -> ("ub", ["512", "1024", "2048"]) (the knob as a flag or a canonical name)."""
    key, eq, values = text.partition("=")
    knob = key.strip().lstrip("-")
    knob = knobs.FLAG_KNOB.get(f"-{knob}", knobs.FLAG_KNOB.get(f"--{knob}", knob))
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not knob or len(vals) < 2:
        raise InputError(f"expected KNOB=V1,V2,…, got {text!r}", where="--vary",
                         hint="e.g. --vary ub=512,1024,2048,4096 or --vary rtr=off,on")
    if len(set(vals)) != len(vals):
        raise InputError(f"--vary repeats a value: {text!r}", where="--vary")
    return knob, vals


def with_knob(argv: Sequence[str], knob: str, value: str) -> list[str]:
    """``argv`` with one knob set to ``value`` (switches: on adds the flag, off removes it)."""
    flags = knobs.flags_of(knob)
    if not flags:
        raise InputError(f"unknown knob {knob!r}", where="--vary",
                         hint="one of " + ", ".join(k for k in knobs.KNOB_ORDER if knobs.flags_of(k)))
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0] if a.startswith("--") else a
        if name in flags:
            if knob in knobs.SWITCHES or (knob == "fa" and (i + 1 >= len(argv) or argv[i + 1].lower() not in
                                                             knobs.FA_VALUES)):
                i += 1
            else:
                i += 1 if "=" in a else 2
            continue
        out.append(a)
        i += 1
    norm = knobs.normalise(knob, value)
    if knob in knobs.SWITCHES:
        if norm == "on":
            out.append(flags[0])
        elif norm != "off":
            raise InputError(f"{knob} is a switch: use on or off, not {value!r}", where="--vary")
        return out
    return [*out, flags[0], value]


def bundled_vary_options(knob: str, value: str) -> dict[str, Any]:
    """The bundled sweep's keyword for one knob value (``ub=256`` -> ``{"ubatch": 256}``)."""
    param = _BUNDLED_KNOBS.get(knob)
    if param is None:
        raise InputError(f"the bundled sweep cannot vary {knob!r}", where="--vary",
                         hint="vary ub, t, c, fa or tg, or sweep a command with --cmd")
    if param == "flash_attn":
        return {param: knobs.normalise("fa", value) == "on"}
    try:
        return {param: int(value)}
    except ValueError:
        raise InputError(f"{knob} must be a whole number, not {value!r}", where="--vary") from None


def vary_report(knob: str, values: Sequence[str], results: Sequence[SweepResult]) -> VaryReport:
    """PP and TG at each value of a knob (geometric mean over each run's rows; mean ± sd across runs)."""
    import numpy as np  # startup

    points = []
    for value, res in zip(values, results, strict=True):
        stats: dict[str, float | None] = {}
        for metric in ("pp", "tg"):
            per_run = []
            for run in res.runs:
                vals = [v for r in run if (v := getattr(r, f"s_{metric}")) is not None and v > 0]
                if vals:
                    per_run.append(float(np.exp(np.mean(np.log(vals)))))
            stats[f"{metric}_mean"] = float(np.mean(per_run)) if per_run else None
            stats[f"{metric}_std"] = float(np.std(per_run, ddof=1)) if len(per_run) > 1 else None
        points.append(VaryPoint(value=value, label=res.label, runs=len(res.runs),
                                rows=len(res.runs[0]) if res.runs else 0, **stats))

    def best(metric: str) -> str | None:
        cands = [(getattr(p, f"{metric}_mean"),
                  p.value) for p in points if getattr(p, f"{metric}_mean") is not None]
        return max(cands)[1] if cands else None

    return VaryReport(knob=knob, values=tuple(values), points=tuple(points), results=tuple(results),
                      best_pp=best("pp"), best_tg=best("tg"))


def parse_option_set(text: str) -> dict[str, Any]:
    """``threads=1,ubatch=128`` → dict for the bundled runner (ints where they look like ints)."""
    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise InputError(f"expected key=value, got {part!r}", where="--a/--b",
                             hint="e.g. --a threads=1 --b threads=2")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in ("threads", "ubatch", "ctx", "tg", "flash_attn", "model"):
            raise InputError(f"unknown option {k!r}", where="--a/--b",
                             hint="threads, ubatch, ctx, tg, flash_attn, model")
        out[k] = (v.lower() in ("1", "true", "on",
                                "yes")) if k == "flash_attn" else (int(v) if k != "model" else v)
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
        has_value = nxt is not None and not (nxt.startswith("-")
                                             and not nxt.lstrip("-").replace(".", "").isdigit())
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
    out = [binary, "-m", opts.get("-m", str(model)), "-p", str(ub), "-n", str(tg or max(ub // 4, 1)), "-d",
           depths,
           "-ub", str(ub), "-o", "json", "-r", "1"]
    for k in ("-b", "-t", "-ngl", "-ctk", "-ctv", "-ts"):
        if k in opts:
            out += [k, opts[k]]
    if "-fa" in opts:
        out += ["-fa", "1" if opts["-fa"] in ("on", "1", "") else "0"]
    for o in ot:
        out += ["-ot", o]
    return out


def record_sweep(manifest: str | Path, result: SweepResult, *, wait: bool = False) -> Manifest:
    """Add ``result`` to the variant's manifest ``sweeps`` section, under ``<engine>:<label>`` (and
    ``@<rig>`` when a cluster's rig ran it; a rerun of the same key replaces it). The
    read-modify-write holds the folder's lock, like ``record_in_manifest``."""
    key = f"{result.engine}:{result.label}" + (f"@{result.node['rig']}" if result.node else "")
    with folder_lock(Path(manifest).parent, purpose="quantforge sweep", wait=wait):
        sweeps = dict(read_manifest(manifest).sweeps or {})
        sweeps[key] = result.model_dump(mode="json")
        return update_manifest(manifest, sweeps=sweeps)
