"""Entry points over recipes: one fit report, and the breakpoint matrix (variants x targets)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine, catalogue
from quantforge.fit.dims import ModelDims, dims_from_hparams, extras_from_hparams
from quantforge.fit.placement import FitTensor, fit_tensors, prepare
from quantforge.fit.report import CommandPlan, FitReport, Settings, Verdict, plan_command, plan_fit
from quantforge.fit.validate import facts_from_header
from quantforge.gguf_header import read_header
from quantforge.inventory import load_source
from quantforge.inventory import (
    recipe_inventory as recipe_inventory,  # the fit stage's callers import it here
)
from quantforge.plan import QuantPlan, expand
from quantforge.recipe import Recipe, load_recipe
from quantforge.targets import HardwareTarget, list_targets, load_target


def recipe_plans(recipe: Recipe, quant: str | None = None) -> tuple[list[QuantPlan], ModelDims]:
    """Expanded plans of one (or every) variant and the model's dims."""
    inv = recipe_inventory(recipe)
    dims = dims_from_hparams(inv.arch, inv.hparams)
    names = [recipe.variant(quant).name] if quant else [q.name for q in recipe.quants]
    return [expand(recipe, n, inv, imatrix=False) for n in names], dims


def fit_recipe(
    recipe_path: str | Path,
    *,
    quant: str | None,
    target: str | Path,
    settings: Settings,
    placement: bool = False,
) -> FitReport:
    recipe = load_recipe(recipe_path)
    tgt = load_target(target)
    plans, dims = recipe_plans(recipe, quant)
    return plan_fit(plans[0], dims, tgt, settings=settings, engine=recipe.engine, with_placement=placement)


class MatrixCell(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    quant: str
    target: str
    verdict: Verdict
    headroom_bytes: int  # smallest headroom over the devices (negative: short)
    max_ctx: int
    tg_tokens_per_s: float
    file_bytes: int


class BreakpointMatrix(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    n_ctx: int
    quants: list[str]
    targets: list[str]
    cells: list[MatrixCell]


def breakpoint_matrix(
    plans: list[QuantPlan], dims: ModelDims, targets: list[HardwareTarget], *, settings: Settings,
    model: str = "",
) -> BreakpointMatrix:
    """Every plan x every target at ``settings`` (the model card's table)."""
    cells = []
    for p in plans:
        prep = prepare(fit_tensors(p), engine=p.engine, n_layer=dims.n_layer)
        for t in targets:
            r = plan_fit(p, dims, t, settings=settings, engine=p.engine, prepared=prep, advice=False)
            cells.append(
                MatrixCell(
                    quant=p.name, target=t.name, verdict=r.verdict,
                    headroom_bytes=min(d.headroom_bytes for d in r.devices), max_ctx=r.max_ctx,
                    tg_tokens_per_s=r.tg_tokens_per_s, file_bytes=p.file_bytes or p.tensor_bytes,
                )
            )  # fmt: skip
    return BreakpointMatrix(
        model=model,
        n_ctx=settings.n_ctx,
        quants=[p.name for p in plans],
        targets=[t.name for t in targets],
        cells=cells,
    )


def recipe_matrix(
    recipe_path: str | Path, *, targets_dir: str | Path | None, settings: Settings, quant: str | None = None
) -> BreakpointMatrix:
    recipe = load_recipe(recipe_path)
    plans, dims = recipe_plans(recipe, quant)
    model = recipe.model.name or recipe.model.id or str(recipe_path)
    return breakpoint_matrix(plans, dims, list_targets(targets_dir), settings=settings, model=model)


def plan_source_command(
    source: str | Path, command: str, *, quant: str | None = None, target: str | Path | None = None,
    engine: Engine | None = None, engine_build: int | None = None,
) -> CommandPlan:  # fmt: skip
    """``plan SOURCE --command …``: the buffers of a command line for a recipe variant (the
    planned tensors) or a GGUF (its own tensors and offsets: a local file, or any shard of a set)."""
    tgt = load_target(target) if target else None
    text = str(source)
    if Path(text).suffix.lower() == ".toml":
        recipe = load_recipe(text)
        inv = recipe_inventory(recipe)
        plans, dims = recipe_plans(recipe, quant or recipe.quants[0].name)
        eng: Engine = engine or recipe.engine
        ex = extras_from_hparams(inv.arch, inv.hparams, layout=inv.layout or "ik")
        return plan_command(fit_tensors(plans[0]), dims, command, engine=eng, target=tgt, extras=ex,
                            engine_build=engine_build)  # fmt: skip
    eng = engine or "ik"
    src = load_source(text, engine=eng)
    inv = src.inventory
    if src.kind == "gguf" and len({t.shard for t in inv.tensors}) == 1 and Path(text).is_file():
        f = facts_from_header(read_header(text), engine=eng)
        return plan_command(f.tensors, f.dims, command, engine=eng, target=tgt, extras=f.extras,
                            offsets=f.offsets, engine_build=engine_build)  # fmt: skip

    cat = catalogue(eng)
    tensors = []
    for t in inv.tensors:
        qt = cat.get(t.dtype)
        layer = int(t.name.split(".")[1]) if t.name.startswith("blk.") else None
        tensors.append(FitTensor(name=t.name, shape=tuple(t.shape), type=qt.name,
                                 bytes=qt.tensor_bytes(t.shape),
                                 layer=layer))  # fmt: skip
    dims = dims_from_hparams(inv.arch, inv.hparams)
    ex = extras_from_hparams(inv.arch, inv.hparams, layout=inv.layout or "ik")
    return plan_command(tensors, dims, command, engine=eng, target=tgt, extras=ex, engine_build=engine_build)
