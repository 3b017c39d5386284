"""``quantforge sensitivity``: measure each group's KLD cost at each candidate type with the real engine.

Every run is a real variant: the base variant with one group's tensors at one type (one rule in
front of the base's rules), quantized by the build stage (``llama-quantize``, verified against its
plan) and measured by the evaluate stage's KLD against the F16/BF16 base's cached logits. A run's
result is written to the cache the moment it is measured (``CACHE_DIR/sensitivity/<method>/``,
keyed by the exact quantize arguments), so Ctrl-C, a crash or SIGKILL loses at most the runs in
flight and the same command resumes. With the bundled evaluator and ``jobs`` > 1 the next variant is
quantized while the previous ones are measured (threads split between them).

The additive model (``baseline + sum of the group deltas``) is checked by measuring every group at
once at each candidate rank (``all@rankN``); those checks go into the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge import constants
from quantforge.build import BuildContext, build_variant
from quantforge.build import prepare as prepare_build
from quantforge.catalogue import catalogue
from quantforge.catalogue import ftype as lookup_ftype
from quantforge.cluster.config import ClusterSpec
from quantforge.cluster.sensitivity import measure_on_cluster
from quantforge.cluster.tasks import MeasuredRun
from quantforge.errors import Interrupted, RecipeError, UsageError
from quantforge.evaluate import _util
from quantforge.evaluate.bundled import bundled_version
from quantforge.evaluate.models import EvalEngine
from quantforge.evaluate.perplexity import ensure_base_logits, find_perplexity
from quantforge.fsutil import atomic_write_text, cached_sha256, remove_quietly
from quantforge.imatrix import ImatrixMeta, quantize_meta
from quantforge.lock import folder_lock
from quantforge.paths import refuse_input_as_output
from quantforge.plan import expand
from quantforge.recipe import QuantSection, Recipe, RuleSpec, load_recipe, parse_recipe, variant_table
from quantforge.sensitivity.groups import GroupSpec, resolve_groups
from quantforge.sensitivity.scoring import Cancelled, remove_outputs, score_kld
from quantforge.sensitivity.table import (
    InteractionCheck,
    SensitivityEntry,
    SensitivityGroup,
    SensitivityTable,
    write_table,
)

_PREFIX = "QF-SENS-"


class Run(BaseModel):
    """One variant to measure: the base, one group at one type, or a whole assignment (a check)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # variant name in the derived recipe
    label: str  # "base", "ffn_down@0-9 q5_K", "all@rank0"
    kind: Literal["base", "group", "check"]
    group: str | None = None
    type: str | None = None
    assignment: dict[str, str] = {}
    key: str = ""  # sha256 of the method and the exact quantize arguments


class RunResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    label: str
    value: float  # KLD mean
    value_err: float
    ppl: float
    written: dict[str, str]  # tensor -> type the output holds
    tensor_bytes: int
    seconds: float
    measured: str  # ISO time


@dataclass
class Progress:
    """What the runner reports after each run (``cached`` runs were read back, not measured)."""

    done: int
    total: int
    cached: int
    label: str
    value: float | None
    delta: float | None
    seconds: float
    eta_s: float | None


class SensitivityResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    table: SensitivityTable
    output: str
    measured: int
    cached: int
    cache_dir: str

    def summary(self) -> str:
        return (
            self.table.summary()
            + f"\n\n{self.measured} run(s) measured, {self.cached} read from the cache ({self.cache_dir}); "
            f"wrote {self.output}"
        )


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def with_base_variant(recipe: Recipe, name: str) -> tuple[Recipe, str]:
    """``recipe`` and the name of its variant ``name``; an ftype that is no variant (``Q8_0``) becomes
    a uniform one: that ftype with the engine's own mixture, as ``llama-quantize IN OUT Q8_0`` writes."""
    try:
        return recipe, recipe.variant(name).name
    except RecipeError as exc:
        try:
            ft = lookup_ftype(recipe.engine, name)
        except RecipeError:
            raise exc from None
    return derived_recipe(recipe, None, [], uniform=ft.name), ft.name


def derived_recipe(
    recipe: Recipe, base: str | None, runs: list[tuple[str, list[RuleSpec]]], *, uniform: str | None = None,
    sections: Sequence[QuantSection] = (),
) -> Recipe:
    """The recipe with one extra variant per run (``extends`` the base: its rules come first), and
    with ``uniform`` a variant of that name holding the bare ftype (the engine's own mixture)."""
    import tomlkit  # startup

    assert recipe.path is not None
    doc = tomlkit.parse(Path(recipe.path).read_text(encoding="utf-8"))
    quants = doc["quant"]
    if uniform is not None and uniform not in [str(q.get("name")) for q in quants]:
        quants.append(variant_table(QuantSection(name=uniform, ftype=uniform, default="mixture")))
    for name, rules in runs:
        quants.append(variant_table(QuantSection(name=name, extends=base, rules=rules)))
    for sec in sections:
        quants.append(variant_table(sec))
    return parse_recipe(tomlkit.dumps(doc), path=recipe.path)


def _group_rule(g: GroupSpec, typ: str) -> RuleSpec:
    return RuleSpec(match=g.match, layers=g.layers_spec, type=typ)


def run_sensitivity(
    recipe_path: str | Path,
    *,
    quant: str | None = None,
    output: str | Path | None = None,
    engine: EvalEngine | None = None,
    corpus: str | Path | None = None,
    ctx: int | None = None,
    chunks: int | None = None,
    kinds: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    buckets: int | None = None,
    check: bool | None = None,
    jobs: int | None = None,
    threads: int | None = None,
    bin_dir: str | None = None,
    base: str | None = None,
    imatrix: str | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    keep: bool = False,
    wait: bool = False,
    progress: Callable[[Progress], None] | None = None,
    cluster: ClusterSpec | None = None,
) -> SensitivityResult:
    """Measure the recipe's ``[sensitivity]`` groups around ``quant`` (the base variant) and write the table.

    The cache folder of the method is held (``lock.folder_lock``) while runs are measured: a second
    run of the same method stops (or, with ``wait``, queues) instead of clearing the first's work.
    """
    recipe = load_recipe(recipe_path)
    sec = recipe.sensitivity
    base_ask = quant or (sec.base if sec else None)
    recipe, base_name = (with_base_variant(recipe, base_ask) if base_ask
                         else (recipe, recipe.variant(None).name))
    uniform = base_name if base_name not in [q.name for q in load_recipe(recipe_path).quants] else None
    rdir = Path(recipe.path or ".").resolve().parent
    ev = recipe.eval
    engine_e: EvalEngine = engine or (sec.engine if sec and sec.engine else "bundled")
    corpus_s = corpus or (sec.corpus if sec and sec.corpus else None) or (ev.corpus if ev else None)
    if corpus_s is None:
        raise UsageError("an evaluation corpus is needed", where="--corpus",
                         hint="pass --corpus FILE or set [sensitivity] corpus (or [eval] corpus) in "
                              "the recipe")  # fmt: skip
    corpus_p = Path(corpus_s) if corpus is not None or Path(corpus_s).is_absolute() else rdir / corpus_s
    n_ctx = ctx or (sec.ctx if sec and sec.ctx else None) or (ev.ctx if ev and ev.ctx else 512)
    n_chunks = chunks or (sec.chunks if sec and sec.chunks else None) or 8
    do_check = check if check is not None else (sec.check if sec and sec.check is not None else True)
    if n_ctx < 4 or n_ctx % 2:
        raise UsageError(f"--ctx must be an even number of at least 4, not {n_ctx}", where="--ctx")
    _, corpus_sha = _util.read_corpus(corpus_p)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_jobs = jobs or (2 if cores >= 4 else 1)
    if n_jobs < 1:
        raise UsageError(f"--jobs {n_jobs}: at least 1", where="--jobs")
    if engine_e != "bundled" and n_jobs > 1:
        n_jobs = 1  # a llama-perplexity child cannot be stopped from a worker thread: measure in turn
    per_job = max(1, (threads or cores) // n_jobs)

    # the base variant's plan and the groups around it
    ctx0 = prepare_build(recipe, out_dir=None, base=base, imatrix=imatrix, bin_dir=bin_dir, threads=per_job)
    out_path = (Path(output) if output
                else rdir / f"{Path(recipe.path or 'recipe').stem}-{base_name}.sensitivity.csv")
    # before hours of measuring: the table is never written over an input, with --force or not
    refuse_input_as_output(out_path, [("the recipe", recipe.path or ""), ("the evaluation corpus", corpus_p),
                                      ("the base model", ctx0.base_path),
                                      *([("the importance matrix",
                                          ctx0.imatrix.path)] if ctx0.imatrix else [])],
                           field="--output", hint="write the table to a new .csv or .json file")  # fmt: skip
    imeta = _imatrix_meta(ctx0)
    base_plan = expand(recipe, base_name, ctx0.inventory, imatrix=imeta)
    groups = resolve_groups(recipe, base_plan, section=sec, has_imatrix=ctx0.imatrix is not None, kinds=kinds,
                            types=types, buckets=buckets)  # fmt: skip
    if not any(g.candidates for g in groups):
        raise RecipeError("no group has a candidate type that changes what llama-quantize writes",
                          where=f"{recipe.path}: sensitivity.types",
                          hint="name types other than the base's")  # fmt: skip

    # every run, named by what it does
    specs: list[tuple[Run, list[RuleSpec]]] = [(Run(name=_PREFIX + "BASE", label="base", kind="base"), [])]
    for g in groups:
        for t in g.candidates:
            specs.append(
                (Run(name=f"{_PREFIX}{len(specs)}", label=f"{g.name} {t}", kind="group", group=g.name,
                     type=t),
                 [_group_rule(g, t)])
            )  # fmt: skip
    if do_check:
        ranks = min((len(g.candidates) for g in groups if g.candidates), default=0)
        for rank in range(ranks):
            assign = {g.name: g.candidates[rank] for g in groups if g.candidates}
            specs.append(
                (Run(name=f"{_PREFIX}CHECK{rank}", label=f"all@rank{rank}", kind="check", assignment=assign),
                 [_group_rule(g, assign[g.name]) for g in groups if g.name in assign])
            )  # fmt: skip
    derived = derived_recipe(recipe, base_name, [(r.name, rules) for r, rules in specs[1:]], uniform=uniform)
    specs[0] = (specs[0][0].model_copy(update={"name": base_name}), [])

    # the method key: everything a measured number depends on besides the variant itself
    tc = ctx0.toolchain
    if engine_e == "bundled":
        eval_version = bundled_version()
        ppl_binary: str | None = None
    else:
        ppl_binary, ver = find_perplexity(engine_e, bin_dir=bin_dir)
        eval_version = ver or Path(ppl_binary).name
    base_sha = cached_sha256(ctx0.base_path)
    method = {
        "format": 1, "base_sha256": base_sha, "imatrix_sha256": ctx0.imatrix.sha256 if ctx0.imatrix else None,
        "quantize": [tc.engine, tc.version, tc.commit], "evaluator": [engine_e, eval_version],
        "corpus_sha256": corpus_sha, "ctx": n_ctx, "chunks": n_chunks,
    }  # fmt: skip
    method_key = _sha(method)[:20]
    root = Path(cache_dir) if cache_dir else constants.CACHE_DIR / "sensitivity"
    cdir = root / method_key
    runs_dir = cdir / "runs"
    work = cdir / "work"
    with folder_lock(cdir, purpose="quantforge sensitivity", wait=wait):
        runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cdir / "method.json", json.dumps(method, indent=1, sort_keys=True))
        remove_quietly([work])  # what a killed run left behind
        work.mkdir(parents=True)

        plans = {r.name: expand(derived, r.name, ctx0.inventory, imatrix=imeta) for r, _ in specs}
        keyed: list[Run] = []
        for r, _ in specs:
            p = plans[r.name]
            keyed.append(r.model_copy(update={"key": _sha([method_key, p.ftype, p.quantize_args])[:24]}))

        results: dict[str, RunResult] = {}
        for r in keyed:
            f = runs_dir / f"{r.key}.json"
            if f.is_file():
                try:
                    results[r.key] = RunResult.model_validate_json(f.read_text(encoding="utf-8"))
                except ValueError:
                    f.unlink()  # a torn or foreign file is measured again
        pending = [r for r in keyed if r.key not in results]
        n_cached = len(keyed) - len(pending)

        # measure

        logits = ensure_base_logits(ctx0.base_path, engine=engine_e, corpus=corpus_p,
                                    corpus_sha256=corpus_sha,
                                    ctx=n_ctx, chunks=n_chunks, threads=threads, binary=ppl_binary,
                                    version=eval_version)  # fmt: skip
        build_ctx = ctx0.model_copy(update={"recipe": derived, "out_dir": work.resolve(), "threads": per_job})
        base_value = results[keyed[0].key].value if keyed[0].key in results else None
        stop = threading.Event()
        t_start = time.monotonic()
        measured_n = 0
        done_n = n_cached

        def report(r: Run, res: RunResult | None, cached: bool) -> None:
            nonlocal done_n, measured_n
            done_n += 1
            if not cached:
                measured_n += 1
            left = len(keyed) - done_n
            eta = (time.monotonic() - t_start) / measured_n * left if measured_n else None
            if progress is not None:
                delta = (res.value - base_value if res is not None and base_value is not None
                         and r.kind != "base" else None)
                progress(Progress(done=done_n, total=len(keyed), cached=n_cached, label=r.label,
                                  value=res.value if res else None, delta=delta,
                                  seconds=res.seconds if res else 0.0,
                                  eta_s=eta))  # fmt: skip

        def measure(r: Run, gguf: Path, t_build: float) -> RunResult:
            t0 = time.monotonic()
            res = score_kld(gguf, engine=engine_e, logits=logits, corpus=corpus_p, corpus_sha=corpus_sha,
                       threads=per_job,
                       binary=ppl_binary, version=eval_version, stop=stop)  # fmt: skip
            assert res.kld is not None
            p = plans[r.name]
            out = RunResult(
                key=r.key, label=r.label, value=res.kld.mean, value_err=res.kld.mean_err, ppl=res.ppl,
                written={t.name: t.type for t in p.tensors}, tensor_bytes=p.tensor_bytes,
                seconds=round(t_build + time.monotonic() - t0, 2), measured=_util.now_iso(),
            )  # fmt: skip
            atomic_write_text(runs_dir / f"{r.key}.json", out.model_dump_json())
            if not keep:
                remove_outputs(gguf)
            return out

        def build_one(r: Run) -> tuple[Path, float]:
            t0 = time.monotonic()
            b = build_variant(build_ctx, r.name, force=True, split_max_bytes=None)
            return Path(b.output), time.monotonic() - t0

        try:
            if cluster is not None:  # a quantforge.cluster.ClusterSpec: each pending run is one Ray task

                def record(r: Run, value: MeasuredRun) -> None:
                    nonlocal base_value
                    p = plans[r.name]
                    res = RunResult(
                        key=r.key, label=r.label, value=value["kld"], value_err=value["kld_err"],
                        ppl=value["ppl"],
                        written={t.name: t.type for t in p.tensors}, tensor_bytes=p.tensor_bytes,
                        seconds=value["seconds"], measured=_util.now_iso(),
                    )  # fmt: skip
                    atomic_write_text(runs_dir / f"{r.key}.json", res.model_dump_json())
                    results[r.key] = res
                    if r.kind == "base":
                        base_value = res.value
                    report(r, res, cached=False)

                measure_on_cluster(
                    cluster, pending, derived=derived, ctx=ctx0, plans=plans, method_key=method_key,
                    logits=logits,
                    corpus=corpus_p, corpus_sha=corpus_sha, engine=engine_e, eval_version=eval_version,
                    threads=threads, bin_dir=bin_dir, keep=keep, on_run=record,
                )  # fmt: skip
            elif n_jobs == 1:
                for r in pending:
                    gguf, tb = build_one(r)
                    res = measure(r, gguf, tb)
                    results[r.key] = res
                    if r.kind == "base":
                        base_value = res.value
                    report(r, res, cached=False)
            else:
                with ThreadPoolExecutor(max_workers=n_jobs - 1, thread_name_prefix="qf-kld") as pool:
                    inflight: list[tuple[Run, Future[RunResult]]] = []

                    def drain(limit: int) -> None:
                        nonlocal base_value
                        while len(inflight) > limit:
                            r0, fut = inflight.pop(0)
                            res = fut.result()
                            results[r0.key] = res
                            if r0.kind == "base":
                                base_value = res.value
                            report(r0, res, cached=False)

                    try:
                        for r in pending:
                            gguf, tb = build_one(r)
                            inflight.append((r, pool.submit(measure, r, gguf, tb)))
                            drain(n_jobs - 2)
                        drain(0)
                    except BaseException:
                        stop.set()
                        for _, fut in inflight:
                            fut.cancel()
                        raise
        except (KeyboardInterrupt, Interrupted):
            stop.set()
            if not keep:
                remove_quietly([work])
            raise Interrupted(
                f"Ctrl-C: stopped; {len(results)} of {len(keyed)} runs are in the cache",
                where=str(cdir), hint="run the same command again to resume",
            ) from None
        except Cancelled:  # pragma: no cover - only raised after stop was set above
            raise Interrupted("stopped", where=str(cdir),
                              hint="run the same command again to resume") from None
        if not keep:
            remove_quietly([work])

    table = _table(recipe, base_name, groups, keyed, results, method=method,
                   engine_label=f"{engine_e} {eval_version}",
                   corpus=str(corpus_p), plans=plans, arch=ctx0.inventory.arch)  # fmt: skip
    write_table(table, out_path, force=force)
    return SensitivityResult(table=table, output=str(out_path), measured=measured_n, cached=n_cached,
                             cache_dir=str(cdir))  # fmt: skip


def _imatrix_meta(ctx: BuildContext) -> ImatrixMeta | Literal[False]:
    return quantize_meta(ctx.imatrix) if ctx.imatrix is not None else False


def _table(
    recipe: Recipe, base_name: str, groups: list[GroupSpec], runs: list[Run], results: dict[str, RunResult],
    *,
    method: dict[str, Any], engine_label: str, corpus: str, plans: dict[str, Any], arch: str | None = None,
) -> SensitivityTable:  # fmt: skip
    base = results[runs[0].key]
    cat = catalogue(recipe.engine)
    by_group = {g.name: g for g in groups}
    entries: list[SensitivityEntry] = []
    for r in runs:
        if r.kind != "group":
            continue
        res = results[r.key]
        g = by_group[r.group or ""]
        assert r.type is not None
        entries.append(
            SensitivityEntry(
                group=g.name, type=r.type, written=tuple(res.written[t] for t in g.tensors), value=res.value,
                value_err=res.value_err, delta=res.value - base.value, ppl=res.ppl, bytes=g.bytes[r.type],
                how="measured", seconds=res.seconds,
            )
        )  # fmt: skip
    costs = {(e.group, e.type): e.delta for e in entries}
    checks = []
    for r in runs:
        if r.kind != "check":
            continue
        res = results[r.key]
        pred = base.value + sum(costs[(g, t)] for g, t in r.assignment.items())
        checks.append(InteractionCheck(name=r.label, assignment=r.assignment, measured=res.value,
                                       measured_err=res.value_err, predicted=pred))  # fmt: skip
    out_groups = tuple(
        SensitivityGroup(name=g.name, kind=g.kind, layers=g.layers, tensors=g.tensors,
                         base_type=cat.get(g.base_written[0]).name, bytes=g.base_bytes)  # fmt: skip
        for g in groups
    )
    inv_model = recipe.model.name or recipe.model.id or Path(recipe.path or "model").stem
    return SensitivityTable(
        model=inv_model, arch=arch, engine=recipe.engine, metric="kld", evaluator=engine_label, corpus=corpus,
        corpus_sha256=method["corpus_sha256"], ctx=method["ctx"], chunks=method["chunks"],
        base_variant=base_name,
        base_sha256=method["base_sha256"], imatrix_sha256=method["imatrix_sha256"], baseline=base.value,
        baseline_err=base.value_err, source="measured", groups=out_groups, entries=tuple(entries),
        checks=tuple(checks), created=_util.now_iso(),
        notes=(f"base variant {base_name}: {plans[runs[0].name].tensor_bytes:,} bytes of tensor data",),
    )  # fmt: skip

