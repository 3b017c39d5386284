"""Overhead of `quantforge build` over running the same `llama-quantize` command directly.

Interleaved runs on the SmolLM2 F16 base (made once, as `quantforge base` does) with the shipped
recipe ``recipes/smollm2-135m.toml`` (default variant IQ4_KS, with its imatrix): each round
runs the direct command (taken from the manifest of a first build) and
`quantforge build --force` in a fresh process, alternating which goes first.

The direct run is the same child quantforge starts, started the same way, so that the two
differ only by what quantforge adds (start-up, plan, verification, sha256, manifest):

- the same argument list, working folder (the imatrix's), environment (quantforge's own
  variables included) and stdin (closed), in a session of its own, stdout and stderr appended
  to a log file as quantforge's runner does;
- its output a new file in the same output folder, written under a ``.partial`` name and
  renamed into place, the previous round's output removed first (``--force`` does the same),
  never an existing file truncated and rewritten;
- ``os.sync()`` before every timed run, so that neither run pays for the other's dirty pages
  being written back.

Why the earlier version came out with the raw command slower than the wrapper that runs it:
quantforge's runner starts every tool in a session of its own (``start_new_session``), and Linux
schedules CPU time per session group (autogroup, ``/proc/sys/kernel/sched_autogroup_enabled``):
the raw command, run in the bench's own session, shared that group's share with whatever else
ran in the same session (the shell and its background jobs), while quantforge's llama-quantize
had a group to itself. A CPU-bound child beside two busy loops of its session took 4.5-6.5 s,
the same child in a session of its own 2.1-2.6 s (``start_new_session`` only, same machine, 2
loaded cores). The direct run now gets its own session too. It also wrote over the same file
every round, to ``/dev/null`` output, from another folder and without the sync; those are made
the same as well. Each round prints quantforge's own ``quantize_s`` (the child's wall time inside
quantforge, from the manifest), so a difference in the tool's own time shows apart from
quantforge's fixed cost.

Exits 1 when the median overhead is 5 % or more.

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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
           log: Path | None = None,
           before: Callable[[], None] | None = None, after: Callable[[], None] | None = None) -> float:
    """Wall seconds of ``before()``, ``cmd`` and ``after()``, after an untimed ``os.sync()``."""
    os.sync()  # no dirty pages of the previous run left to write back during this one
    t0 = time.perf_counter()
    if before is not None:
        before()
    with open(log or os.devnull, "ab") as out:
        subprocess.run(cmd, check=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                       stderr=subprocess.STDOUT, start_new_session=True)
    if after is not None:
        after()
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
    qf = [sys.executable, "-m", "quantforge", "build", str(recipe), "--quant", args.variant, "--base",
          str(base),
          "--out", str(out), "--threads", str(args.threads), "--no-progress", "--force", "--json"]
    _timed(qf, env=env)  # warm-up: caches the base sha256, gives the exact command
    man_path = next(out.glob(f"*-{args.variant}.gguf.manifest.json"))
    manifest = json.loads(man_path.read_text())
    final = out / f"direct-{Path(manifest['output']).name}"
    partial = final.with_name(final.name + ".partial")
    direct = list(manifest["command"])
    direct[-3] = str(partial)  # the same command, its output beside quantforge's, under a .partial name
    cwd = imatrix.parent  # quantforge runs llama-quantize in the imatrix' folder
    log = out / "direct.log"

    def clear() -> None:  # what --force removes before quantforge quantizes again
        for p in (partial, final):
            p.unlink(missing_ok=True)

    def run_direct() -> float:
        return _timed(direct, cwd=cwd, env=env, log=log, before=clear,
                      after=lambda: os.replace(partial, final))

    run_direct()  # warm-up of the page cache for both
    rows = []
    for i in range(args.rounds):
        order = ("direct", "quantforge") if i % 2 == 0 else ("quantforge", "direct")
        t: dict[str, float] = {}
        for what in order:
            t[what] = run_direct() if what == "direct" else _timed(qf, env=env)
        inner = json.loads(man_path.read_text())["timings"]
        rows.append({
            "round": i + 1,
            "direct_s": round(t["direct"], 3),
            "quantforge_s": round(t["quantforge"], 3),
            "quantforge_quantize_s": inner.get("quantize_s"),
            "overhead": round(t["quantforge"] / t["direct"] - 1, 4),
            "overhead_s": round(t["quantforge"] - t["direct"], 3),
        })  # fmt: skip
    med = statistics.median(r["overhead"] for r in rows)
    med_s = statistics.median(r["overhead_s"] for r in rows)
    tool = statistics.median(r["quantforge_quantize_s"] / r["direct_s"] - 1 for r in rows
                             if r["quantforge_quantize_s"])
    result = {
        "base_sha256_ok": manifest["base"]["sha256"] == SMOLLM2_F16_SHA256,
        "threads": args.threads,
        "command": direct,
        "rounds": rows,
        "median_overhead": round(med, 4),
        "median_overhead_s": round(med_s, 3),
        "median_tool_inside_vs_direct": round(tool, 4),
        "limit": args.limit,
        "ok": med < args.limit,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in rows:
            print(f"round {r['round']}: direct {r['direct_s']:.2f} s, quantforge {r['quantforge_s']:.2f} s "
                  f"(llama-quantize inside it {r['quantforge_quantize_s']:.2f} s), "
                  f"overhead {100 * r['overhead']:+.1f} %")
        print(f"median overhead {100 * med:+.2f} % ({med_s:+.2f} s: start-up, plan, verification, "
              "sha256 of the "
              f"output, manifest); llama-quantize inside quantforge vs direct {100 * tool:+.1f} % "
              f"(limit {100 * args.limit:.0f} %): {'ok' if result['ok'] else 'TOO HIGH'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
