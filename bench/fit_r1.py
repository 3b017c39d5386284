"""DeepSeek-R1 on 256gb-24gb at 32K: the joint solver over Thireus' imported table, timed.

Prints, side by side in one run: the solve (reference plan_fit, the knapsack, the confirming plan_fit)
repeated in a warm process, one plan_fit of the answer for scale, and the cold CLI command; then how
full each device is. Exit status 1 when the warm solve takes 2 s or more, or a device is left more
than 1 % empty, or the plan does not fit.

    python bench/fit_r1.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantforge.fit.api import recipe_inventory, recipe_plans  # noqa: E402
from quantforge.fit.report import Settings, plan_fit  # noqa: E402
from quantforge.fit.solver import solve  # noqa: E402
from quantforge.recipe import load_recipe  # noqa: E402
from quantforge.sensitivity.table import read_table  # noqa: E402
from quantforge.targets import load_target  # noqa: E402

R1 = REPO / "tests" / "data" / "fit" / "deepseek-r1-0528.toml"
DATA = REPO / "tests" / "data" / "sensitivity" / "thireus"
TABLE = DATA / "DeepSeek-V3.1-Terminus.kld_results.csv"
CURVE = DATA / "DeepSeek-V3.1-Terminus.group0.kld_results.csv"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--target", default="256gb-24gb")
    ap.add_argument("--ctx", type=int, default=32768)
    args = ap.parse_args()

    recipe = load_recipe(R1)
    plans, dims = recipe_plans(recipe, "IQ2_K_R4")
    plan = plans[0]
    inv = recipe_inventory(recipe)
    table = read_table(TABLE, engine="ik", curve=CURVE, tensors=[(t.name, tuple(t.shape)) for t in inv.tensors])
    target = load_target(args.target)
    s = Settings(n_ctx=args.ctx)
    solve(plan, dims, target, settings=s, table=table, has_imatrix=False)  # warm: imports, caches
    times, pf_times = [], []
    got = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        got = solve(plan, dims, target, settings=s, table=table, has_imatrix=False)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plan_fit(got.tensors, dims, target, settings=s, engine="ik")
        pf_times.append(time.perf_counter() - t0)
    assert got is not None and got.report is not None
    t0 = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "quantforge", "fit", str(R1), "--target", args.target, "--ctx", str(args.ctx),
         "--quant", "IQ2_K_R4", "--sensitivity", str(TABLE), "--curve", str(CURVE), "--json"],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    cold = time.perf_counter() - t0
    warm = statistics.median(times)
    pf = statistics.median(pf_times)
    print(f"DeepSeek-R1 IQ2_K_R4 base, {len(got.choices)} groups from {TABLE.name}, {args.target} at -c {args.ctx}")
    print(f"  solve (warm, median of {args.repeat}): {warm:.3f} s  [min {min(times):.3f}, max {max(times):.3f}]"
          f"  = {warm / pf:.1f}x one plan_fit ({pf * 1000:.0f} ms), {warm / 2.0:.2f}x the 2 s goal")
    print(f"  CLI, cold process (imports, reading the table, planning): {cold:.2f} s (exit {cli.returncode})")
    print(f"  solver: {got.solution.solver}; {got.solution.status}; {got.rounds} plan_fit confirmation(s)")
    print(f"  predicted KLD {got.predicted:.6f} (baseline {got.baseline:.6f})")
    ok = warm < 2.0 and got.report.verdict == "fits" and cli.returncode == 0
    for d in got.report.devices:
        pct = 100 * d.headroom_bytes / d.capacity_bytes
        print(f"  {d.name:6s} {d.total_bytes / 2**30:8.2f} GiB of {d.capacity_bytes / 2**30:8.2f} GiB: "
              f"{d.headroom_bytes / 2**20:9.1f} MiB left ({pct:.3f} %)")  # fmt: skip
        ok = ok and 0 <= pct <= 1.0
    print("OK" if ok else "FAILED: slower than 2 s, a device more than 1 % empty, or no fit")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
