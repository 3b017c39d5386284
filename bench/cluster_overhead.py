"""A ladder built on a real Ray cluster vs locally: wall time and overhead per task, side by side.

Starts a loopback cluster (``tests/support/ray_cluster.py``: a head without CPUs and one worker
node per variant, each a separate raylet with its own scratch folder), then builds the same
SmolLM2 ladder (the shipped recipe's variants, or ``--variants``) locally and on the cluster,
alternating which goes first, into fresh folders each round. Local and cluster builds use the
same threads per variant (``--threads``, default 1); locally the variants run one after the other,
on the cluster one per node at once. Every cluster output is checked against the local one
(sha256) before a time is printed.

Per task, the overhead is what the driver waited for a variant beyond the node's own build
(its manifest's ``timings.total_s``: quantize, verify, hash): scheduling, the worker's start,
shipping the imatrix, pulling the output back and checking it. With ``--shared`` the outputs are
written into a shared folder instead of pulled back.

    python bench/cluster_overhead.py [--rounds 1] [--variants IQ4_KS,IQ2_KS] [--threads 1] [--shared] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default="IQ4_KS,IQ2_KS",
                    help="comma-separated (default: two of the shipped three)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shared", action="store_true", help="outputs on a shared folder instead of pulled back")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from support.ray_cluster import LoopbackCluster

    from quantforge.acquire import dequantize_gguf, smollm2_q4_1_path
    from quantforge.build import build
    from quantforge.cluster.build import build_on_cluster
    from quantforge.cluster.config import resolve_cluster
    from quantforge.manifest import read_manifest
    from quantforge.recipe import load_recipe

    work = Path(tempfile.mkdtemp(prefix="qf-cluster-bench-"))
    cache = Path(os.environ.get("QUANTFORGE_TEST_CACHE", REPO / ".qf-cache"))
    base = cache / "smol-f16.gguf"
    if not base.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        dequantize_gguf(smollm2_q4_1_path(), base, dtype="f16")
    names = [v for v in args.variants.split(",") if v]
    folder = work / "nfs" if args.shared else work
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "smollm2-135m-f16.gguf").symlink_to(base.resolve())
    shutil.copy(REPO / "recipes" / "smollm2-135m.imatrix", folder / "smollm2-135m.imatrix")
    text = (REPO / "recipes" / "smollm2-135m.toml").read_text(encoding="utf-8")
    if args.shared:
        text = text.replace("[imatrix]", f'[cluster]\nshared = "{folder}"\n\n[imatrix]', 1)
    (folder / "r.toml").write_text(text, encoding="utf-8")
    recipe = load_recipe(folder / "r.toml")

    t0 = time.perf_counter()
    cluster = LoopbackCluster(work / "nodes", [{"cpus": args.threads} for _ in names]).start()
    up_s = time.perf_counter() - t0
    spec = resolve_cluster(cluster.address, recipe=recipe)
    assert spec is not None
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            order = ["local", "cluster"] if rnd % 2 == 0 else ["cluster", "local"]
            timing: dict[str, Any] = {}
            outs: dict[str, Path] = {}
            for mode in order:
                out = folder / f"out-{mode}-{rnd}"
                arrived: dict[str, float] = {}
                start = time.perf_counter()

                def seen(r: Any, _start: float = start, _arrived: dict[str, float] = arrived) -> None:
                    _arrived[r.variant] = time.perf_counter() - _start

                if mode == "local":
                    build(recipe, variants=names, out_dir=out, threads=args.threads, on_result=seen)
                else:
                    build_on_cluster(recipe, cluster=spec, variants=names, out_dir=out, threads=args.threads,
                                     on_result=seen)
                timing[mode] = {"wall_s": time.perf_counter() - start, "arrived": arrived}
                outs[mode] = out
            per: list[dict[str, Any]] = []
            for n in names:
                a = next(outs["local"].glob(f"*-{n}.gguf"))
                b = outs["cluster"] / a.name
                assert _sha(a) == _sha(b), f"{n}: the cluster build differs from the local one"
                ml, mc = read_manifest(a), read_manifest(b)
                node_s = mc.timings["total_s"]
                seen_s = timing["cluster"]["arrived"][n]
                per.append({
                    "variant": n, "local_s": ml.timings["total_s"], "node_s": node_s,
                    "pull_s": (mc.node or {}).get("pulled", {}).get("seconds", 0.0), "driver_seen_s": seen_s,
                    "overhead_s": seen_s - node_s, "node": (mc.node or {}).get("node_id", "?")[:8],
                })  # fmt: skip
            rows.append({"round": rnd, "order": order, "local_wall_s": timing["local"]["wall_s"],
                         "cluster_wall_s": timing["cluster"]["wall_s"], "tasks": per})
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    summary = {
        "variants": names, "threads": args.threads, "mode": "shared" if args.shared else "pulled back",
        "cluster_start_s": round(up_s, 2), "rounds": rows,
        "median_local_wall_s": statistics.median(r["local_wall_s"] for r in rows),
        "median_cluster_wall_s": statistics.median(r["cluster_wall_s"] for r in rows),
        "median_overhead_per_task_s": statistics.median(t["overhead_s"] for r in rows for t in r["tasks"]),
    }
    summary["speedup"] = summary["median_local_wall_s"] / summary["median_cluster_wall_s"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"ladder {', '.join(names)}: {len(names)} worker node(s) x {args.threads} CPU, outputs "
          f"{summary['mode']}; cluster started in {up_s:.1f} s (not counted below)")
    for r in rows:
        print(f"\nround {r['round'] + 1} ({' then '.join(r['order'])}): local {r['local_wall_s']:.1f} s "
              "(one after "
              f"the other) vs cluster {r['cluster_wall_s']:.1f} s (at once): "
              f"{r['local_wall_s'] / r['cluster_wall_s']:.2f}x")
        print(f"  {'variant':10} {'local build':>11} {'node build':>10} {'pull':>6} {'driver saw':>10} "
              f"{'overhead':>9}  node")
        for t in r["tasks"]:
            print(f"  {t['variant']:10} {t['local_s']:>10.2f}s {t['node_s']:>9.2f}s {t['pull_s']:>5.2f}s "
                  f"{t['driver_seen_s']:>9.2f}s {t['overhead_s']:>8.2f}s  {t['node']}")
    print(f"\nmedian: local {summary['median_local_wall_s']:.1f} s, cluster "
          f"{summary['median_cluster_wall_s']:.1f} s "
          f"({summary['speedup']:.2f}x); overhead per task {summary['median_overhead_per_task_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
