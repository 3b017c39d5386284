"""The SmolLM2-135M acceptance run of measured sensitivity and the joint solver (docs/fit-smollm2.md).

Everything with the bundled engine (ik ``llama-quantize`` + the bundled evaluator), the shipped
imatrix, KLD against the F16 base:

1. every uniform ftype from Q3_K_M to Q6_0 and the shipped hand-written variants, built and measured;
2. ``quantforge sensitivity`` on the recipe's ``[sensitivity]`` table (8 kinds x 3 layer buckets x
   3-4 types around Q8_0, 8 chunks of the fixtures' eval.txt; cached, so a rerun measures nothing);
3. ``quantforge fit --budget X --verify`` at the tensor-data sizes of Q3_K_M, IQ4_XS and Q5_K_M;
4. every variant measured again on held-out text (the second half of eval.txt, 16 chunks) that the
   sensitivity never saw.

It prints the table and writes it (with the commands) to ``--doc``. About an hour on 2 busy cores.

    python bench/fit_smollm2.py --work quantforge-out/fit-smollm2 --doc docs/fit-smollm2.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantforge.build import build_variant  # noqa: E402
from quantforge.build import prepare as prepare_build  # noqa: E402
from quantforge.evaluate.perplexity import evaluate  # noqa: E402
from quantforge.fit.report import Settings  # noqa: E402
from quantforge.fit.solver import solve_recipe  # noqa: E402
from quantforge.plan import expand  # noqa: E402
from quantforge.sensitivity.measure import run_sensitivity  # noqa: E402
from quantforge.sensitivity.table import excess_ratio, read_table  # noqa: E402

UNIFORM = ["Q3_K_M", "Q3_K_L", "IQ4_XS", "IQ4_NL", "IQ4_KS", "Q4_K_S", "Q4_K_M", "IQ4_K", "Q5_0", "IQ5_KS",
           "Q5_K_S", "Q5_K_M", "IQ5_K", "Q6_0"]  # fmt: skip
HAND = ["IQ5_KS", "IQ4_KS", "IQ2_KS"]  # the shipped recipe's hand-written variants
BUDGETS = ["Q3_K_M", "IQ4_XS", "Q5_K_M"]
SHARED = Path(os.environ.get("QUANTFORGE_SHARED", REPO.parent / "shared"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup(work: Path) -> tuple[Path, Path, Path]:
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "smollm2-135m.toml"
    shutil.copy(REPO / "recipes" / "smollm2-135m.toml", recipe)
    base = work / "smollm2-135m-f16.gguf"
    if not base.exists():
        cached = REPO / ".qf-cache" / "smol-f16.gguf"
        if cached.is_file():
            base.symlink_to(cached)
        else:
            from quantforge.acquire import dequantize_gguf, smollm2_q4_1_path

            dequantize_gguf(smollm2_q4_1_path(), base, dtype="f16")
    im = work / "smollm2-135m.imatrix"
    if not im.exists():
        shutil.copy(REPO / "recipes" / "smollm2-135m.imatrix", im)
    corpus = SHARED / "fixtures" / "ik" / "corpus.txt"
    if not corpus.is_file():
        sys.exit(f"{corpus} is missing: set QUANTFORGE_SHARED to the shared/ folder")
    text = corpus.read_text(encoding="utf-8")
    ev = text[int(len(text) * 0.6):]  # the fixtures' eval.txt
    (work / "eval.txt").write_text(ev, encoding="utf-8")
    (work / "heldout.txt").write_text(ev[len(ev) // 2:], encoding="utf-8")
    return recipe, work / "eval.txt", work / "heldout.txt"


def measure(gguf: str, base: Path, corpus: Path, chunks: int) -> tuple[float, float]:
    r = evaluate(gguf, engine="bundled", corpus=corpus, ctx=512, chunks=chunks, base=base)
    assert r.kld is not None
    return r.kld.mean, r.kld.mean_err


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(REPO / "quantforge-out" / "fit-smollm2"))
    ap.add_argument("--doc", default=None, help="write the markdown table here (e.g. docs/fit-smollm2.md)")
    ap.add_argument("--heldout-chunks", type=int, default=16)
    args = ap.parse_args()
    work = Path(args.work).resolve()
    recipe_p, ev, held = setup(work)
    built = work / "built"
    results: dict[str, dict[str, Any]] = {}
    state = work / "results.json"
    if state.is_file():
        results = json.loads(state.read_text())

    def save() -> None:
        state.write_text(json.dumps(results, indent=1))

    import tomlkit

    from quantforge.recipe import QuantSection, parse_recipe, variant_table

    doc = tomlkit.parse(recipe_p.read_text())
    for f in UNIFORM:
        doc["quant"].append(variant_table(QuantSection(name=f"U-{f}", ftype=f, default="mixture")))
    uni = parse_recipe(tomlkit.dumps(doc), path=str(recipe_p))
    ctx = prepare_build(uni, out_dir=built)
    todo = [(f"U-{f}", f"uniform {f}") for f in UNIFORM] + [(h, f"hand-written {h}") for h in HAND]
    for name, label in todo:
        if name in results and "heldout" in results[name]:
            continue
        out = build_variant(ctx, name, force=False, split_max_bytes=None).output  # a verified one is kept
        plan = expand(uni, name, ctx.inventory, imatrix=False)
        k, ke = measure(out, ctx.base_path, ev, 8)
        h, he = measure(out, ctx.base_path, held, args.heldout_chunks)
        results[name] = {"label": label, "tensor_bytes": plan.tensor_bytes, "kld": k, "kld_err": ke, "heldout": h,
                         "heldout_err": he}  # fmt: skip
        save()
        log(f"{label:24s} {plan.tensor_bytes:>12,} B  KLD {k:.6f} ± {ke:.6f}  held-out {h:.6f} ± {he:.6f}")

    log("sensitivity (cached runs are read back)")
    sens = run_sensitivity(recipe_p, corpus=ev, output=work / "smol.sensitivity.csv", force=True,
                           progress=lambda p: log(f"  [{p.done}/{p.total}] {p.label}"
                                                  + (f" KLD {p.value:.6f}" if p.value is not None else "")))  # fmt: skip
    table = read_table(sens.output)
    log(f"sensitivity: {len(table.groups)} groups, {len(table.entries)} entries, baseline {table.baseline:.6f}")
    for budget in BUDGETS:
        name = f"FIT-{budget}"
        t0 = time.perf_counter()
        res = solve_recipe(recipe_p, budget=budget, settings=Settings(), sensitivity=sens.output, name=name,
                           write=True, force=True, verify=True,
                           verify_options={"corpus": str(ev), "out_dir": str(built)})  # fmt: skip
        assert res.verify is not None
        h, he = measure(res.verify["output"], ctx.base_path, held, args.heldout_chunks)
        results[name] = {"label": f"fit --budget {budget}", "tensor_bytes": res.tensor_bytes,
                         "budget_bytes": res.budget_bytes, "predicted": res.predicted, "kld": res.verify["measured"],
                         "kld_err": res.verify["measured_err"], "heldout": h, "heldout_err": he,
                         "status": res.status, "rules": res.rules, "choices": [c.model_dump() for c in res.choices],
                         "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        save()
        log(f"{name}: {res.tensor_bytes:,} B (budget {res.budget_bytes:,}), predicted {res.predicted:.6f}, "
            f"measured {res.verify['measured']:.6f} ({100 * res.verify['error']:+.1f} %), held-out {h:.6f}")
    text = render(results, table, args.heldout_chunks)
    print(text)
    if args.doc:
        Path(args.doc).write_text(text, encoding="utf-8")
    return 0


def render(results: dict[str, dict[str, Any]], table: Any, heldout_chunks: int) -> str:
    rows = sorted(results.items(), key=lambda kv: kv[1]["tensor_bytes"])
    out = [
        "| variant | tensor data (bytes) | KLD, 8 chunks (sensitivity text) | KLD, held-out "
        f"{heldout_chunks} chunks | predicted |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        bold = "**" if name.startswith("FIT-") else ""
        pred = f"{r['predicted']:.6f}" if "predicted" in r else ""
        out.append(f"| {bold}{r['label']}{bold} | {r['tensor_bytes']:,} | {r['kld']:.6f} ± {r['kld_err']:.6f} "
                   f"| {r['heldout']:.6f} ± {r['heldout_err']:.6f} | {pred} |")  # fmt: skip
    out.append("")
    out.append("| budget | solver's variant | measured vs predicted | beats every uniform / hand-written quant up to |")
    out.append("| --- | --- | ---: | --- |")
    for b in BUDGETS:
        r = results.get(f"FIT-{b}")
        if not r:
            continue
        others = [(n, x) for n, x in results.items() if not n.startswith("FIT-")]
        bigger = sorted((x["tensor_bytes"], n) for n, x in others if x["tensor_bytes"] >= r["tensor_bytes"])
        beaten = []
        for size, n in bigger:
            x = results[n]
            if x["kld"] > r["kld"] and x["heldout"] > r["heldout"]:
                beaten.append((size, n))
            else:
                break
        upto = f"{results[beaten[-1][1]]['label']} ({beaten[-1][0]:,} B)" if beaten else "none"
        err = 100 * (r["predicted"] - r["kld"]) / r["kld"]
        out.append(f"| {b} ({r['budget_bytes']:,} B) | {r['tensor_bytes']:,} B | {err:+.1f} % | {upto} |")
    out.append("")
    for c in table.checks:
        out.append(f"- check {c.name}: measured {c.measured:.6f}, additive prediction {c.predicted:.6f} "
                   f"(measured / predicted excess over Q8_0: {excess_ratio(c, table.baseline):.2f})")  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
