"""docs/published-quants.md is what the planner computes for published quants (tests/published_quants.py)."""

from __future__ import annotations

from pathlib import Path

from quantforge.plan import expand, lint, recipe_inventory
from quantforge.publish.dialects import import_dialect
from quantforge.recipe import parse_recipe
from tests.published_quants import END, ROWS, START, evaluate, plan_of, render

DOC = Path(__file__).parent.parent / "docs" / "published-quants.md"


def test_every_comparable_published_quant_is_within_tolerance_and_the_doc_says_so() -> None:
    results = [evaluate(r) for r in ROWS]
    assert len(results) >= 20
    comparable = [r for r in results if r.row.reason is None]
    assert [r.row.quant for r in comparable if not r.within or r.error] == []
    # The rows that cannot be compared are not quietly matching either: their reason stands.
    assert [r.row.quant for r in results if r.row.reason is not None and r.within] == []
    assert len(comparable) >= 20
    text = DOC.read_text()
    table = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    fix = "regenerate: PYTHONPATH=. python tests/published_quants.py --write " + str(DOC)
    assert table == render(results), fix


def test_published_rows_cover_the_issues_publishers_and_layouts() -> None:
    quants = " ".join(r.quant for r in ROWS)
    for who in ("Thireus", "bartowski", "lmganon123", "sokann"):
        assert who in quants
    # the mainline-layout DeepSeek recipe plans in the layout it was written for
    v31 = [evaluate(r) for r in ROWS if "DeepSeek-V3.1" in r.quant]
    assert len(v31) == 2 and all(r.within for r in v31)
    res = import_dialect(v31[0].row.spec[1], model="deepseek-ai/DeepSeek-V3.1")
    assert 'layout = "mainline"' in res.text  # its rules name attn_v_b and no attn_kv_b
    ik = import_dialect(v31[0].row.spec[1], model="deepseek-ai/DeepSeek-V3.1", layout="ik")
    recipe = parse_recipe(ik.text, path="v31-ik.toml")
    plan = expand(recipe, None, recipe_inventory(recipe), imatrix=False)
    # planned in ik's layout the 61 attn_kv_b tensors fall to the default: 1.01 GiB more
    assert round((plan.weight_bytes - plan_of(v31[0].row.spec).weight_bytes) / 2**30, 2) == 1.01
    kinds = {f.code for f in lint(recipe, None, recipe_inventory(recipe))}
    assert "layout-default" in kinds and "no-default" not in kinds
    # bartowski R1-0528: Q8_0 matches; the others are the drift the issue reports (0.26 % / 0.61 %)
    r1 = {r.row.quant.split()[-1]: r for r in (evaluate(x) for x in ROWS if "R1-0528" in x.quant
                                               and "bartowski" in x.quant)}
    assert r1["Q8_0"].within
    assert {k: round(-v.delta / v.row.value * 100, 2) for k, v in r1.items() if k != "Q8_0"} == {
        "Q6_K": 0.28, "Q5_K_M": 0.61, "Q5_K_S": 0.26, "Q4_1": 0.26}  # fmt: skip
