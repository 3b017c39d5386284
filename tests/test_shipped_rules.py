"""The shipped recipes' rules mean what their comments say, as the real llama-quantize applies them.

Each shipped big-model recipe is pointed at a miniature of its architecture (same tensor names,
same row-length divisibility) and quantized with its engine's real ``llama-quantize``; the
written types must equal the plan, lint must not find a rule that matches more than it names,
and the tensors the comments talk about get the types the comments give them (``attn_output``
follows the ``attn_`` rule, not the ``output.weight`` one, which once matched it too).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.gguf_header import read_header
from quantforge.inventory import load_inventory
from quantforge.plan import expand, lint
from quantforge.recipe import load_recipe, parse_recipe
from quantforge.shipped import recipes_dir
from tests.support import TEST_CACHE, cached_quant

# recipe -> (miniature architecture, miniature layout)
_MINIS = {
    "deepseek-r1-0528.toml": ("deepseek2", "ik"),
    "kimi-k2-instruct.toml": ("deepseek2", "ik"),
    "qwen3-235b-a22b.toml": ("qwen3moe", "ik"),
    "glm-4.5-air.toml": ("glm4moe", "mainline"),
}


def _miniature(arch: str, layout: str) -> Path:
    from quantforge.miniature import write_miniature

    d = TEST_CACHE / "plan-mini"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{arch}-{layout}.gguf"
    if not p.is_file():
        write_miniature(arch, p, seed=1, layout=layout)  # type: ignore[arg-type]
    return p


def _on_miniature(name: str, base: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    text = (recipes_dir() / name).read_text()
    text = re.sub(r"(?m)^id = .*$", f'base = "{base}"', text, count=1)
    text = re.sub(r"(?ms)^\[imatrix\].*?(?=^\[)", "", text)  # the miniature has no imatrix
    return parse_recipe(text, path=str(tmp_path / name))


def test_every_shipped_recipe_has_a_miniature() -> None:
    shipped = {p.name for p in recipes_dir().glob("*.toml")} - {"smollm2-135m.toml"}
    assert shipped == set(_MINIS)


@pytest.mark.parametrize("name", sorted(_MINIS))
def test_shipped_rules_on_a_miniature_with_the_real_quantize(
    name: str, ik_quantize: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    arch, layout = _MINIS[name]
    base = _miniature(arch, layout)
    recipe = _on_miniature(name, base, tmp_path)
    engine = recipe.engine
    binary = ik_quantize if engine == "ik" else request.getfixturevalue("mainline_bin_dir") / "llama-quantize"
    inv = load_inventory(base, engine=engine)
    cat = catalogue(engine)
    checked = 0
    for v in recipe.quants:
        findings = lint(recipe, v.name, inv, imatrix=False)
        assert not [f for f in findings if f.code == "multi-kind"], [f.message for f in findings]
        if any(f.code == "needs-imatrix" for f in findings):
            continue  # iq1_s/iq2_xxs need importance data the miniature does not have
        plan = expand(recipe, v.name, inv, imatrix=False)
        out = cached_quant(binary, base, plan.ftype, extra=tuple(plan.quantize_args))
        written = {t.name: cat.by_id(t.type_id).name
                   for t in read_header(out).tensors}  # type: ignore[union-attr]
        assert written == {t.name: t.type for t in plan.tensors}, v.name
        assert out.stat().st_size == plan.file_bytes
        attn_rule = next((r for r in v.rules if r.match == "attn_"), None)
        output_rule = next((r for r in v.rules if "output" in r.match), None)
        if attn_rule is not None:
            attn_out = [t for t in plan.tensors if t.name.endswith(".attn_output.weight")]
            assert attn_out and {t.requested_type for t in attn_out} == {attn_rule.type}, v.name
        if output_rule is not None:
            assert (
                next(t for t in plan.tensors if t.name == "output.weight").requested_type == output_rule.type
            )
        checked += 1
    assert checked >= 2


def test_qwen3_attn_output_is_q8_0_as_the_comment_says() -> None:
    # "attention and the router stay high": attn_output got iq6_k from 'output\.weight' before.
    recipe = load_recipe(recipes_dir() / "qwen3-235b-a22b.toml")
    inv = load_inventory("Qwen/Qwen3-235B-A22B", engine="ik")
    for v in recipe.quants:
        plan = expand(recipe, v.name, inv, imatrix=False)
        attn_out = {t.type for t in plan.tensors if t.name.endswith(".attn_output.weight")}
        want = next(r.type for r in v.rules if r.match == "attn_")
        assert attn_out == {want}, v.name
        assert next(t for t in plan.tensors if t.name == "output.weight").type == "iq6_k"


def test_lint_names_the_kinds_a_rule_matches_and_the_rules_nothing_is_left_for() -> None:
    # The case: the Qwen3 recipe's 'output\.weight' also matched every attn_output.weight.
    text = (
        '[model]\nid = "Qwen/Qwen3-235B-A22B"\nengine = "ik"\n[[quant]]\nname = "v"\nftype = "IQ4_K"\n'
        "default = \"iq4_k\"\nrules = [ { match = 'output\\.weight', type = \"iq6_k\" }, "
        "{ match = '.*', type = \"iq4_k\" }, { match = 'ffn_', type = \"iq3_k\" } ]\n"
    )
    recipe = parse_recipe(text, path="q.toml")
    findings = {f.code: f for f in lint(recipe, None, load_inventory("Qwen/Qwen3-235B-A22B", engine="ik"),
                                        imatrix=False)}
    multi = findings["multi-kind"]
    assert multi.severity == "warning" and multi.where == "q.toml:8 quant[v].rules[0]"
    assert "matches 2 kinds of tensor: attn_output.weight ×94, output.weight ×1" in multi.message
    assert multi.count == 94 and multi.examples[0].endswith(".attn_output.weight")
    left = findings["nothing-left"]
    assert left.where == "q.toml:8 quant[v].rules[1]"
    assert "the 1 rule(s) after it and the default never apply" in left.message
    # Anchored, as the shipped recipes now write it: one kind, no warning.
    fixed = parse_recipe(text.replace("'output\\.weight'", "'^output\\.weight$'"), path="q.toml")
    assert "multi-kind" not in {f.code for f in lint(fixed, None, load_inventory("Qwen/Qwen3-235B-A22B",
                                                                                 engine="ik"),
                                                     imatrix=False)}  # fmt: skip
