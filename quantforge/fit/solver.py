"""The fit solver: choose routed-expert types so a quant fills a target's memory budget.

Only routed experts move (they hold >90 % of a big MoE's bytes; attention, shared experts and
dense layers keep the starting variant's types, as the community does). Each MoE layer gets
a level on a ladder of types; ``ffn_down_exps`` is kept one step above ``ffn_gate/up_exps``.
Upgrades are taken in a fixed order and the longest prefix that still fits (weights + KV +
compute + margin on every device, via ``plan_fit``) wins: the order is monotone in bytes, so a
binary search over the prefix length needs ~10 memory evaluations.

Order of upgrades: without sensitivity data a bits-per-weight prior (raise every layer one
level before any layer gets two: equal marginal bytes, the lowest bpw gains most); with a CSV
of per-tensor KLD (``tensor,kld``) the most sensitive layers are raised first.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import InputError, UsageError
from quantforge.fit.placement import FitTensor, expert_part, fit_tensors, prepare
from quantforge.fit.report import FitReport, Settings, plan_fit

#: Ladders (low -> high bpw). ik: CUDA-capable row-interleaved types, so any layer may go to a GPU.
LADDERS: dict[str, tuple[str, ...]] = {
    "ik": ("iq1_s_r4", "iq2_k_r4", "iq3_k_r4", "iq4_ks_r4", "iq5_ks_r4", "q8_0"),
    "mainline": ("iq1_s", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq3_s", "iq4_xs", "q5_K", "q6_K", "q8_0"),
}
_GIB = 1 << 30


class SolveResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    base: str
    target: str
    n_ctx: int
    levels: dict[int, str]  # layer -> gate/up type (down is one step above)
    rules: list[dict[str, str]]
    weights_bytes: int
    headroom_bytes: int
    report: FitReport
    written: str | None = None
    comment: str

    def summary(self) -> str:
        lines = [self.comment, "", "rules:"]
        lines += [f"  {r}" for r in self.rules]
        if self.written:
            lines.append(f"wrote variant {self.name} to {self.written}")
        return "\n".join(lines)


def read_sensitivity(path: str | Path) -> dict[int, float]:
    """Per-layer sensitivity (sum of the KLD of its routed-expert tensors) from ``tensor,kld`` rows."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("no such sensitivity file", where=str(p), hint="a CSV of tensor,kld rows")
    out: dict[int, float] = {}
    from quantforge.paths import MAX_JSON_BYTES, read_input_text

    text = read_input_text(p, what="sensitivity file", max_bytes=MAX_JSON_BYTES)
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].startswith("#") or row[0] == "tensor":
            continue
        try:
            m = re.match(r"blk\.(\d+)\.", row[0])
            kld = float(row[1])
        except (IndexError, ValueError):
            raise InputError(
                "expected tensor,kld", where=f"{p}:{n}", hint="write one tensor,kld row per line"
            ) from None
        if m and expert_part(row[0]):
            out[int(m.group(1))] = out.get(int(m.group(1)), 0.0) + kld
    return out


def _with_levels(
    base: list[FitTensor], engine: Engine, ladder: tuple[str, ...], levels: dict[int, int]
) -> list[FitTensor]:
    cat = catalogue(engine)
    out = []
    for t in base:
        part = expert_part(t.name)
        if part is None or t.layer not in levels:
            out.append(t)
            continue
        lvl = levels[t.layer] + (1 if part == "down" else 0)
        typ = ladder[min(lvl, len(ladder) - 1)]
        typ, _ = cat.resolve(typ, t.shape, tensor_name=t.name)
        out.append(FitTensor(t.name, t.shape, typ, cat.get(typ).tensor_bytes(t.shape), t.layer, t.place))
    return out


def solve(
    plan: Any,
    dims: Any,
    target: Any,
    *,
    settings: Settings,
    engine: Engine,
    sensitivity: dict[int, float] | None = None,
) -> tuple[dict[int, int], FitReport, list[FitTensor]]:
    ladder = LADDERS[engine]
    base = fit_tensors(plan)
    layers = sorted({t.layer for t in base if expert_part(t.name) and t.layer is not None})
    if not layers:
        raise UsageError("the model has no routed experts to fit", hint="quantforge fit is for MoE models")
    top = len(ladder) - 2  # gate/up's highest level keeps down one above it
    if sensitivity:
        order_layers = sorted(layers, key=lambda x: -sensitivity.get(x, 0.0))
    else:
        order_layers = layers
    steps: list[tuple[int, int]] = [(layer, lvl) for lvl in range(1, top + 1) for layer in order_layers]

    def levels_for(k: int) -> dict[int, int]:
        lv = dict.fromkeys(layers, 0)
        for layer, lvl in steps[:k]:
            lv[layer] = lvl
        return lv

    def report(k: int) -> tuple[FitReport, list[FitTensor]]:
        ts = _with_levels(base, engine, ladder, levels_for(k))
        prep = prepare(ts, engine=engine, n_layer=dims.n_layer)
        r = plan_fit(ts, dims, target, settings=settings, engine=engine, prepared=prep, advice=False,
                     max_ctx_cap=settings.n_ctx)  # fmt: skip
        return r, ts

    r0, ts0 = report(0)
    if r0.verdict != "fits":
        return levels_for(0), r0, ts0
    lo, hi = 0, len(steps)
    r_hi, ts_hi = report(hi)
    if r_hi.verdict == "fits":
        return levels_for(hi), r_hi, ts_hi
    best = (r0, ts0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r, ts = report(mid)
        if r.verdict == "fits":
            lo, best = mid, (r, ts)
        else:
            hi = mid
    return levels_for(lo), best[0], best[1]


def _rules(levels: dict[int, int], ladder: tuple[str, ...]) -> list[dict[str, str]]:
    from quantforge.recipe import layers_regex  # noqa: F401  (same layer syntax as recipes)

    by_level: dict[int, list[int]] = {}
    for layer, lvl in levels.items():
        by_level.setdefault(lvl, []).append(layer)
    rules = []
    for lvl in sorted(by_level, reverse=True):
        spec = _ranges(sorted(by_level[lvl]))
        rules.append(
            {"match": "ffn_down_exps", "layers": spec, "type": ladder[min(lvl + 1, len(ladder) - 1)]}
        )
        rules.append({"match": "ffn_(gate|up)_exps", "layers": spec, "type": ladder[lvl]})
    return rules


def _ranges(xs: list[int]) -> str:
    out = []
    start = prev = xs[0]
    tail: list[int | None] = [*xs[1:], None]
    for x in tail:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def solve_recipe(
    recipe_path: str | Path,
    *,
    target: str | Path,
    settings: Settings,
    quant: str | None = None,
    name: str | None = None,
    sensitivity: str | Path | None = None,
    write: bool = False,
    force: bool = False,
) -> SolveResult:
    from quantforge.fit.api import recipe_plans
    from quantforge.recipe import QuantSection, RuleSpec, add_variant, load_recipe
    from quantforge.targets import load_target

    recipe = load_recipe(recipe_path)
    tgt = load_target(target)
    plans, dims = recipe_plans(recipe, quant)
    base = plans[0]
    engine: Engine = recipe.engine
    sens = read_sensitivity(sensitivity) if sensitivity else None
    levels, rep, ts = solve(base, dims, tgt, settings=settings, engine=engine, sensitivity=sens)
    ladder = LADDERS[engine]
    rules = _rules(levels, ladder)
    vname = name or f"FIT-{tgt.name}"
    weights = sum(t.bytes for t in ts)
    head = min(d.headroom_bytes for d in rep.devices)
    how = "per-tensor KLD from " + str(sensitivity) if sensitivity else "a bits-per-weight prior"
    comment = (
        f"quantforge fit: {vname} fills {tgt.name} at -c {settings.n_ctx} ({rep.verdict}): "
        f"{weights / _GIB:.2f} GiB of weights, smallest headroom {head / _GIB:.2f} GiB; routed experts from the "
        f"ladder {', '.join(ladder)} (ffn_down one step above gate/up), ordered by {how}; other tensors as in {base.name}"
    )
    written = None
    if write:
        if rep.verdict != "fits":
            raise UsageError(
                f"even the lowest ladder step does not fit {tgt.name} at -c {settings.n_ctx}",
                hint=rep.cheapest_change or "choose a bigger target",
            )
        variant = QuantSection(
            name=vname, extends=base.name, description=comment,
            rules=[RuleSpec(match=r["match"], layers=r["layers"], type=r["type"]) for r in rules],
        )  # fmt: skip
        add_variant(recipe_path, variant, comment=comment, replace=force)
        written = str(recipe_path)
    return SolveResult(
        name=vname, base=base.name, target=tgt.name, n_ctx=settings.n_ctx,
        levels={k: ladder[v] for k, v in levels.items()}, rules=rules, weights_bytes=weights,
        headroom_bytes=head, report=rep, written=written, comment=comment,
    )  # fmt: skip
