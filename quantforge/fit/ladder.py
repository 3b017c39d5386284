"""``quantforge fit --ladder T1 T2 …``: one variant per target, each filling its rig, and the Pareto
front of tensor bytes against predicted KLD (the knapsack solved at evenly spaced byte budgets)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge.evaluate.plots import _plt, _save
from quantforge.fit.api import recipe_inventory
from quantforge.fit.report import Settings
from quantforge.fit.solver import (
    ParetoPoint,
    Repack,
    SolveResult,
    VerifyOptions,
    _options,
    _solve_milp,
    groups_from_table,
    groups_prior,
    solve_recipe,
)
from quantforge.plan import QuantPlan, expand
from quantforge.recipe import load_recipe
from quantforge.sensitivity.measure import with_base_variant
from quantforge.sensitivity.table import SensitivityTable, read_table
from quantforge.units import human_bytes


class LadderResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    variants: tuple[SolveResult, ...]
    front: tuple[ParetoPoint, ...]
    metric: str
    plot: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"{'variant':24s} {'target':16s} {'tensor data':>14s} "
                 f"{'predicted ' + self.metric:>18s}  status"]
        for v in self.variants:
            lines.append(f"{v.name:24s} {v.target or '-':16s} {human_bytes(v.tensor_bytes):>14s} "
                         f"{v.predicted:>18.6f}  {v.status}")  # fmt: skip
        lines += ["", f"Pareto front (tensor bytes vs predicted {self.metric}, the knapsack at each budget):",
                  f"{'budget':>14s} {'tensor data':>14s} {'predicted':>12s}"]  # fmt: skip
        for p in self.front:
            lines.append(f"{human_bytes(p.budget_bytes):>14s} {human_bytes(p.tensor_bytes):>14s} "
                         f"{p.predicted:>12.6f}"
                         + (f"  <- {p.label}" if p.label else ""))  # fmt: skip
        for v in self.variants:
            if v.written:
                lines.append(f"wrote variant {v.name} to {v.written}")
        lines += [f"plot: {p}" for p in self.plot]
        return "\n".join(lines)


def pareto_front(plan: QuantPlan, table: SensitivityTable | None, *, points: int = 16,
                 time_limit: float = 5.0) -> list[ParetoPoint]:  # fmt: skip
    """The best predicted metric at ``points`` tensor-data budgets from the smallest mixture to the
    largest."""
    engine = plan.engine
    groups = groups_from_table(plan, table)[0] if table is not None else groups_prior(plan, engine)
    per = _options(plan, groups, engine, rig=None, repack="never", gpu_ok=False)
    controlled = {i for g in groups for i in g.idx}
    fixed = sum(t.bytes for i, t in enumerate(plan.tensors) if i not in controlled)
    lo = sum(min(o.tensor_bytes for o in opts) for opts in per)
    hi = sum(max(o.tensor_bytes for o in opts) for opts in per)
    baseline = table.baseline if table is not None else 0.0
    out: list[ParetoPoint] = []
    for k in range(points):
        b = lo + (hi - lo) * k // max(1, points - 1)
        try:
            sol = _solve_milp(plan, groups, per, None, b, down_step=False, min_tg=None, time_limit=time_limit,
                              engine=engine)  # fmt: skip
        except Exception:  # noqa: BLE001 - an infeasible budget is simply not on the front
            continue
        used = sum(per[gi][k2].tensor_bytes for gi, k2 in enumerate(sol.pick))
        out.append(ParetoPoint(budget_bytes=fixed + b, tensor_bytes=fixed + used,
                               predicted=baseline + sol.objective))
    return out


def plot_front(front: Sequence[ParetoPoint], variants: Sequence[SolveResult], out: str | Path, *, metric: str,
               title: str | None = None) -> list[Path]:  # fmt: skip

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    gib = float(1 << 30)
    scale, unit = (gib, "GiB") if max((p.tensor_bytes for p in front), default=0) > gib else (float(1 << 20),
                                                                                              "MiB")
    ax.plot([p.tensor_bytes / scale for p in front], [p.predicted for p in front], "-o", ms=3,
            color="#1f77b4",
            label="Pareto front (predicted)")  # fmt: skip
    for v in variants:
        ax.plot([v.tensor_bytes / scale], [v.predicted], "s", color="#d62728", ms=7)
        ax.annotate(v.name, (v.tensor_bytes / scale, v.predicted), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)  # fmt: skip
        if v.verify:
            ax.plot([v.tensor_bytes / scale], [v.verify["measured"]], "x", color="#2ca02c", ms=8)
    ax.set_xlabel(f"tensor data ({unit})")
    ax.set_ylabel(f"predicted {metric}")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title or "quantforge fit: bytes vs predicted quality")
    paths = _save(fig, out)
    plt.close(fig)
    return paths


def solve_ladder(
    recipe_path: str | Path, targets: Sequence[str], *, settings: Settings, quant: str | None = None,
    sensitivity: str | Path | None = None, curve: str | Path | None = None, min_tg: float | None = None,
    down_step: bool | None = None, repack: Repack = "auto", write: bool = False, force: bool = False,
    plot: str | Path | None = None, budget_mode: bool = False, points: int = 16, time_limit: float = 10.0,
    verify: bool = False, verify_options: VerifyOptions | None = None,
) -> LadderResult:  # fmt: skip
    """One variant per target (or per budget with ``budget_mode``) and the Pareto front."""
    variants = []
    for t in targets:
        kw: dict[str, Any] = {"budget": t} if budget_mode else {"target": t}
        variants.append(solve_recipe(recipe_path, settings=settings, quant=quant, sensitivity=sensitivity,
                                     curve=curve, min_tg=min_tg, down_step=down_step, repack=repack,
                                     write=write,
                                     force=force, time_limit=time_limit, verify=verify,
                                     verify_options=verify_options,
                                     **kw))  # fmt: skip
    recipe = load_recipe(recipe_path)
    inv = recipe_inventory(recipe)
    table = (read_table(sensitivity, engine=recipe.engine, curve=curve,
                        tensors=[(x.name, tuple(x.shape)) for x in inv.tensors]) if sensitivity
                        else None)  # fmt: skip
    r, base = with_base_variant(recipe, variants[0].base)
    plan = expand(r, base, inv, imatrix=False)
    front = pareto_front(plan, table, points=points)
    metric = variants[0].metric
    labelled = list(front)
    for v in variants:
        labelled.append(ParetoPoint(budget_bytes=v.tensor_bytes, tensor_bytes=v.tensor_bytes,
                                    predicted=v.predicted,
                                    label=v.name))  # fmt: skip
    labelled.sort(key=lambda p: p.tensor_bytes)
    paths = plot_front(front, variants, plot, metric=metric) if plot else []
    return LadderResult(variants=tuple(variants), front=tuple(labelled), metric=metric,
                        plot=tuple(str(p) for p in paths))  # fmt: skip
