"""``quantforge sensitivity --cluster``: each measured group (and the base, and each check) is a Ray task.

The driver does what a local run does before measuring (groups, the derived recipe, the method
key, the cache, the base logits) and after (the table); only the loop over pending runs moves:
each run is quantized and scored on its node (``tasks.sensitivity_task``) with the base logits
and corpus shipped there (or read from the shared folder), and its result is written into the
driver's run cache as it arrives, so a cut-short cluster run resumes exactly as a local one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from quantforge import __version__
from quantforge.cluster import tasks
from quantforge.cluster.build import _summarise
from quantforge.cluster.config import ClusterSpec
from quantforge.cluster.evaluate import _Inputs
from quantforge.cluster.resources import TaskResources, build_resources, check_feasible, eval_resources
from quantforge.cluster.session import Job, Outcome, connect
from quantforge.cluster.tasks import MeasuredRun
from quantforge.errors import QuantforgeError
from quantforge.evaluate.models import EvalEngine

if TYPE_CHECKING:  # sensitivity.measure calls this module: its models are only annotations here
    from quantforge.build import BuildContext
    from quantforge.plan import QuantPlan
    from quantforge.recipe import Recipe
    from quantforge.sensitivity.measure import Run


def measure_on_cluster(
    cluster: ClusterSpec,
    runs: Sequence[Run],
    *,
    derived: Recipe,
    ctx: BuildContext,
    plans: dict[str, QuantPlan],
    method_key: str,
    logits: Path,
    corpus: Path,
    corpus_sha: str,
    engine: EvalEngine,
    eval_version: str,
    threads: int | None,
    bin_dir: str | None,
    keep: bool,
    on_run: Callable[[Run, MeasuredRun], None],
) -> None:
    """Measure ``runs`` (sensitivity ``Run`` models) on ``cluster``; ``on_run(run, value)`` as each ends."""
    failures: list[tuple[str, QuantforgeError]] = []
    by_key = {r.key: r for r in runs}
    with connect(cluster) as session:
        nodes = session.nodes()
        inputs = _Inputs(session, cluster)
        base_src = ctx.base_source if ctx.base_source.startswith("hf://") else str(ctx.base_path)
        im = inputs(ctx.imatrix.path, what="imatrix") if ctx.imatrix is not None else None
        common = {
            "quantforge_version": __version__, "recipe": derived, "base": base_src,
            "base_bytes": ctx.base_path.stat().st_size, "imatrix": im,
            "logits": inputs(logits, what="base logits"),
            "corpus": inputs(corpus, what="corpus", ship=True), "corpus_sha256": corpus_sha, "engine": engine,
            "eval_version": eval_version, "bin_dir": bin_dir, "keep": keep, "method_key": method_key,
            "toolchain": {"engine": ctx.toolchain.engine, "version": ctx.toolchain.version,
                          "commit": ctx.toolchain.commit},
        }  # fmt: skip
        jobs = []
        for r in runs:
            plan = plans[r.name]
            q = build_resources(plan, ctx.inventory, threads=threads, nodes=nodes)
            e = eval_resources(plan.file_bytes or plan.tensor_bytes, base_bytes=None, threads=threads,
                               nodes=nodes)
            req = TaskResources(cpus=min(q.cpus, e.cpus), memory=max(q.memory, e.memory))
            check_feasible(f"the sensitivity run {r.label}", req, nodes, address=cluster.address)
            jobs.append(Job(key=r.key, what=f"the sensitivity run {r.label}", resources=req,
                            func=tasks.sensitivity_task, spec={**common, "run": r.name, "threads": req.cpus}))

        def on_outcome(o: Outcome) -> None:
            if o.error is not None:
                failures.append((by_key[o.key].label, o.error))
                return
            assert o.value is not None
            on_run(by_key[o.key], cast(MeasuredRun, o.value))

        session.run(jobs, on_outcome=on_outcome)
    if failures:
        raise _summarise(failures, len(runs))
