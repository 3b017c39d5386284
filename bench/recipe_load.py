"""Recipe loading is linear in the recipe's size: 10,000 rules, and a 1,500-variant ``extends`` chain.

Usage: python bench/recipe_load.py

Loads generated recipes of growing size (1,000 / 10,000 rules in one variant; 150 / 1,500
variants each extending the previous one and adding a rule, so the last variant has 1,500
rules) with ``parse_recipe``, best of three, and prints the seconds and the ratio of the large
to the small one (10 for linear growth, 100 for quadratic). Acceptance: the 10,000-rule recipe
and the 1,500-variant chain each load in under a second. Exit status 1 on a miss.

Timings on the 2-core development machine are noisy when others run tests; rerun before
believing a miss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LIMIT_S = 1.0

HEAD = '[model]\nid = "HuggingFaceTB/SmolLM2-135M-Instruct"\n'


def many_rules(n: int) -> str:
    rules = ",\n".join(
        f"  {{ match = 'blk\\.{i % 30}\\.ffn_(down|up)_{i}', layers = \"{i % 30}-{i % 30 + 2}\", type = \"q8_0\" }}"
        for i in range(n)
    )
    return f'{HEAD}[[quant]]\nname = "A"\ndefault = "q8_0"\nrules = [\n{rules}\n]\n'


def chain(n: int) -> str:
    parts = [HEAD]
    for i in range(n):
        parts.append(f'[[quant]]\nname = "V{i}"\n' + ('default = "q8_0"\n' if i == 0 else f'extends = "V{i - 1}"\n'))
        parts.append(f"rules = [ {{ match = 'attn_q_{i}', type = \"q6_0\" }} ]\n")
    return "".join(parts)


def best(text: str) -> tuple[float, int]:
    from quantforge.recipe import parse_recipe
    from quantforge.regex_dialect import check

    times = []
    for _ in range(3):
        check.cache_clear()  # every run checks every regex again
        t0 = time.perf_counter()
        recipe = parse_recipe(text, path="bench.toml")
        times.append(time.perf_counter() - t0)
    return min(times), sum(len(q.rules) for q in recipe.quants)


def main() -> int:
    failed = 0
    for label, small, large, n_small, n_large in (
        ("rules in one variant", many_rules(1000), many_rules(10_000), 1000, 10_000),
        ("variants in an extends chain", chain(150), chain(1500), 150, 1500),
    ):
        t_small, _ = best(small)
        t_large, resolved = best(large)
        verdict = "ok" if t_large < LIMIT_S else f"MISS (limit {LIMIT_S:.0f} s)"
        failed += t_large >= LIMIT_S
        print(f"{n_large:>6} {label}: {t_large:.3f} s ({resolved} resolved rules); {n_small}: {t_small:.3f} s; "
              f"ratio {t_large / t_small:.1f} for 10x the size (linear: 10) — {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
