"""Speed of the breakpoint matrix: every shipped recipe variant x every shipped target.

Usage: python bench/plan_matrix_speed.py [--recipes DIR ...]
Prints the number of cells, the expansion time (plan stage) and the fit time; the fit part
must stay under 1 s on the development machine (2 cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantforge.fit.api import breakpoint_matrix, recipe_plans  # noqa: E402
from quantforge.fit.report import Settings  # noqa: E402
from quantforge.recipe import load_recipe  # noqa: E402
from quantforge.targets import list_targets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [REPO / "recipes", REPO / "tests" / "data" / "fit"]
    files = sorted(p for d in dirs for p in d.glob("*.toml"))
    targets = list_targets()
    t0 = time.perf_counter()
    loaded = [recipe_plans(load_recipe(f)) for f in files]
    t1 = time.perf_counter()
    cells = 0
    for plans, dims in loaded:
        m = breakpoint_matrix(plans, dims, targets, settings=Settings(n_ctx=32768))
        cells += len(m.cells)
    t2 = time.perf_counter()
    print(
        f"{len(files)} recipes, {sum(len(p) for p, _ in loaded)} variants x {len(targets)} targets = {cells} cells"
    )
    print(f"expand {t1 - t0:.3f} s, fit matrix {t2 - t1:.3f} s, total {t2 - t0:.3f} s")
    return 0 if t2 - t1 < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
