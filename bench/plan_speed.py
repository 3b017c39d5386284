"""Time to expand every shipped recipe against its inventory (the plan stage only).

Usage: python bench/plan_speed.py [RECIPE.toml ...]   (default: recipes/*.toml)

Inventories are loaded first (not timed: that is the inventory stage); then each variant is
expanded ``--repeat`` times and the best time is kept. The acceptance line: Kimi-K2 (1096
tensors) x 5 variants under 100 ms after import on the 2-core development machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantforge.errors import QuantforgeError  # noqa: E402
from quantforge.plan import expand, recipe_inventory  # noqa: E402
from quantforge.recipe import load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPEAT = 5


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((REPO / "recipes").glob("*.toml"))
    total_best = 0.0
    worst_ok = True
    print(f"{'recipe':<28} {'tensors':>7} {'variants':>8} {'best ms':>9}")
    for f in files:
        r = load_recipe(f)
        try:
            inv = recipe_inventory(r)
        except QuantforgeError as exc:  # e.g. a local base not made yet
            print(f"{f.stem:<28} skipped: {exc.one_line()}")
            continue
        best = float("inf")
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            for q in r.quants:
                expand(r, q.name, inv)
            best = min(best, time.perf_counter() - t0)
        total_best += best
        ms = best * 1000
        flag = ""
        if "kimi" in f.name.lower():
            ok = ms < 100
            worst_ok &= ok
            flag = "  (limit 100 ms: " + ("ok" if ok else "TOO SLOW") + ")"
        print(f"{f.stem:<28} {len(inv.tensors):>7} {len(r.quants):>8} {ms:>9.1f}{flag}")
    print(f"{'all':<28} {'':>7} {'':>8} {total_best * 1000:>9.1f}")
    return 0 if worst_ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
