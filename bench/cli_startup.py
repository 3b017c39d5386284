"""`quantforge --help` start-up of this tree beside another revision (default: ``main``), side by side.

The baseline's package is taken from git (``git archive REV quantforge``) into a temporary folder,
so neither checkout is written to; both run as ``python -m quantforge --help`` with
``PYTHONPATH`` pointing at their copy, from bytecode (one untimed run each compiles it first),
interleaved and counterbalanced (A B, B A, ...) so that a drift of the machine favours neither.
Prints the median of each and their ratio; exits 1 when this tree is more than ``--limit``
(10 %) slower.

    python bench/cli_startup.py [--baseline main] [--rounds 30] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _extract(rev: str, dest: Path) -> Path:
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "quantforge"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _run(root: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantforge", "--help"], check=True, stdout=subprocess.DEVNULL,
                   env={**env, "PYTHONPATH": str(root)}, cwd=root)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--limit", type=float, default=0.10, help="largest slowdown accepted (fraction)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package runs from bytecode
    with tempfile.TemporaryDirectory(prefix="qf-startup-") as tmp:
        base = _extract(args.baseline, Path(tmp) / "baseline")
        this = Path(tmp) / "this"
        this.mkdir()
        (this / "quantforge").symlink_to(REPO / "quantforge")
        for root in (base, this):
            _run(root, env)  # compiles the bytecode, warms the page cache
        times: dict[str, list[float]] = {"baseline": [], "this": []}
        for i in range(args.rounds):
            order = (("baseline", base), ("this", this)) if i % 2 == 0 else (("this", this), ("baseline",
                                                                                              base))
            for name, root in order:
                times[name].append(_run(root, env))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["this"] / med["baseline"]
    result = {
        "baseline": args.baseline,
        "rounds": args.rounds,
        "baseline_median_s": round(med["baseline"], 4),
        "this_median_s": round(med["this"], 4),
        "ratio": round(ratio, 4),
        "limit": args.limit,
        "ok": ratio <= 1 + args.limit,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"quantforge --help: {args.baseline} {1000 * med['baseline']:.1f} ms, this tree "
              f"{1000 * med['this']:.1f} ms (median of {args.rounds}), ratio {ratio:.3f} "
              f"(limit {1 + args.limit:.2f}): {'ok' if result['ok'] else 'TOO SLOW'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
