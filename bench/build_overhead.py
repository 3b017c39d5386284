"""Overhead of `quantforge build` over running the same `llama-quantize` command directly.

Interleaved runs on the SmolLM2 F16 base (made once, as `quantforge base` does) with the shipped
recipe ``recipes/smollm2-135m.toml`` (default variant IQ4_KS, with its imatrix): each round
runs the direct command (taken from the manifest of a first build) and
`quantforge build --force` in a fresh process, alternating which goes first. Reports per-round ratios and the median
overhead; exits 1 when it is 5 % or more.

    python bench/build_overhead.py [--rounds 7] [--variant IQ4_KS] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--variant", default="IQ4_KS")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limit", type=float, default=0.05, help="maximum median overhead (fraction)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from quantforge.acquire import SMOLLM2_F16_SHA256, dequantize_gguf, smollm2_q4_1_path

    work = Path(tempfile.mkdtemp(prefix="qf-bench-"))
    cache = Path(os.environ.get("QUANTFORGE_TEST_CACHE", REPO / ".qf-cache"))
    base = cache / "smol-f16.gguf"
    if not base.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        dequantize_gguf(smollm2_q4_1_path(), base, dtype="f16")
    recipe = REPO / "recipes" / "smollm2-135m.toml"
    imatrix = recipe.parent / "smollm2-135m.imatrix"
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # An installed quantforge runs from bytecode (pip compiles it); a sandbox that sets
    # PYTHONDONTWRITEBYTECODE would make every run recompile ~30 modules (~70 ms) instead.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    qf = [
        sys.executable,
        "-m",
        "quantforge",
        "build",
        str(recipe),
        "--quant",
        args.variant,
        "--base",
        str(base),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--no-progress",
        "--force",
    ]
    _run(qf, env=env)  # warm-up: caches the base sha256, gives the exact command
    manifest = json.loads(next(out.glob(f"*-{args.variant}.gguf.manifest.json")).read_text())
    direct = list(manifest["command"])
    direct[-3] = str(work / "direct.gguf")  # same command, another output file
    cwd = imatrix.parent  # quantforge runs llama-quantize in the imatrix' folder
    _run(direct, cwd=cwd)  # warm-up of the page cache for both
    rows = []
    for i in range(args.rounds):
        order = ("direct", "quantforge") if i % 2 == 0 else ("quantforge", "direct")
        t: dict[str, float] = {}
        for what in order:
            t[what] = _run(direct, cwd=cwd) if what == "direct" else _run(qf, env=env)
        rows.append(
            {
                "round": i + 1,
                "direct_s": round(t["direct"], 3),
                "quantforge_s": round(t["quantforge"], 3),
                "overhead": round(t["quantforge"] / t["direct"] - 1, 4),
                "overhead_s": round(t["quantforge"] - t["direct"], 3),
            }
        )
    med = statistics.median(r["overhead"] for r in rows)
    med_s = statistics.median(r["overhead_s"] for r in rows)
    result = {
        "base_sha256_ok": manifest["base"]["sha256"] == SMOLLM2_F16_SHA256,
        "threads": args.threads,
        "command": direct,
        "rounds": rows,
        "median_overhead": round(med, 4),
        "median_overhead_s": round(med_s, 3),
        "limit": args.limit,
        "ok": med < args.limit,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in rows:
            print(
                f"round {r['round']}: direct {r['direct_s']:.2f} s, quantforge {r['quantforge_s']:.2f} s, overhead {100 * r['overhead']:+.1f} %"
            )
        print(
            f"median overhead {100 * med:+.2f} % ({med_s:+.2f} s, a fixed cost: start-up, plan, verification, "
            f"sha256 of the output) (limit {100 * args.limit:.0f} %): {'ok' if result['ok'] else 'TOO HIGH'}"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
