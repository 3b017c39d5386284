"""The mainline mixture as a function of the llama.cpp build (quantforge.plan._versions).

Published numbers decide: bartowski's DeepSeek-V3-0324 quants were made with b4944 from a legacy
(pre-MLA, attn_kv_b only) conversion; their sizes are those of the rule llama.cpp had until b8266,
where attn_kv_b takes no attn_v branch, not of today's. Source: the model card
(https://huggingface.co/bartowski/deepseek-ai_DeepSeek-V3-0324-GGUF, "Using llama.cpp release b4944"):
Q8_0 713.29GB, Q6_K 550.80GB, Q5_K_M 475.40GB, Q5_K_S 461.81GB, Q4_1 419.94GB, Q4_K_M 404.43GB.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.errors import RecipeError
from quantforge.inventory import load_inventory
from quantforge.plan import ImatrixMeta, expand, lint, quantize_args_for
from quantforge.plan._versions import parse_engine_version, tensor_type_era
from quantforge.recipe import parse_recipe

BARTOWSKI_V3 = {"Q8_0": "713.29", "Q6_K": "550.80", "Q5_K_M": "475.40", "Q5_K_S": "461.81", "Q4_1": "419.94",
                "Q4_K_M": "404.43"}  # fmt: skip


def _mixture(ftype: str, version: str | None = None,
             model: str = "deepseek-ai/DeepSeek-V3-0324"):  # type: ignore[no-untyped-def]
    extra = f'engine_version = "{version}"\n' if version else ""
    text = (f'[model]\nid = "{model}"\nengine = "mainline"\nlayout = "legacy"\n{extra}[[quant]]\nname = "v"\n'
            f'ftype = "{ftype}"\ndefault = "mixture"\n')  # fmt: skip
    return parse_recipe(text, path="v3.toml")


@pytest.fixture(scope="module")
def legacy_v3():  # type: ignore[no-untyped-def]
    inv = load_inventory("deepseek-ai/DeepSeek-V3-0324", layout="legacy")
    assert inv.layout == "legacy" and len(inv.tensors) == 1025
    assert not any(t.name.endswith(("attn_k_b.weight", "attn_v_b.weight")) for t in inv.tensors)
    return inv


def _imatrix(inv):  # type: ignore[no-untyped-def]
    # bartowski quantizes with an importance matrix; its path and entries only size the header.
    return ImatrixMeta(
        path="imatrix.dat", entries=tuple(t.name for t in inv.tensors), chunks=125, dataset="x"
    )


def test_bartowski_v3_0324_b4944_sizes_follow_the_old_attn_kv_b_rule(legacy_v3) -> None:  # type: ignore[no-untyped-def]
    for ftype, published in BARTOWSKI_V3.items():
        plan = expand(_mixture(ftype, "b4944"), None, legacy_v3, imatrix=_imatrix(legacy_v3))
        assert f"{plan.file_bytes / 1e9:.2f}" == published, ftype
    # Today's rule (attn_kv_b in the attn_v category since b8266) plans other sizes for the two
    # mixtures whose attn_v gets use_more_bits.
    now = {f: expand(_mixture(f), None, legacy_v3, imatrix=_imatrix(legacy_v3)) for f in ("Q4_K_M", "Q5_K_M")}
    assert f"{now['Q4_K_M'].file_bytes / 1e9:.2f}" == "404.56"
    assert f"{now['Q5_K_M'].file_bytes / 1e9:.2f}" == "475.46"
    old = expand(_mixture("Q4_K_M", "b8265"), None, legacy_v3, imatrix=False)
    new = expand(_mixture("Q4_K_M", "b8266"), None, legacy_v3, imatrix=False)
    kv_b = {
        t.name: (t.type, u.type) for t, u in zip(old.tensors, new.tensors, strict=True) if t.type != u.type
    }
    assert set(kv_b) == {n for n in kv_b if n.endswith(".attn_kv_b.weight")} and len(kv_b) == 30
    assert set(kv_b.values()) == {("q4_K", "q6_K")}


def test_versions_parse_and_name_their_era() -> None:
    assert parse_engine_version("b5524") == parse_engine_version("5524") == parse_engine_version(5524) == 5524
    assert parse_engine_version(None) is None
    with pytest.raises(RecipeError, match="is not a llama.cpp build"):
        parse_engine_version("v1.2")
    assert [tensor_type_era(b) for b in (None, 9000, 8998, 7807, 7806, 6052, 6051, 5890, 5889, 5371,
                                         5370)] == [
        "current", "current", "first-differing-base", "first-differing-base", "last-unless-fallback",
        "last-unless-fallback", "last", "last", "first-differing-mixture", "first-differing-mixture",
        "first"]  # fmt: skip


def _smol_rules(
    smol_f16: Path, version: str | None, rules: str, default: str = "q4_K", ftype: str = "Q4_K_M"
):  # type: ignore[no-untyped-def]
    extra = f'engine_version = "{version}"\n' if version else ""
    text = (f'[model]\nbase = "{smol_f16}"\nengine = "mainline"\n{extra}[[quant]]\nname = "v"\nftype = '
            f'"{ftype}"\n'
            f'default = "{default}"\nrules = [{rules}]\n')  # fmt: skip
    return parse_recipe(text, path="r.toml")


def test_last_match_builds_get_the_rules_reversed_and_plan_the_same(smol_f16: Path) -> None:
    inv = load_inventory(smol_f16, engine="mainline")
    rules = "{ match = 'ffn_down', type = 'q8_0' }, { match = 'ffn_', type = 'q5_0' }"
    now = _smol_rules(smol_f16, None, rules, default="q8_0")
    last = _smol_rules(smol_f16, "b6000", rules, default="q8_0")
    assert quantize_args_for("mainline", now.quants[0], catalogue("mainline")) == [
        "--tensor-type", "ffn_down=q8_0", "--tensor-type", "ffn_=q5_0", "--tensor-type",
        ".*=q8_0"]  # fmt: skip
    p_last = expand(last, None, inv, imatrix=False)
    assert p_last.quantize_args == ["--tensor-type", ".*=q8_0", "--tensor-type", "ffn_=q5_0", "--tensor-type",
                                    "ffn_down=q8_0"]  # fmt: skip
    p_now = expand(now, None, inv, imatrix=False)
    # b6000 applies every matching pattern in turn: on the reversed list the last match is the
    # recipe's first, so every tensor gets what the recipe means.
    assert {t.name: t.type for t in p_last.tensors} == {t.name: t.type for t in p_now.tensors}


def test_fallback_era_keeps_overrides_out_of_fallen_back_tensors(smol_f16: Path) -> None:
    inv = load_inventory(smol_f16, engine="mainline")
    recipe = _smol_rules(smol_f16, "b7000", "{ match = 'attn_q', type = 'q8_0' }", default="q5_0")
    plan = expand(recipe, None, inv, imatrix=False)
    q = next(t for t in plan.tensors if t.name == "blk.0.attn_q.weight")
    # attn_q [576, 576]: the mixture's q4_K falls back to q5_0, and then --tensor-type is ignored.
    assert (q.type, q.rule) == ("q5_0", "mixture (its fallback keeps --tensor-type out)")
    down = next(t for t in plan.tensors if t.name == "blk.0.ffn_down.weight")  # 1536-wide rows: no fallback
    assert down.type == "q5_0" and down.rule == "default"
    # token_embd (tied, 576 wide) gets q8_0 from the mixture, no fallback, so the catch-all applies.
    assert next(t for t in plan.tensors if t.name == "token_embd.weight").type == "q5_0"


def test_first_differing_mixture_era_lets_a_same_type_match_fall_through(smol_f16: Path) -> None:
    inv = load_inventory(smol_f16, engine="mainline")
    # b5524: ffn_down's Q4_K_M mixture pick is q6_K on use_more_bits layers. A q6_K rule then
    # "matches without differing" and the scan goes on to the catch-all .*=q8_0.
    recipe = _smol_rules(smol_f16, "b5524", "{ match = 'ffn_down', type = 'q6_K' }", default="q8_0")
    plan = expand(recipe, None, inv, imatrix=False)
    by = {t.name: t for t in plan.tensors}
    bumped = by["blk.0.ffn_down.weight"]  # layer 0 < 30/8: more bits
    plain = by["blk.4.ffn_down.weight"]
    assert (bumped.type, bumped.rule) == ("q8_0", "default")
    assert (plain.type, plain.rule) == ("q6_K", "rules[0]")
    f = next(x for x in lint(recipe, None, inv, imatrix=False) if x.code == "engine-version")
    assert f.severity == "warning" and "blk.0.ffn_down.weight" in f.examples


def test_old_builds_abort_on_an_override_the_rows_cannot_take(smol_f16: Path) -> None:
    inv = load_inventory(smol_f16, engine="mainline")
    with pytest.raises(RecipeError, match="writes --tensor-type types without the row-length fallback"):
        expand(
            _smol_rules(smol_f16, "b5000", "{ match = 'attn_q', type = 'q6_K' }"), None, inv, imatrix=False
        )
