"""The fit solver: a type for every tensor group, and a device for every routed-expert unit, so that
the predicted KLD is minimal and every device of the rig holds what it is given.

The problem is a multiple-choice knapsack with one capacity per device: each group (a tensor kind in
a layer bucket, or one tensor, as the sensitivity table measured it) takes exactly one candidate
type; each routed-expert unit (``ffn_up/gate_exps`` of a layer, or its ``ffn_down_exps``) lives in
RAM or on the GPU that holds its layer; the objective is the sum of the measured group costs
(``delta`` of the table). It is solved exactly with scipy's MILP (HiGHS), whose optimality gap is
reported (0 when proven optimal).

Memory is the planner's (``plan_fit``), never re-derived here: one reference ``plan_fit`` with every
expert in RAM gives each device's fixed cost (KV, compute, margin, the tensors the solver does not
choose); per-tensor buffer bytes come from ``placement.prepare`` (CUDA row padding and alignment);
the knapsack runs on the byte budgets that leaves; one ``plan_fit`` confirms the answer, and when a
device comes out short (a compute buffer grows with what it holds) its budget shrinks by the
shortfall and the knapsack runs again.

Constraints: only types with a CUDA matmul and no row interleaving on a GPU; ``_r4/_r8`` twins only
for RAM-resident tensors (ik); optionally ``ffn_down`` one bpw step above ``ffn_gate/up`` of the
same layers; optionally a minimum token-generation speed from the planner's speed model.

Without a sensitivity table only routed experts move, with a noise prior as their cost:
``elements x 2^(-2·bpw)`` (the error power of a b-bit quantizer), which equalizes bits across layers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict

from quantforge import units
from quantforge.build import build_variant
from quantforge.build import prepare as prepare_build
from quantforge.catalogue import Engine, catalogue
from quantforge.errors import InputError, RecipeError, UsageError
from quantforge.evaluate.models import EvalEngine
from quantforge.evaluate.perplexity import evaluate, record_in_manifest
from quantforge.fit.api import recipe_inventory, recipe_plans
from quantforge.fit.dims import ModelDims
from quantforge.fit.placement import FitTensor, expert_part, fit_tensors, layer_device, prepare, split_layers
from quantforge.fit.report import FitReport, Settings, plan_fit
from quantforge.inventory_models import TensorInventory
from quantforge.lock import folder_lock
from quantforge.manifest import update_manifest
from quantforge.plan import QuantPlan, expand
from quantforge.recipe import QuantSection, Recipe, RuleSpec, add_variant, format_layers, load_recipe
from quantforge.sensitivity.measure import derived_recipe, with_base_variant
from quantforge.sensitivity.table import SensitivityTable, read_table
from quantforge.targets import HardwareTarget, load_target

#: Candidate types of routed experts without a sensitivity table (low -> high bpw, plain types:
#: RAM-resident ones become their _r4 twin where that is allowed).
PRIOR_LADDERS: dict[str, tuple[str, ...]] = {
    "ik": ("iq1_s", "iq2_k", "iq3_k", "iq4_ks", "iq5_ks", "q8_0"),
    "mainline": ("iq1_s", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq3_s", "iq4_xs", "q5_K", "q6_K", "q8_0"),
}
_GIB = 1 << 30
_KIND_RE = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")
Repack = Literal["auto", "always", "never"]


class GroupChoice(BaseModel):
    """What the solver chose for one group."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    group: str
    type: str  # the candidate (plain spelling)
    cost: float  # its delta
    bytes: int  # tensor bytes of the group as written
    devices: dict[str, int] = {}  # device -> tensors of the group placed there


class ParetoPoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    budget_bytes: int
    tensor_bytes: int
    predicted: float
    label: str | None = None


class VerifyOptions(TypedDict, total=False):
    """How ``--verify`` builds and measures the chosen variant; an absent or None key takes the
    sensitivity table's own method (its corpus, evaluator, context and chunks)."""

    corpus: str | None
    engine: EvalEngine | None
    ctx: int | None
    chunks: int | None
    out_dir: str | None
    bin_dir: str | None
    threads: int | None


class SolveResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    base: str
    target: str | None  # None: a tensor-data budget
    budget_bytes: int | None = None
    n_ctx: int | None
    rules: list[dict[str, str]]
    choices: tuple[GroupChoice, ...]
    types: dict[str, str]  # tensor -> type written (every tensor of the plan)
    tensor_bytes: int
    weights_bytes: int
    headroom_bytes: int | None
    predicted: float  # baseline + sum of the chosen deltas (the table's metric)
    metric: str
    baseline: float
    solver: str  # "milp (HiGHS)" / "greedy"
    status: str  # "optimal" / "feasible, gap 0.3 %"
    gap: float  # relative optimality gap (0: proven optimal)
    solve_seconds: float
    iterations: int  # plan_fit confirmations
    report: FitReport | None = None
    levels: dict[int, str] = {}  # prior mode: layer -> gate/up type
    written: str | None = None
    comment: str
    notes: tuple[str, ...] = ()
    verify: dict[str, Any] | None = None

    def summary(self) -> str:
        lines = [self.comment, ""]
        if self.report is not None:
            for d in self.report.devices:
                lines.append(
                    f"  {d.name:6s} {d.total_bytes / _GIB:9.2f} GiB of {d.capacity_bytes / _GIB:8.2f} GiB "
                    f"(headroom {d.headroom_bytes / _GIB:6.2f} GiB, "
                    f"{100 * d.headroom_bytes / d.capacity_bytes:5.2f} %)"
                )
            lines.append(f"  token generation upper bound {self.report.tg_tokens_per_s:.1f} t/s")
            lines.append("")
        lines.append("rules:")
        lines += [f"  {r}" for r in self.rules]
        lines += [f"note: {n}" for n in self.notes]
        if self.verify:
            v = self.verify
            lines += [
                "",
                f"verify: built {Path(str(v['output'])).name}; measured {self.metric} {v['measured']:.6f} ± "
                f"{v['measured_err']:.6f}, predicted {self.predicted:.6f} ({100 * v['error']:+.1f} %)",
            ]
        if self.written:
            lines.append(f"wrote variant {self.name} to {self.written}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- groups


@dataclass
class _Group:
    name: str
    idx: list[int]  # plan tensor indices
    costs: dict[str, float]  # candidate (plain type) -> delta
    kind: str
    expert: bool


@dataclass
class _Option:
    """One candidate of one group: bytes per resource row, cost, the types it writes."""

    typ: str
    cost: float
    cpu_types: list[str]  # written type per tensor when in RAM (a twin with repack)
    gpu_types: list[str] | None  # written type per tensor on a GPU (None: not allowed there)
    tensor_bytes: int  # as written in RAM (weights-only budgets count this)
    cpu_bytes: list[int] = field(default_factory=list)
    gpu_bytes: list[int] = field(default_factory=list)
    raw_cpu: list[int] = field(default_factory=list)
    raw_gpu: list[int] = field(default_factory=list)


@functools.lru_cache(maxsize=4096)
def _plain(engine: Engine, name: str) -> str | None:
    """The plain twin of a type (``iq4_ks_r4`` -> ``iq4_ks``), None for a name this engine lacks."""
    qt = catalogue(engine).find(name)
    if qt is None:
        return None
    return qt.base if qt.base is not None else qt.name


def groups_from_table(plan: QuantPlan, table: SensitivityTable) -> tuple[list[_Group], list[str]]:
    """The table's groups over ``plan`` (tensor names matched exactly); notes on what did not match."""
    engine = plan.engine
    cat = catalogue(engine)
    index = {t.name: i for i, t in enumerate(plan.tensors)}
    costs = table.costs()
    out: list[_Group] = []
    notes: list[str] = []
    taken: set[int] = set()
    missing = 0
    for g in table.groups:
        idx = [index[n] for n in g.tensors if n in index and index[n] not in taken]
        missing += sum(1 for n in g.tensors if n not in index)
        if not idx:
            continue
        c: dict[str, float] = {}
        for typ, d in costs.get(g.name, {}).items():
            p = _plain(engine, typ)
            if p is None:
                continue
            c[p] = min(c.get(p, math.inf), d)  # a twin has the plain type's numerics
        if not c:
            continue
        taken.update(idx)
        kind = g.kind
        out.append(_Group(name=g.name, idx=idx, costs=c, kind=kind,
                          expert=any(expert_part(plan.tensors[i].name)
                                                                             for i in idx)))  # fmt: skip
    if missing:
        notes.append(f"{missing} tensors named by the table are not in this plan")
    free = [t for i, t in enumerate(plan.tensors) if i not in taken and t.requested_type is not None
            and len(t.shape) >= 2 and cat.get(t.type).block_size > 1]  # fmt: skip
    if free:
        notes.append(f"{len(free)} quantized tensors have no sensitivity data and keep the {plan.name} types "
                     f"(e.g. {free[0].name})")  # fmt: skip
    return out, notes


def groups_prior(plan: QuantPlan, engine: Engine) -> list[_Group]:
    """Routed experts only, per layer: gate+up as one group, down as another; noise-prior costs."""
    cat = catalogue(engine)
    by: dict[tuple[int, str], list[int]] = {}
    for i, t in enumerate(plan.tensors):
        part = expert_part(t.name)
        if part is None or t.layer is None:
            continue
        by.setdefault((t.layer, "down" if part == "down" else "gate_up"), []).append(i)
    if not by:
        raise UsageError("the model has no routed experts and no sensitivity table was given",
                         hint="measure one with quantforge sensitivity and pass --sensitivity")  # fmt: skip
    out = []
    total = sum(math.prod(plan.tensors[i].shape) for idx in by.values() for i in idx)
    for (layer, part), idx in sorted(by.items()):
        # the share of the experts' weights, times the error power of the type: the sum is the
        # experts' mean 2^(-2·bpw), a relative number (1.0 at 0 bits)
        n = sum(math.prod(plan.tensors[i].shape) for i in idx) / total
        c = {t: n * 2.0 ** (-2.0 * cat.get(t).bpw) for t in PRIOR_LADDERS[engine]}
        kind = "ffn_down_exps" if part == "down" else "ffn_(gate|up)_exps"
        out.append(_Group(name=f"{kind}@{layer}", idx=idx, costs=c, kind=kind, expert=True))
    return out


# --------------------------------------------------------------------------- the rig


@dataclass
class _Rig:
    """Where each tensor lives and what each device has left for the solver's tensors."""

    devices: list[str]  # "CPU", "CUDA0", ... (weights-only budget: ["tensor data"])
    budgets: list[int]
    home: dict[int, int]  # plan tensor index -> device row of a fixed (non-expert) tensor
    unit_gpu: dict[tuple[int, str], int]  # (layer, part) -> device row of its home GPU
    tied_gpu: int | None  # device row holding the tied output's copy of token_embd
    unified: bool
    bw: list[float]
    frac: float
    tg_fixed_s: float = 0.0


def _unit_of(name: str, layer: int | None) -> tuple[int, str] | None:
    part = expert_part(name)
    if part is None or layer is None:
        return None
    return layer, ("down" if part == "down" else "gate_up")


def _reference(
    plan: QuantPlan, dims: ModelDims, target: HardwareTarget, settings: Settings, engine: Engine,
    controlled: set[int],
) -> tuple[_Rig, FitReport]:  # fmt: skip
    """Fixed costs per device: ``plan_fit`` with every routed expert in RAM, minus the solver's tensors."""
    base = fit_tensors(plan)
    ref_tensors = [t._replace(place="cpu") if expert_part(t.name) else t for t in base]
    rep = plan_fit(ref_tensors, dims, target, settings=settings, engine=engine, with_placement=True,
                   advice=False,
                   max_ctx_cap=settings.n_ctx)  # fmt: skip
    names = [d.name for d in rep.devices]
    row = {n: i for i, n in enumerate(names)}
    prep = prepare(ref_tensors, engine=engine, n_layer=dims.n_layer)
    placement = rep.placement or {}
    used = [0] * len(names)
    home: dict[int, int] = {}
    for i, t in enumerate(ref_tensors):
        dev = placement.get(t.name, "CPU")
        d = row.get(dev, 0)
        if i in controlled:
            used[d] += prep.cpu_bytes[i] if dev == "CPU" else prep.gpu_bytes[i]
        home[i] = d
    tied = None
    if prep.tied_output and target.gpu and prep.embd_idx is not None:
        tied = len(names) - 1
        if prep.embd_idx in controlled:
            used[tied] += prep.gpu_bytes[prep.embd_idx]
    budgets = [d.capacity_bytes - (d.total_bytes - used[k]) for k, d in enumerate(rep.devices)]
    if target.unified_memory:
        budgets[0] += sum(used[1:])  # one pool: the GPUs' share is in the CPU total too
    counts = split_layers(dims.n_layer, [g.vram for g in target.gpu]) if target.gpu else []
    unit_gpu: dict[tuple[int, str], int] = {}
    if target.gpu:
        for t in base:
            u = _unit_of(t.name, t.layer)
            if u is not None:
                unit_gpu[u] = 1 + (layer_device(u[0], counts) if len(target.gpu) > 1 else 0)
    bw = [float(target.cpu.memory_bandwidth)] + [float(g.memory_bandwidth) for g in target.gpu]
    frac = dims.n_expert_used / dims.n_expert if dims.n_expert else 1.0
    rig = _Rig(devices=names, budgets=budgets, home=home, unit_gpu=unit_gpu, tied_gpu=tied,
               unified=target.unified_memory, bw=bw[: len(names)], frac=frac)  # fmt: skip
    # the speed model's fixed part: what the solver's tensors did not read in the reference
    secs = 1.0 / rep.tg_tokens_per_s if rep.tg_tokens_per_s > 0 else 0.0
    ctrl = 0.0
    for i in controlled:
        t = ref_tensors[i]
        if t.name == "token_embd.weight":
            continue
        f = frac if expert_part(t.name) else 1.0
        ctrl += f * t.bytes / rig.bw[home[i]]
    rig.tg_fixed_s = max(0.0, secs - ctrl)
    return rig, rep


def _options(
    plan: QuantPlan, groups: list[_Group], engine: Engine, *, rig: _Rig | None, repack: Repack, gpu_ok: bool,
    has_imatrix: bool = True,
) -> list[list[_Option]]:  # fmt: skip
    """Every group's candidates with their bytes (CPU and GPU buffers) and written types."""
    cat = catalogue(engine)
    # per (type, shape, is token_embd): what llama-quantize writes, in RAM and on a GPU (memoized:
    # a 61-layer model has a few dozen distinct shapes)
    written: dict[tuple[str, tuple[int, ...], bool], tuple[str, str, bool] | None] = {}

    def write(typ: str, shape: tuple[int, ...], embd: bool) -> tuple[str, str, bool] | None:
        key = (typ, shape, embd)
        if key not in written:
            name = "token_embd.weight" if embd else None
            try:
                w, _ = cat.resolve(typ, shape, tensor_name=name)
            except InputError:
                written[key] = None
                return None
            if not has_imatrix and cat.needs_imatrix(w, tensor_name=name, ftype=plan.ftype):
                written[key] = None  # llama-quantize refuses it without an importance matrix
                return None
            qw = cat.get(w)
            twin = qw.repacked
            use_twin = (
                twin is not None and repack != "never" and rig is not None and not embd
                and (repack == "always" or not gpu_ok or cat.get(twin).cuda_matmul)
                and cat.interleave_ok(twin, shape[1] if len(shape) > 1 else 1)
            )  # fmt: skip
            on_gpu = qw.interleave == 1 and (qw.cuda_matmul or qw.block_size == 1)
            written[key] = (w, twin if use_twin and twin is not None else w, on_gpu)
        return written[key]

    # one template per (candidate, the group's shapes): groups of the same kind share it
    templates: dict[tuple[str, tuple[tuple[tuple[int, ...], bool], ...]], tuple[list[str], list[str],
                                                                                bool] | None] = {}
    shapes: set[tuple[str, tuple[int, ...]]] = set()
    per_raw: list[list[tuple[str, float, tuple[Any, ...]]]] = []
    bpw = {t.name: t.bpw for t in cat.types()}
    for g in groups:
        sig = tuple((tuple(plan.tensors[i].shape),
                     plan.tensors[i].name == "token_embd.weight") for i in g.idx)
        opts: list[tuple[str, float, tuple[Any, ...]]] = []
        for typ, cost in sorted(g.costs.items(), key=lambda kv: bpw[kv[0]]):
            key = (typ, sig)
            if key not in templates:
                plain_w: list[str] = []
                cpu_w: list[str] = []
                on_gpu = True
                tmpl: tuple[list[str], list[str], bool] | None = None
                for shape, embd in sig:
                    r = write(typ, shape, embd)
                    if r is None:
                        break
                    plain_w.append(r[0])
                    cpu_w.append(r[1])
                    on_gpu = on_gpu and r[2]
                    shapes.add((r[0], shape))
                    shapes.add((r[1], shape))
                else:
                    tmpl = (plain_w, cpu_w, on_gpu)
                templates[key] = tmpl
            if templates[key] is not None:
                opts.append((typ, cost, key))
        per_raw.append(opts)
    # buffer bytes of every (type, shape) the options write, from the planner's placement facts
    pairs = sorted(shapes)
    fts = [FitTensor(f"t{k}", shape, w, cat.get(w).tensor_bytes(shape),
                     None) for k, (w, shape) in enumerate(pairs)]
    prep = prepare(fts, engine=engine) if fts else None
    cpu_b = {p: prep.cpu_bytes[k] for k, p in enumerate(pairs)} if prep else {}
    gpu_b = {p: prep.gpu_bytes[k] for k, p in enumerate(pairs)} if prep else {}
    raw = {p: fts[k].bytes for k, p in enumerate(pairs)}
    filled: dict[Any, tuple[Any, ...]] = {}
    per: list[list[_Option]] = []
    for opts in per_raw:
        kept: list[_Option] = []
        seen: dict[tuple[str, ...], int] = {}
        for typ, cost, key in opts:
            if key not in filled:
                t = templates[key]
                assert t is not None
                plain_w, cpu_w, on_gpu = t
                sh = [x[0] for x in key[1]]
                rc = [raw[(w, x)] for w, x in zip(cpu_w, sh, strict=True)]
                filled[key] = (
                    cpu_w, plain_w if on_gpu else None, [cpu_b[(w, x)] for w, x in zip(cpu_w, sh,
                                                                                       strict=True)], rc,
                    [gpu_b[(w, x)] for w, x in zip(plain_w, sh, strict=True)] if on_gpu else [],
                    [raw[(w, x)] for w, x in zip(plain_w, sh, strict=True)] if on_gpu else [], sum(rc),
                )  # fmt: skip
            cw, gw, cb, rcpu, gb, rgpu, tb = filled[key]
            o = _Option(typ=typ, cost=cost, cpu_types=cw, gpu_types=gw, tensor_bytes=tb, cpu_bytes=cb,
                        gpu_bytes=gb,
                        raw_cpu=rcpu, raw_gpu=rgpu)  # fmt: skip
            wkey = tuple(cw)
            if wkey in seen:  # equal writes: keep the cheaper
                if cost < kept[seen[wkey]].cost:
                    kept[seen[wkey]] = o
                continue
            seen[wkey] = len(kept)
            kept.append(o)
        per.append(kept)
    return per


def _prune(per: list[list[_Option]], keep_all: set[int]) -> list[list[_Option]]:
    """Drop dominated candidates: another one of the group costs no more, takes no more bytes in RAM
    or on a GPU (and may go wherever this one may) and reads no more per token. Exact: an optimum
    never needs a dominated option. Groups under a rank constraint (``keep_all``) keep everything."""
    out = []
    for gi, opts in enumerate(per):
        if gi in keep_all or len(opts) < 2:
            out.append(opts)
            continue
        big = 1e30
        m = np.array([[o.cost, *o.cpu_bytes, *o.raw_cpu,
                       *(o.gpu_bytes if o.gpu_types is not None else [big] * len(o.cpu_bytes)),
                       *(o.raw_gpu if o.gpu_types is not None else [big] * len(o.cpu_bytes))]
                       for o in opts])  # fmt: skip
        le = (m[:, None, :] <= m[None, :, :]).all(axis=2)  # le[j, i]: j no worse than i everywhere
        lt = (m[:, None, :] < m[None, :, :]).any(axis=2)
        idx = np.arange(len(opts))
        dom = (le & (lt | (idx[:, None] < idx[None, :]))).any(axis=0)  # identical rows: the first stays
        out.append([opts[int(i)] for i in np.flatnonzero(~dom)])
    return out


# --------------------------------------------------------------------------- the knapsack


@dataclass
class _Solution:
    pick: list[int]  # option index per group
    on_gpu: dict[tuple[int, str], bool]  # unit -> on its GPU
    objective: float
    gap: float
    status: str
    solver: str
    seconds: float


def _rank_table(engine: Engine, per: list[list[_Option]]) -> dict[str, int]:
    cat = catalogue(engine)
    bpws = sorted({round(cat.get(o.typ).bpw, 4) for opts in per for o in opts})
    return {o.typ: bpws.index(round(cat.get(o.typ).bpw, 4)) for opts in per for o in opts}


def _down_pairs(plan: QuantPlan, groups: list[_Group]) -> list[tuple[int, int]]:
    """(down group, gate/up group) pairs that share a layer and a family (dense, _exps, _shexp)."""
    fam: dict[tuple[int, str, str], set[int]] = {}
    for gi, g in enumerate(groups):
        for i in g.idx:
            m = _KIND_RE.match(plan.tensors[i].name)
            if not m:
                continue
            kind = m.group(2)
            mk = re.fullmatch(r"ffn_(down|gate|up)(_exps|_shexp|)", kind)
            if not mk:
                continue
            role = "down" if mk.group(1) == "down" else "gate_up"
            fam.setdefault((int(m.group(1)), mk.group(2), role), set()).add(gi)
    pairs: set[tuple[int, int]] = set()
    for (layer, suffix, role), gs in fam.items():
        if role != "down":
            continue
        for d in gs:
            for u in fam.get((layer, suffix, "gate_up"), set()):
                if u != d:
                    pairs.add((d, u))
    return sorted(pairs)


@dataclass
class _Contrib:
    """Resource use of every (group, option): rows are the devices (or the one tensor-data budget),
    then the token-generation seconds. ``units[gi][k]``: unit -> (in RAM, on its GPU or None)."""

    rows: list[str]
    base: list[list[np.ndarray]]
    units: list[list[dict[tuple[int, str], tuple[np.ndarray, np.ndarray | None]]]]
    allowed: list[list[bool]]
    cost: list[list[float]]
    budgets: np.ndarray  # per row (the TG row: seconds per token left, inf without --min-tg)
    unit_list: list[tuple[int, str]]
    unit_groups: dict[tuple[int, str], list[int]]


def _contributions(
    plan: QuantPlan, groups: list[_Group], per: list[list[_Option]], rig: _Rig | None, budget: int | None,
    min_tg: float | None,
) -> _Contrib:  # fmt: skip
    n_dev = len(rig.devices) if rig is not None else 1
    nrow = n_dev + 1
    base_all: list[list[np.ndarray]] = []
    units_all: list[list[dict[tuple[int, str], tuple[np.ndarray, np.ndarray | None]]]] = []
    allowed: list[list[bool]] = []
    unit_groups: dict[tuple[int, str], list[int]] = {}
    for gi, (g, opts) in enumerate(zip(groups, per, strict=True)):
        bl, ul, al = [], [], []
        for o in opts:
            base = np.zeros(nrow)
            units: dict[tuple[int, str], tuple[np.ndarray, np.ndarray | None]] = {}
            ok = True
            for pos, i in enumerate(g.idx):
                t = plan.tensors[i]
                if rig is None:
                    base[0] += o.raw_cpu[pos]
                    continue
                u = _unit_of(t.name, t.layer) if g.expert else None
                f = rig.frac if u is not None else 1.0
                if u is not None and u in rig.unit_gpu:
                    cv, gv = units.get(u, (np.zeros(nrow),
                                           np.zeros(nrow) if o.gpu_types is not None else None))
                    cv[0] += o.cpu_bytes[pos]
                    cv[-1] += f * o.raw_cpu[pos] / rig.bw[0]
                    if gv is not None:
                        gdev = rig.unit_gpu[u]
                        gv[gdev] += o.gpu_bytes[pos]
                        if rig.unified:
                            gv[0] += o.gpu_bytes[pos]
                        gv[-1] += f * o.raw_gpu[pos] / rig.bw[gdev]
                    units[u] = (cv, gv)
                    continue
                d = rig.home.get(i, 0) if u is None else 0
                if d != 0 and o.gpu_types is None:
                    ok = False
                    break
                b = o.cpu_bytes[pos] if d == 0 else o.gpu_bytes[pos]
                base[d] += b
                if rig.unified and d != 0:
                    base[0] += b
                if t.name != "token_embd.weight":  # a row lookup, not a read of the matrix (the speed model)
                    base[-1] += f * (o.raw_cpu[pos] if d == 0 else o.raw_gpu[pos]) / rig.bw[d]
                if rig.tied_gpu is not None and t.name == "token_embd.weight":
                    base[rig.tied_gpu] += o.gpu_bytes[pos] if o.gpu_types is not None else o.cpu_bytes[pos]
            bl.append(base)
            ul.append(units)
            al.append(ok)
            for u in units:
                unit_groups.setdefault(u, [])
                if gi not in unit_groups[u]:
                    unit_groups[u].append(gi)
        base_all.append(bl)
        units_all.append(ul)
        allowed.append(al)
    if rig is None:
        assert budget is not None
        budgets = np.array([float(budget), np.inf])
        rows = ["tensor data", "tg"]
    else:
        tg = 1.0 / min_tg - rig.tg_fixed_s if min_tg else np.inf
        budgets = np.array([float(b) for b in rig.budgets] + [tg])
        rows = [*rig.devices, "tg"]
    return _Contrib(rows=rows, base=base_all, units=units_all, allowed=allowed,
                    cost=[[o.cost for o in opts] for opts in per], budgets=budgets,
                    unit_list=sorted(unit_groups), unit_groups=unit_groups)  # fmt: skip


def _down_rank(engine: Engine, plan: QuantPlan, groups: list[_Group], per: list[list[_Option]],
               down_step: bool) -> tuple[list[tuple[int, int]], list[list[int]]]:  # fmt: skip
    if not down_step:
        return [], []
    rank = _rank_table(engine, per)
    return _down_pairs(plan, groups), [[rank[o.typ] for o in opts] for opts in per]


@dataclass
class _Model:
    """The knapsack as a (MI)LP, built once and solved with different bounds."""

    a: Any
    lo: np.ndarray
    hi: np.ndarray
    c: np.ndarray  # scaled costs
    scale: float
    ub: np.ndarray
    n_bin: int  # x and y columns come first; z columns are continuous
    x_of: list[list[int]]
    y_of: dict[tuple[int, str], int]


def _build_model(cb: _Contrib, pairs: list[tuple[int, int]], ranks: list[list[int]]) -> _Model:
    """x[g,k]: one option per group; y[u]: a unit on its GPU; z[g,k,u] = x AND y (continuous, forced
    by sum_k z = y and z <= x)."""
    from scipy.sparse import coo_matrix, csr_matrix, vstack  # startup

    nres = len(cb.budgets)
    x_of: list[list[int]] = []
    cost: list[float] = []
    ub: list[float] = []
    res_cols: list[np.ndarray] = []  # resource use per column (dense: a handful of rows)
    for gi, opts in enumerate(cb.cost):
        xs = []
        for k, c in enumerate(opts):
            xs.append(len(cost))
            cost.append(c)
            ub.append(1.0 if cb.allowed[gi][k] else 0.0)
            vec = cb.base[gi][k].copy()
            for cv, _gv in cb.units[gi][k].values():
                vec += cv
            res_cols.append(vec)
        x_of.append(xs)
    y_of: dict[tuple[int, str], int] = {}
    for u in cb.unit_list:
        y_of[u] = len(cost)
        cost.append(0.0)
        ub.append(1.0)
        res_cols.append(np.zeros(nres))
    n_bin = len(cost)
    # sparse rows: one-of per group, z <= x, sum_k z = y, the rank pairs
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for gi, xs in enumerate(x_of):
        rows += [gi] * len(xs)
        cols += xs
        vals += [1.0] * len(xs)
        lo.append(1.0)
        hi.append(1.0)
    r = len(x_of)
    for gi, opts in enumerate(cb.cost):
        zsum: dict[tuple[int, str], list[int]] = {}
        for k in range(len(opts)):
            xc = x_of[gi][k]
            for u, (cv, gv) in cb.units[gi][k].items():
                if gv is None:
                    zsum.setdefault(u, [])
                    continue
                zc = len(cost)
                cost.append(0.0)
                ub.append(1.0)
                res_cols.append(gv - cv)
                rows += [r, r]
                cols += [zc, xc]
                vals += [1.0, -1.0]
                lo.append(-np.inf)
                hi.append(0.0)
                r += 1
                zsum.setdefault(u, []).append(zc)
        for u, zs in zsum.items():  # with no GPU-capable option the sum is empty: y = 0
            rows += [r] * (len(zs) + 1)
            cols += [*zs, y_of[u]]
            vals += [1.0] * len(zs) + [-1.0]
            lo.append(0.0)
            hi.append(0.0)
            r += 1
    for dg, ug in pairs:
        e: dict[int, float] = {}
        for k, rk in enumerate(ranks[dg]):
            e[x_of[dg][k]] = e.get(x_of[dg][k], 0.0) + rk
        for k, rk in enumerate(ranks[ug]):
            e[x_of[ug][k]] = e.get(x_of[ug][k], 0.0) - rk
        rows += [r] * len(e)
        cols += list(e)
        vals += list(e.values())
        lo.append(1.0)
        hi.append(np.inf)
        r += 1
    n = len(cost)
    a1 = coo_matrix((vals, (rows, cols)), shape=(r, n)).tocsr()
    dense = np.vstack(res_cols).T  # nres x n
    keep = [i for i in range(nres) if np.isfinite(cb.budgets[i])]
    a2 = csr_matrix(dense[keep])
    a = vstack([a1, a2]).tocsr()
    lo += [-np.inf] * len(keep)
    hi += [float(cb.budgets[i]) for i in keep]
    cvec = np.asarray(cost)
    scale = float(np.abs(cvec).max()) or 1.0  # costs of order 1 keep HiGHS's tolerances meaningful
    return _Model(a=a, lo=np.asarray(lo), hi=np.asarray(hi), c=cvec / scale, scale=scale, ub=np.asarray(ub),
                  n_bin=n_bin, x_of=x_of, y_of=y_of)  # fmt: skip


def _run(
    m: _Model, *, integral: bool, time_limit: float, mip_gap: float = 1e-4,
    fixed: dict[int, int] | None = None,
    fixed_units: dict[tuple[int, str], bool] | None = None,
) -> Any:  # fmt: skip
    """Solve the model (the LP relaxation unless ``integral``) with groups/units ``fixed``."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # startup

    n = len(m.c)
    lb = np.zeros(n)
    ub = m.ub.copy()
    for gi, k in (fixed or {}).items():
        for kk, col in enumerate(m.x_of[gi]):
            if kk != k:
                ub[col] = 0.0
    for u, on in (fixed_units or {}).items():
        col = m.y_of[u]
        lb[col] = ub[col] = 1.0 if on else 0.0
    integ = np.zeros(n)
    if integral:
        integ[: m.n_bin] = 1
    with _quiet():
        return milp(
            c=m.c, constraints=[LinearConstraint(m.a, m.lo, m.hi)], integrality=integ, bounds=Bounds(lb, ub),
            options={"time_limit": time_limit, "mip_rel_gap": mip_gap, "presolve": True},
        )  # fmt: skip


def _usage(cb: _Contrib, gi: int, k: int, flag: dict[tuple[int, str], bool]) -> np.ndarray | None:
    v = cb.base[gi][k].copy()
    for u, (cv, gv) in cb.units[gi][k].items():
        if flag.get(u, False):
            if gv is None:
                return None
            v += gv
        else:
            v += cv
    return v


def _heuristic(
    cb: _Contrib, pairs: list[tuple[int, int]], ranks: list[list[int]], pick: list[int],
    flag: dict[tuple[int, str], bool],
) -> tuple[list[int], dict[tuple[int, str], bool]] | None:  # fmt: skip
    """Make a rounded LP answer feasible (cheapest downgrades per byte on the device that is over, units
    moved off a full GPU), then spend what is left (best cost saved per byte of the tightest device)."""
    ng = len(cb.cost)
    pick = list(pick)
    flag = dict(flag)
    lo_r = [-(10**9)] * ng
    hi_r = [10**9] * ng
    down_of: dict[int, list[int]] = {}
    up_of: dict[int, list[int]] = {}
    for dg, ug in pairs:
        down_of.setdefault(ug, []).append(dg)
        up_of.setdefault(dg, []).append(ug)

    def bounds(gi: int) -> tuple[int, int]:
        if not ranks:
            return lo_r[gi], hi_r[gi]
        lo = max((ranks[ug][pick[ug]] + 1 for ug in up_of.get(gi, [])), default=-(10**9))
        hi = min((ranks[dg][pick[dg]] - 1 for dg in down_of.get(gi, [])), default=10**9)
        return lo, hi

    cur = [(_usage(cb, gi, pick[gi], flag)) for gi in range(ng)]
    for gi in range(ng):  # a rounded option that cannot be where its units are: any that can
        if cur[gi] is None or not cb.allowed[gi][pick[gi]]:
            for k in range(len(cb.cost[gi])):
                v = _usage(cb, gi, k, flag)
                if v is not None and cb.allowed[gi][k]:
                    pick[gi], cur[gi] = k, v
                    break
            else:
                for unit in cb.units[gi][pick[gi]]:
                    flag[unit] = False
                cur = [(_usage(cb, g2, pick[g2], flag)) for g2 in range(ng)]
    if ranks:  # the rank pairs: raise each down to one step above its gate/up
        for dg, ug in pairs:
            if ranks[dg][pick[dg]] < ranks[ug][pick[ug]] + 1:
                need = ranks[ug][pick[ug]] + 1
                ks = [k for k in range(len(cb.cost[dg])) if ranks[dg][k] >= need and cb.allowed[dg][k]]
                if ks:
                    k = min(ks, key=lambda k: ranks[dg][k])
                    v = _usage(cb, dg, k, flag)
                    if v is not None:
                        pick[dg], cur[dg] = k, v
    total = np.sum([c for c in cur if c is not None], axis=0)
    budget = cb.budgets
    for _ in range(100000):
        over = total - budget
        if (over <= 1e-9).all():
            break
        r = int(np.argmax(np.where(np.isfinite(budget), over / np.maximum(np.abs(budget), 1.0), 0.0)))
        best: tuple[float, int, int, np.ndarray] | None = None
        for gi in range(ng):
            lo, hi = bounds(gi)
            base_v = cur[gi]
            assert base_v is not None
            for k in range(len(cb.cost[gi])):
                if k == pick[gi] or not cb.allowed[gi][k] or (ranks and not lo <= ranks[gi][k] <= hi):
                    continue
                v = _usage(cb, gi, k, flag)
                if v is None:
                    continue
                dv = v - base_v
                if dv[r] >= 0:
                    continue
                others = total + dv - budget
                others[r] = 0
                if (others > 1e-9).any() and ((dv > 0) & (others > 0)).any():
                    continue
                score = (cb.cost[gi][k] - cb.cost[gi][pick[gi]]) / -dv[r]
                if best is None or score < best[0]:
                    best = (score, gi, k, v)
        move_unit: tuple[int, str] | None = None
        if best is None or best[0] > 0:
            for u in cb.unit_list:  # a unit to the other side of the full device, at no cost
                f2 = dict(flag)
                f2[u] = not flag.get(u, False)
                vs = [_usage(cb, g2, pick[g2], f2) for g2 in cb.unit_groups[u]]
                dvs = [v - c for v, c in zip(vs, (cur[g2] for g2 in cb.unit_groups[u]), strict=True)
                       if v is not None and c is not None]  # fmt: skip
                if len(dvs) != len(vs):
                    continue
                du = np.sum(dvs, axis=0)
                if du[r] >= 0 or (total + du - budget > 1e-9)[np.arange(len(du)) != r].any():
                    continue
                move_unit = u
                break
        if move_unit is not None:
            flag[move_unit] = not flag.get(move_unit, False)
            for g2 in cb.unit_groups[move_unit]:
                cur[g2] = _usage(cb, g2, pick[g2], flag)
        elif best is None:
            return None
        else:
            _, gi, k, v = best
            pick[gi], cur[gi] = k, v
        total = np.sum([c for c in cur if c is not None], axis=0)
    return _polish(cb, pairs, ranks, pick, flag), flag


def _polish(
    cb: _Contrib, pairs: list[tuple[int, int]], ranks: list[list[int]], pick: list[int],
    flag: dict[tuple[int, str], bool], *, max_moves: int = 20000,
) -> list[int]:  # fmt: skip
    """Spend what the budgets leave: repeatedly take the upgrade that saves the most cost per byte of
    the device it fills most (units stay where they are). Vectorized over every (group, option)."""
    gid_l: list[int] = []
    k_l: list[int] = []
    use_l: list[np.ndarray] = []
    ok_l: list[bool] = []
    cost_l: list[float] = []
    for gi, opts in enumerate(cb.cost):
        for k in range(len(opts)):
            v = _usage(cb, gi, k, flag)
            gid_l.append(gi)
            k_l.append(k)
            use_l.append(v if v is not None else np.full(len(cb.budgets), np.inf))
            ok_l.append(v is not None and cb.allowed[gi][k])
            cost_l.append(opts[k])
    if not gid_l:
        return pick
    gid = np.asarray(gid_l)
    kk = np.asarray(k_l)
    use = np.vstack(use_l)
    ok = np.asarray(ok_l)
    cost = np.asarray(cost_l)
    start = np.zeros(len(cb.cost), dtype=int)
    for gi in range(1, len(cb.cost)):
        start[gi] = start[gi - 1] + len(cb.cost[gi - 1])
    rank = np.asarray([ranks[g][k] for g, k in zip(gid_l, k_l, strict=True)]) if ranks else None
    pick = list(pick)
    cur_row = start + np.asarray(pick)
    finite = np.isfinite(cb.budgets)
    total = use[cur_row].sum(axis=0)
    for _ in range(max_moves):
        free = np.where(finite, cb.budgets - total, np.inf)
        d_use = use - use[cur_row][gid]
        d_cost = cost - cost[cur_row][gid]
        cand = ok & (d_cost < -1e-15) & (d_use <= free + 1e-6).all(axis=1)
        if rank is not None and pairs:
            lo = np.full(len(cb.cost), -(10**9))
            hi = np.full(len(cb.cost), 10**9)
            for dg, ug in pairs:
                lo[dg] = max(lo[dg], ranks[ug][pick[ug]] + 1)
                hi[ug] = min(hi[ug], ranks[dg][pick[dg]] - 1)
            cand &= (rank >= lo[gid]) & (rank <= hi[gid])
        if not cand.any():
            break
        frac_used = np.where(d_use > 0, d_use / np.maximum(np.where(np.isfinite(free), free, 1e30), 1.0), 0.0)
        score = d_cost / np.maximum(frac_used.max(axis=1), 1e-12)
        j = int(np.argmin(np.where(cand, score, np.inf)))
        g = int(gid[j])
        total = total + d_use[j]
        pick[g] = int(kk[j])
        cur_row[g] = j
    return pick


def _solve_milp(
    plan: QuantPlan, groups: list[_Group], per: list[list[_Option]], rig: _Rig | None, budget: int | None, *,
    down_step: bool, min_tg: float | None, time_limit: float, engine: Engine, exact_limit: int = 4000,
    baseline: float = 0.0,
) -> _Solution:  # fmt: skip
    """Exact MILP where it is small enough to prove in the time given; else (or when it runs out of
    time) the LP relaxation rounded and repaired, with its gap to the LP bound."""
    t0 = time.perf_counter()
    cb = _contributions(plan, groups, per, rig, budget, min_tg)
    pairs, ranks = _down_rank(engine, plan, groups, per, down_step)
    n_cols = sum(len(o) for o in cb.cost) + len(cb.unit_list) + sum(
        1 for gi in range(len(cb.cost)) for k in range(len(cb.cost[gi]))
        for _u, (_c, gv) in cb.units[gi][k].items()
        if gv is not None)  # fmt: skip

    def decode(x: np.ndarray, x_of: list[list[int]],
               y_of: dict[tuple[int, str], int]) -> tuple[list[int], dict[tuple[int, str], bool]]:
        picks = [int(np.argmax([x[c] for c in cs])) for cs in x_of]
        return picks, {u: bool(x[c] > 0.5) for u, c in y_of.items()}

    def objective(pick: list[int]) -> float:
        return float(sum(cb.cost[gi][k] for gi, k in enumerate(pick)))

    model = _build_model(cb, pairs, ranks)
    x_of, y_of = model.x_of, model.y_of
    exact = None
    if n_cols <= exact_limit:
        res = _run(model, integral=True, time_limit=time_limit)
        if res.x is not None:
            pick, flag = decode(res.x, x_of, y_of)
            gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
            if res.status == 0:
                status = "optimal" if gap <= 1e-6 else f"optimal within {100 * gap:.4f} % (HiGHS)"
                return _Solution(pick=pick, on_gpu=flag, objective=objective(pick), gap=gap, status=status,
                                 solver="milp (scipy HiGHS)", seconds=time.perf_counter() - t0)  # fmt: skip
            exact = (pick, flag, gap)
    res = _run(model, integral=False, time_limit=time_limit)
    if res.x is None:
        why = "infeasible" if res.status == 2 else res.message
        raise UsageError(
            f"no assignment satisfies the constraints ({why})",
            hint="a bigger target or budget, a smaller context, fewer constraints (--no-down-step, "
                 "--min-tg), "
            "or cheaper candidate types in the sensitivity table",
        )  # fmt: skip
    bound = float(res.fun) * model.scale
    x_lp = res.x
    cands: list[tuple[float, list[int], dict[tuple[int, str], bool], str]] = []
    # Few variables stay fractional in the LP of a multiple-choice knapsack (about one per capacity
    # row). Each way of rounding the fractional units gives a placement; with it fixed the rest is
    # two independent knapsacks whose LP is integral but for a group or two: fix the integral
    # groups, solve the fractional ones exactly, then spend what is left.
    yv = {u: float(x_lp[c]) for u, c in y_of.items()}
    ufrac = sorted((u for u, v in yv.items() if 1e-6 < v < 1 - 1e-6), key=lambda u: -abs(yv[u] - 0.5))[:3]
    placements = []
    for bits in range(1 << len(ufrac)):
        fu = {u: v > 0.5 for u, v in yv.items()}
        for j, u in enumerate(ufrac):
            fu[u] = bool(bits >> j & 1)
        placements.append(fu)
    for fu in placements:
        r2 = _run(model, integral=False, time_limit=time_limit, fixed_units=fu) if ufrac else res
        if r2.x is None:
            continue
        p2, _ = decode(r2.x, x_of, y_of)
        frac = {gi for gi, cs in enumerate(x_of) if max(r2.x[c] for c in cs) < 1 - 1e-6}
        fixed = {gi: p2[gi] for gi in range(len(x_of)) if gi not in frac}
        sub = _run(model, integral=True, time_limit=max(0.2, time_limit / 4), fixed=fixed, fixed_units=fu)
        if sub.x is None:
            got = _heuristic(cb, pairs, ranks, p2, fu)
            if got is not None:
                cands.append((objective(got[0]), got[0], got[1], "lp rounding + repair"))
            continue
        p3, _ = decode(sub.x, x_of, y_of)
        p3 = _polish(cb, pairs, ranks, p3, fu)
        cands.append((objective(p3), p3, fu, "lp relaxation, then milp over its fractional groups"))
    if exact is not None:
        cands.append((objective(exact[0]), exact[0], exact[1], "milp (scipy HiGHS, time limit)"))
    if not cands:
        raise UsageError("no feasible assignment was found",
                         hint="a bigger target or budget, or fewer constraints")
    obj, pick, flag, how = min(cands, key=lambda c: c[0])
    polished = _polish(cb, pairs, ranks, pick, flag)
    if objective(polished) < obj - 1e-15:
        pick, obj, how = polished, objective(polished), how + ", polished"
    # the gap in the predicted total (baseline + costs), against the LP bound
    den = abs(baseline + bound) or 1.0
    gap = max(0.0, (obj - bound) / den)
    status = f"within {100 * gap:.3f} % of the LP bound ({how})"
    return _Solution(pick=pick, on_gpu=flag, objective=obj, gap=gap, status=status, solver=how,
                     seconds=time.perf_counter() - t0)  # fmt: skip


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """HiGHS (scipy 1.17) writes debugging lines straight to the process's stdout: the library
    never prints, so file descriptors 1 and 2 point at /dev/null while it runs."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError):
            pass
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)
        os.close(devnull)


# --------------------------------------------------------------------------- applying a solution


def _apply(
    plan: QuantPlan, groups: list[_Group], per: list[list[_Option]], sol: _Solution, *, rig: _Rig | None,
) -> tuple[list[FitTensor], dict[str, str], dict[str, str | None]]:  # fmt: skip
    """The plan's tensors with the chosen types (and places): FitTensors, tensor -> type, tensor -> place."""
    cat = catalogue(plan.engine)
    types = {t.name: t.type for t in plan.tensors}
    places: dict[str, str | None] = {}
    for g, opts, k in zip(groups, per, sol.pick, strict=True):
        o = opts[k]
        for pos, i in enumerate(g.idx):
            t = plan.tensors[i]
            u = _unit_of(t.name, t.layer) if g.expert else None
            if rig is not None and u is not None and rig.unit_gpu:
                gpu = sol.on_gpu.get(u, False)
                assert not gpu or o.gpu_types is not None
                types[t.name] = o.gpu_types[pos] if gpu and o.gpu_types is not None else o.cpu_types[pos]
                places[t.name] = "gpu" if gpu else "cpu"
            elif rig is not None and rig.home.get(i, 0) != 0 and o.gpu_types is not None:
                types[t.name] = o.gpu_types[pos]
            else:
                types[t.name] = o.cpu_types[pos]
                if u is not None and rig is not None:
                    places[t.name] = "cpu"
    out = []
    for t in plan.tensors:
        typ = types[t.name]
        out.append(FitTensor(t.name, tuple(t.shape), typ, cat.get(typ).tensor_bytes(t.shape), t.layer,
                             places.get(t.name, t.place)))  # fmt: skip
    return out, types, places


def rules_for(
    plan: QuantPlan, types: dict[str, str], places: dict[str, str | None], controlled: Sequence[str]
) -> list[dict[str, str]]:
    """Recipe rules that write ``types`` for the ``controlled`` tensors: one per (kind, type, place)
    with its layer range; the variant extends the base, so every other tensor keeps its rule."""
    by: dict[tuple[str, str, str | None], list[int]] = {}
    singles: list[dict[str, str]] = []
    for name in controlled:
        m = _KIND_RE.match(name)
        typ = types[name]
        if m:
            by.setdefault((m.group(2), typ, places.get(name)), []).append(int(m.group(1)))
        else:
            stem = name[: -len(".weight")] if name.endswith(".weight") else name
            singles.append({"match": "^" + re.escape(stem).replace(r"\_", "_") + r"\.weight", "type": typ})
    rules = list(singles)
    for (kind, typ, place), layers in sorted(by.items(), key=lambda kv: (kv[0][0], min(kv[1]))):
        r = {"match": re.escape(kind).replace(r"\_", "_") + r"\.weight", "layers": format_layers(layers),
             "type": typ}
        if place:
            r["place"] = place
        rules.append(r)
    return rules


# --------------------------------------------------------------------------- the entry point


def solve(
    plan: QuantPlan,
    dims: ModelDims,
    target: HardwareTarget | None,
    *,
    settings: Settings,
    table: SensitivityTable | None = None,
    budget: int | None = None,
    min_tg: float | None = None,
    down_step: bool | None = None,
    repack: Repack = "auto",
    time_limit: float = 10.0,
    max_rounds: int = 8,
    has_imatrix: bool = True,
) -> Solved:
    """Solve for ``target`` (rig) or ``budget`` (tensor-data bytes); confirm with ``plan_fit``."""
    engine = plan.engine
    if (target is None) == (budget is None):
        raise UsageError("give a target or a tensor-data budget (one of them)", where="fit")
    notes: list[str] = []
    if table is not None:
        groups, gnotes = groups_from_table(plan, table)
        notes += gnotes
        if not groups:
            raise InputError("the sensitivity table names no tensor of this plan", where=table.source,
                             hint="measure it on this model (quantforge sensitivity)")  # fmt: skip
        baseline = table.baseline
    else:
        groups = groups_prior(plan, engine)
        baseline = 0.0
    use_down = down_step if down_step is not None else table is None
    controlled_idx = sorted({i for g in groups for i in g.idx})
    controlled = [plan.tensors[i].name for i in controlled_idx]
    rig: _Rig | None = None
    if target is not None:
        rig, _ref = _reference(plan, dims, target, settings, engine, set(controlled_idx))
        fixed_budget = None
    else:
        assert budget is not None
        fixed = sum(t.bytes for i, t in enumerate(plan.tensors) if i not in set(controlled_idx))
        fixed_budget = budget - fixed
        if fixed_budget <= 0:
            raise UsageError(f"the tensors the solver does not choose already take {fixed:,} bytes, over the "
                             f"budget of {budget:,}", where="--budget", hint="a bigger budget")  # fmt: skip
    per = _options(plan, groups, engine, rig=rig, repack=repack if target is not None else "never",
                   gpu_ok=bool(target is not None and target.gpu), has_imatrix=has_imatrix)  # fmt: skip
    if use_down:
        paired = {x for pair in _down_pairs(plan, groups) for x in pair}
    else:
        paired = set()
    per = _prune(per, paired)
    empty = [g.name for g, o in zip(groups, per, strict=True) if not o]
    if empty:
        raise InputError(f"no usable candidate type for group {empty[0]}",
                         where=table.source if table else "fit",
                         hint="the table's types must be writable for these tensors")  # fmt: skip
    report: FitReport | None = None
    rounds = 0
    best: tuple[Any, ...] | None = None
    while True:
        rounds += 1
        # aim a little above the speed asked for: the report rounds t/s to two decimals
        aim = min_tg * 1.002 if min_tg else None
        sol = _solve_milp(plan, groups, per, rig, fixed_budget, down_step=use_down, min_tg=aim,
                          time_limit=time_limit, engine=engine, baseline=baseline)  # fmt: skip
        fts, types, places = _apply(plan, groups, per, sol, rig=rig)
        if target is None:
            best = (fts, types, places, sol, None)
            break
        assert rig is not None
        report = plan_fit(fts, dims, target, settings=settings, engine=engine, advice=True,
                          max_ctx_cap=settings.n_ctx)  # fmt: skip
        short = [k for k, d in enumerate(report.devices) if d.headroom_bytes < 0]
        slow = min_tg is not None and report.tg_tokens_per_s < min_tg
        if not short and not slow:
            best = (fts, types, places, sol, report)
            # a generous fixed cost leaves room: try once to spend it, keep whichever fits
            spare = [d.headroom_bytes for d in report.devices]
            if rounds >= max_rounds or all(s <= 0.002 * d.capacity_bytes
                                           for s, d in zip(spare, report.devices,
                                                                                           strict=True)):
                break
            rig.budgets = [b + max(0, s) * 9 // 10 for b, s in zip(rig.budgets, spare, strict=True)]
            sol2 = _solve_milp(plan, groups, per, rig, None, down_step=use_down, min_tg=aim,
                               time_limit=time_limit, engine=engine, baseline=baseline)  # fmt: skip
            fts2, types2, places2 = _apply(plan, groups, per, sol2, rig=rig)
            rep2 = plan_fit(fts2, dims, target, settings=settings, engine=engine, advice=True,
                            max_ctx_cap=settings.n_ctx)  # fmt: skip
            rounds += 1
            if all(d.headroom_bytes >= 0
                   for d in rep2.devices) and not (min_tg and rep2.tg_tokens_per_s < min_tg):
                best = (fts2, types2, places2, sol2, rep2)
            break
        if rounds >= max_rounds:
            raise UsageError(
                f"the solver's answer still does not fit {target.name} after {rounds} rounds "
                f"({', '.join(report.devices[k].name for k in short) or 'too slow'})",
                hint="a smaller context or a bigger target",
            )  # fmt: skip
        for k in short:
            rig.budgets[k] += report.devices[k].headroom_bytes - (1 << 20) * rounds
        if slow and min_tg:
            rig.tg_fixed_s += 1.0 / report.tg_tokens_per_s - 1.0 / min_tg  # the model was optimistic by this
    assert best is not None
    fts, types, places, sol, report = best
    choices = []
    for g, opts, k in zip(groups, per, sol.pick, strict=True):
        o = opts[k]
        devs: dict[str, int] = {}
        if rig is not None:
            for i in g.idx:
                t = plan.tensors[i]
                pl = places.get(t.name)
                if pl == "gpu":
                    u = _unit_of(t.name, t.layer)
                    dev = rig.devices[rig.unit_gpu[u]] if u is not None else rig.devices[rig.home.get(i, 0)]
                elif pl == "cpu":
                    dev = "CPU"
                else:
                    dev = rig.devices[rig.home.get(i, 0)]
                devs[dev] = devs.get(dev, 0) + 1
        written = sum(catalogue(engine).get(types[plan.tensors[i].name]).tensor_bytes(plan.tensors[i].shape)
                      for i in g.idx)  # fmt: skip
        choices.append(GroupChoice(group=g.name, type=o.typ, cost=o.cost, bytes=written, devices=devs))
    predicted = baseline + sum(c.cost for c in choices)
    return Solved(tensors=fts, types=types, places=places, controlled=controlled, solution=sol, report=report,
                  choices=choices, notes=notes, baseline=baseline, predicted=predicted, rounds=rounds,
                  metric=table.metric if table is not None else "relative")  # fmt: skip


@dataclass
class Solved:
    """What ``solve`` found: the tensors as written, the rules' inputs, the confirming report."""

    tensors: list[FitTensor]
    types: dict[str, str]
    places: dict[str, str | None]
    controlled: list[str]
    solution: _Solution
    report: FitReport | None
    choices: list[GroupChoice]
    notes: list[str]
    baseline: float
    predicted: float
    rounds: int
    metric: str

    @property
    def tensor_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)


# --------------------------------------------------------------------------- over a recipe


def parse_budget(text: str, recipe: Recipe, inventory: TensorInventory) -> tuple[int, str]:
    """``"91.7 MB"`` / ``"85GiB"`` / ``12345`` bytes, or the tensor data of an ftype (``Q3_K_M``: the
    engine's own mixture of it) or of a variant of the recipe (``IQ4_KS``). Returns (bytes, what)."""
    try:
        return units.parse_size(text, bare=True), text
    except ValueError:
        pass
    try:
        r, name = with_base_variant(recipe, text)
    except RecipeError:
        raise UsageError(
            f"--budget {text!r} is neither a size nor a variant or ftype of this recipe",
            where="--budget", hint='write e.g. --budget "90 MB", --budget Q3_K_M or --budget IQ4_KS',
        ) from None  # fmt: skip
    p = expand(r, name, inventory, imatrix=False)
    return p.tensor_bytes, f"{name} ({p.tensor_bytes:,} bytes of tensor data)"


def solve_recipe(
    recipe_path: str | Path,
    *,
    target: str | Path | None = None,
    budget: str | None = None,
    settings: Settings,
    quant: str | None = None,
    name: str | None = None,
    sensitivity: str | Path | None = None,
    curve: str | Path | None = None,
    min_tg: float | None = None,
    down_step: bool | None = None,
    repack: Repack = "auto",
    write: bool = False,
    force: bool = False,
    verify: bool = False,
    verify_options: VerifyOptions | None = None,
    time_limit: float = 10.0,
) -> SolveResult:
    """Solve one variant of ``recipe_path`` for a target (or a tensor-data budget), optionally write
    it into the recipe and verify it (build, KLD) against the prediction."""
    t_start = time.perf_counter()
    recipe = load_recipe(recipe_path)
    _, dims = recipe_plans(recipe, recipe.quants[0].name)

    inv = recipe_inventory(recipe)
    table = None
    if sensitivity is not None:
        table = read_table(sensitivity, engine=recipe.engine, curve=curve,
                           tensors=[(t.name, tuple(t.shape)) for t in inv.tensors])  # fmt: skip
    base_ask = quant or (table.base_variant if table is not None and table.base_variant else None)
    recipe_b, base_name = (with_base_variant(recipe, base_ask) if base_ask
                           else (recipe, recipe.variant(None).name))
    uniform = base_name not in [q.name for q in recipe.quants]
    plan = expand(recipe_b, base_name, inv, imatrix=False)
    tgt = load_target(target) if target is not None else None
    budget_bytes, budget_what = parse_budget(budget, recipe, inv) if budget is not None else (None, None)
    if tgt is not None and budget_bytes is not None:
        raise UsageError("--target and --budget exclude each other", where="fit")
    has_imatrix = recipe.imatrix is not None and bool(recipe.imatrix.file or recipe.imatrix.corpus)
    solved = solve(plan, dims, tgt, settings=settings, table=table, budget=budget_bytes, min_tg=min_tg,
                   down_step=down_step, repack=repack, time_limit=time_limit,
                   has_imatrix=has_imatrix)  # fmt: skip
    rules = rules_for(plan, solved.types, solved.places, solved.controlled)
    vname = name or (f"FIT-{tgt.name}" if tgt is not None else f"FIT-{budget}".replace(" ", ""))
    section = QuantSection(
        name=vname, extends=None if uniform else base_name, ftype=base_name if uniform else None,
        default="mixture" if uniform else None,
        rules=[RuleSpec(match=r["match"], layers=r.get("layers"), type=r["type"],
                        place=r.get("place"))  # type: ignore[arg-type]
               for r in rules],
    )  # fmt: skip
    # the variant as the recipe will hold it must plan exactly what the solver chose
    check = derived_recipe(recipe, None, [], uniform=base_name if uniform else None, sections=[section])
    replanned = expand(check, vname, inv, imatrix=False)
    wrong = [t.name for t in replanned.tensors if t.type != solved.types[t.name]]
    if wrong:  # pragma: no cover - a defect in rules_for, never the user's input
        raise InputError(f"the emitted rules do not reproduce the solution ({len(wrong)} tensors, e.g. "
                         f"{wrong[0]})",
                         where=vname, hint="report this with the --json output")  # fmt: skip
    rep = solved.report
    weights = replanned.tensor_bytes
    head = min(d.headroom_bytes for d in rep.devices) if rep is not None else (
        budget_bytes - weights if budget_bytes is not None else None)  # fmt: skip
    how = (f"{table.metric} costs from {Path(str(sensitivity)).name} ({table.source})" if table is not None
           else "routed experts only, by a noise prior (elements x 2^-2bpw)")  # fmt: skip
    where_to = (f"fills {tgt.name} at -c {settings.n_ctx} ({rep.verdict})" if tgt is not None
                and rep is not None
                else f"fits a tensor-data budget of {budget_bytes:,} bytes ({budget_what})")  # fmt: skip
    sol = solved.solution
    comment = (
        f"quantforge fit: {vname} {where_to}: {weights / _GIB:.3f} GiB of tensor data ({weights:,} bytes); "
        f"predicted {solved.metric} {solved.predicted:.6f} (baseline {solved.baseline:.6f} + sum of group "
        "costs); "
        f"{how}; base {base_name}; {sol.solver} {sol.status} in {sol.seconds:.2f} s"
    )
    levels: dict[int, str] = {}
    if table is None:
        for t in plan.tensors:
            if expert_part(t.name) in ("gate", "up") and t.layer is not None:
                levels[t.layer] = _plain(plan.engine, solved.types[t.name]) or solved.types[t.name]
    written = None
    if write:
        add_variant(recipe_path, section, comment=comment, replace=force)
        written = str(recipe_path)
    verify_out = None
    if verify:
        verify_out = _verify(check, vname, predicted=solved.predicted, table=table,
                             options=verify_options or {},
                             force=force, comment=comment, recipe_path=Path(recipe_path))  # fmt: skip
    return SolveResult(
        name=vname, base=base_name, target=tgt.name if tgt is not None else None, budget_bytes=budget_bytes,
        n_ctx=settings.n_ctx if tgt is not None else None, rules=rules, choices=tuple(solved.choices),
        types=solved.types, tensor_bytes=weights, weights_bytes=weights, headroom_bytes=head,
        predicted=solved.predicted, metric=solved.metric, baseline=solved.baseline, solver=sol.solver,
        status=sol.status, gap=sol.gap, solve_seconds=round(time.perf_counter() - t_start, 3),
        iterations=solved.rounds, report=rep, levels=levels, written=written, comment=comment,
        notes=tuple(solved.notes), verify=verify_out,
    )  # fmt: skip


def _verify(
    recipe: Any, name: str, *, predicted: float, table: SensitivityTable | None, options: VerifyOptions,
    force: bool, comment: str, recipe_path: Path,
) -> dict[str, Any]:  # fmt: skip
    """Build the variant (build stage), measure its KLD (evaluate stage) as the table was measured,
    record both in its manifest (``fit`` section: predicted vs measured)."""
    corpus = options.get("corpus") or (table.corpus if table is not None else None)
    if corpus is None or not Path(corpus).is_file():
        raise UsageError("--verify needs the evaluation corpus the sensitivity was measured on",
                         where="--corpus", hint="pass --corpus FILE")  # fmt: skip
    engine_s = options.get("engine") or ((table.evaluator or "bundled").split()[0] if table is not None
                                         else "bundled")
    if engine_s not in ("ik", "mainline", "bundled"):  # a table imported from elsewhere names its own tool
        raise UsageError(f"--verify cannot measure with the table's evaluator {engine_s!r}",
                         where="--verify",
                         hint="--verify measures as its table was measured (ik, mainline or bundled): "
                              "measure one with `quantforge sensitivity`, or leave out --verify")  # fmt: skip
    engine = cast(EvalEngine, engine_s)
    ctx_n = options.get("ctx") or (table.ctx if table is not None and table.ctx else 512)
    chunks = options.get("chunks") or (table.chunks if table is not None else None)
    out_dir = options.get("out_dir")
    bctx = prepare_build(recipe, out_dir=Path(out_dir) if out_dir else None, bin_dir=options.get("bin_dir"),
                         threads=options.get("threads"))  # fmt: skip
    # one run per build folder, as `quantforge build` holds it (the manifest writes re-enter the lock)
    with folder_lock(bctx.out_dir, purpose=f"quantforge fit --verify {recipe_path.name}"):
        built = build_variant(bctx, name, force=force, split_max_bytes=None)
        res = evaluate(built.output, engine=engine, corpus=corpus, ctx=ctx_n, chunks=chunks,
                       base=bctx.base_path,
                       kld=True, threads=options.get("threads"), bin_dir=options.get("bin_dir"))  # fmt: skip
        assert res.kld is not None
        man = Path(built.manifest)
        record_in_manifest(man, res)
        err = (predicted - res.kld.mean) / res.kld.mean if res.kld.mean else 0.0
        fit_section = {
            "predicted_kld": predicted, "measured_kld": res.kld.mean, "measured_kld_err": res.kld.mean_err,
            "error": err, "model": "additive: baseline + sum of measured group costs",
            "sensitivity": table.source if table is not None else None, "comment": comment,
            "recipe": str(recipe_path),
        }  # fmt: skip
        update_manifest(man, fit=fit_section)
    return {"output": built.output, "manifest": str(man), "measured": res.kld.mean,
            "measured_err": res.kld.mean_err,
            "ppl": res.ppl, "error": err, "engine": res.engine, "chunks": res.chunks, "corpus": str(corpus)}
