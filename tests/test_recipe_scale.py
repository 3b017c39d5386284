"""Recipe loading at scale: the generated recipes of ``bench/recipe_load.py`` load completely.

The time bound (under a second each) is measured by the bench script side by side with a
recipe a tenth the size; here only that they load, and into what.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import recipe_load  # noqa: E402

from quantforge.recipe import parse_recipe  # noqa: E402


def test_a_10000_rule_recipe_loads_with_every_rule_located() -> None:
    recipe = parse_recipe(recipe_load.many_rules(10_000), path="big.toml")
    rules = recipe.quants[0].rules
    assert len(rules) == 10_000
    # every rule knows its own TOML line (the header is 6 lines, then one rule per line)
    assert rules[0].where == "big.toml:7 quant[A].rules[0]"
    assert rules[9_999].where == "big.toml:10006 quant[A].rules[9999]"
    assert rules[1234].pattern == r"blk\.[4-6]\.blk\.4\.ffn_(down|up)_1234"


def test_a_1500_variant_extends_chain_loads_and_shares_the_inherited_rules() -> None:
    recipe = parse_recipe(recipe_load.chain(1500), path="chain.toml")
    last = recipe.variant("V1499")
    assert len(last.rules) == 1500 and last.default == "q8_0"
    assert [r.match for r in last.rules[:2]] == ["attn_q_1499", "attn_q_1498"]  # own rules first
    assert last.rules[1] is recipe.variant("V1498").rules[0]  # one Rule object, shared
