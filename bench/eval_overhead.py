"""Wall time of quantforge's PPL runs against running the same llama-perplexity directly.

Measures, alternating (A B C A B C …) so machine drift hits all three alike:

  direct    the mainline ``llama-perplexity`` command line, run with subprocess
  wrapped   ``quantforge.evaluate.evaluate(engine="mainline")``: the same binary and arguments
            plus hashing, parsing and the result model
  bundled   ``evaluate(engine="bundled")``: the ctypes evaluator over the bundled ik libllama

and reports median wall times. Targets: wrapped ≤ 1.03 × direct, bundled ≤ 1.2 × direct.
Exit status 1 when a target is missed.

  python bench/eval_overhead.py --chunks 8 --ctx 512 --repeat 3 [--model smol-f16.gguf] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _model(path: str | None) -> Path:
    if path:
        return Path(path)
    cached = REPO / ".qf-cache" / "smol-f16.gguf"
    if cached.is_file():
        return cached
    from quantforge.acquire import dequantize_gguf, smollm2_q4_1_path

    cached.parent.mkdir(parents=True, exist_ok=True)
    dequantize_gguf(smollm2_q4_1_path(), cached, dtype="f16")
    return cached


def _corpus(path: str | None, workdir: Path) -> Path:
    if path:
        return Path(path)
    text = (REPO.parent / "shared" / "fixtures" / "ik" / "corpus.txt").read_text(encoding="utf-8")
    p = workdir / "eval.txt"
    p.write_text(text[int(len(text) * 0.6):], encoding="utf-8")
    return p


def _library_floor(model: Path, corpus: Path, ctx: int, chunks: int, threads: int) -> float:
    """Wall time of the bundled ik libllama doing only what any tool must: load, tokenize, decode the
    chunks."""
    from quantforge.evaluate.bundled import BundledModel

    t = time.perf_counter()
    with BundledModel(model, n_ctx=ctx, n_batch=ctx, threads=threads) as m:
        toks = m.tokenize(corpus.read_text(encoding="utf-8"))
        for i in range(chunks):
            m.chunk_logits(toks[i * ctx:(i + 1) * ctx], ctx // 2)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--corpus")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import tempfile

    from quantforge.evaluate import _util
    from quantforge.evaluate.bundled import default_threads
    from quantforge.evaluate.perplexity import evaluate, find_perplexity

    threads = args.threads or default_threads()
    work = Path(tempfile.mkdtemp(prefix="qf-bench-"))
    model, corpus = _model(args.model), _corpus(args.corpus, work)
    binary, _ = find_perplexity("mainline")
    cmd = [binary, "-m", str(model), "-c", str(args.ctx), "-f", str(corpus), "--chunks", str(args.chunks),
           "-t", str(threads)]

    times: dict[str, list[float]] = {"direct": [], "wrapped": [], "bundled": [], "library": []}
    ppl: dict[str, float] = {}
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times["direct"].append(time.perf_counter() - t)

        _util._HASHES.clear()  # every quantforge run pays for hashing, as a fresh process would
        t = time.perf_counter()
        r = evaluate(model, engine="mainline", corpus=corpus, ctx=args.ctx, chunks=args.chunks,
                     threads=threads,
                     binary=binary)
        times["wrapped"].append(time.perf_counter() - t)
        ppl["mainline"] = r.ppl

        _util._HASHES.clear()
        t = time.perf_counter()
        r = evaluate(model, engine="bundled", corpus=corpus, ctx=args.ctx, chunks=args.chunks,
                     threads=threads)
        times["bundled"].append(time.perf_counter() - t)
        ppl["bundled"] = r.ppl

        times["library"].append(_library_floor(model, corpus, args.ctx, args.chunks, threads))

    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "model": str(model), "ctx": args.ctx, "chunks": args.chunks, "threads": threads,
        "repeat": args.repeat,
        "times_s": times, "median_s": med,
        "wrapped_overhead_pct": (med["wrapped"] / med["direct"] - 1) * 100,
        "bundled_ratio": med["bundled"] / med["direct"],
        # the same library doing only load + tokenize + decode: what a C tool linked to it would need at least
        "bundled_vs_library_ratio": med["bundled"] / med["library"],
        "ppl": ppl,
    }
    ok = report["wrapped_overhead_pct"] < 3.0 and report["bundled_ratio"] <= 1.2
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model {model.name}, {args.chunks} chunks x {args.ctx}, {threads} threads, {args.repeat} "
              "repeats (median)")
        print(f"  llama-perplexity direct : {med['direct']:8.2f} s")
        print(f"  quantforge (mainline)   : {med['wrapped']:8.2f} s   overhead "
              f"{report['wrapped_overhead_pct']:+.2f} %  (target < 3 %)")
        print(f"  quantforge (bundled)    : {med['bundled']:8.2f} s   ratio {report['bundled_ratio']:.3f}  "
              "(target <= 1.2)")
        print(f"  bundled libllama floor  : {med['library']:8.2f} s   bundled/floor "
              f"{report['bundled_vs_library_ratio']:.3f}"
              "  (load + tokenize + decode only, same library)")
        print(f"  PPL mainline {ppl['mainline']:.4f}  bundled {ppl['bundled']:.4f}")
        print("OK" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
