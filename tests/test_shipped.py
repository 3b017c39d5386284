"""The shipped recipes and targets work together: every variant x every target gets a verdict."""

from __future__ import annotations

import pytest

from quantforge.fit.api import breakpoint_matrix, recipe_plans
from quantforge.fit.report import Settings
from quantforge.recipe import load_recipe
from quantforge.shipped import recipes_dir
from quantforge.targets import list_targets

SHIPPED = sorted(p.name for p in recipes_dir().glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_variant_gets_a_verdict_on_every_shipped_target(name: str) -> None:
    recipe = load_recipe(recipes_dir() / name)
    plans, dims = recipe_plans(recipe)
    targets = list_targets()
    assert len(targets) >= 10
    m = breakpoint_matrix(plans, dims, targets, settings=Settings(n_ctx=32768))
    assert len(m.cells) == len(recipe.quants) * len(targets)
    assert {c.verdict for c in m.cells} <= {"fits", "fits_smaller_ctx", "does_not_fit"}
    for c in m.cells:
        if c.verdict == "fits":
            assert c.headroom_bytes >= 0 and c.max_ctx >= 32768


def test_deepseek_ladder_verdicts_by_hand() -> None:
    recipe = load_recipe(recipes_dir() / "deepseek-r1-0528.toml")
    plans, dims = recipe_plans(recipe)
    gib = {p.name: p.tensor_bytes / 2**30 for p in plans}
    assert 660 < gib["Q8_0"] < 670 and 130 < gib["IQ1_S_R4"] < 140
    m = breakpoint_matrix(plans, dims, list_targets(), settings=Settings(n_ctx=32768))
    cell = {(c.quant, c.target): c.verdict for c in m.cells}
    # ~136 GiB of weights: 256 GB RAM + 24 GB VRAM holds it at 32k; 64 GB + 24 GB does not.
    assert cell[("IQ1_S_R4", "256gb-24gb")] == "fits"
    assert cell[("IQ1_S_R4", "64gb-24gb")] == "does_not_fit"
    # ~226 GiB: the 256 GB + 24 GB breakpoint the IQ2_K_R4 size is made for.
    assert cell[("IQ2_K_R4", "256gb-24gb")] == "fits"
    assert cell[("IQ2_K_R4", "128gb-24gb")] == "does_not_fit"
    # ~665 GiB of q8_0 fits no shipped rig that is not a server.
    servers = {t.name for t in list_targets() if getattr(t, "server", False)}
    assert servers, "some shipped targets are marked server = true"
    for t in list_targets():
        if t.name not in servers:
            assert cell[("Q8_0", t.name)] == "does_not_fit", t.name
