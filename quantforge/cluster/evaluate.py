"""``quantforge eval --cluster`` and ``quantforge sweep --cluster``: one Ray task per evaluation / sweep.

An evaluation runs ``quantforge.evaluate.perplexity.evaluate`` on its node with that node's
engine; its inputs (the model, the KLD base, a base-logits file) are read at the same path when
they are under the recipe's shared folder, and shipped otherwise (the corpus always is: it is
small and its sha256 keys the cached base logits, which each node keeps in its own cache). The
result is the local one with a ``node`` record, and the driver writes it into the manifest as
a local run does.

A sweep asks for its rig's resource (``rig:NAME``) and every CPU of that node, so it runs on
the machine it is meant to measure and alone there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quantforge import __version__
from quantforge.cluster import tasks
from quantforge.cluster.build import _summarise
from quantforge.cluster.config import ClusterSpec
from quantforge.cluster.resources import check_feasible, eval_resources, sweep_resources
from quantforge.cluster.session import Job, Session, TaskProgress, connect
from quantforge.cluster.transfer import ship_file
from quantforge.errors import QuantforgeError
from quantforge.evaluate import _util
from quantforge.evaluate.models import EvalResult
from quantforge.fsutil import cached_sha256


class _Inputs:
    """Each driver file once per run: by path on a shared folder, else shipped (and cached per node)."""

    def __init__(self, session: Session, cluster: ClusterSpec) -> None:
        self.session, self.cluster = session, cluster
        self.entries: dict[str, dict[str, Any]] = {}

    def __call__(self, path: str | Path | None, *, what: str, ship: bool = False) -> dict[str, Any] | None:
        if path is None:
            return None
        p = Path(path).expanduser().absolute()
        key = str(p)
        if key not in self.entries:
            shared = self.cluster.shared
            if not ship and shared is not None and shared in p.resolve().parents:
                self.entries[key] = {"path": key, "bytes": p.stat().st_size}
            else:
                self.entries[key] = ship_file(self.session, p, sha256=cached_sha256(p),
                                              limit=self.cluster.ship_max_bytes, what=what)
        return self.entries[key]


def eval_on_cluster(
    models: Sequence[Path],
    *,
    cluster: ClusterSpec,
    engine: str,
    corpus: str | Path,
    ctx: int,
    chunks: int | None,
    base: str | None,
    base_logits: str | None,
    kld: bool,
    threads: int | None,
    batch: int | None,
    binary: str | None,
    bin_dir: str | None,
    progress: TaskProgress | None = None,
    on_result: Callable[[int, EvalResult], None] | None = None,
) -> list[EvalResult]:
    """Evaluate ``models`` on ``cluster``; results in the order given, each with its node."""
    for m in models:
        _util.check_model_file(m)
    results: dict[int, EvalResult] = {}
    failures: list[tuple[str, QuantforgeError]] = []
    with connect(cluster) as session:
        nodes = session.nodes()
        inputs = _Inputs(session, cluster)
        corpus_entry = inputs(corpus, what="corpus", ship=True)
        base_entry = inputs(base, what="KLD base") if kld else None
        logits_entry = inputs(base_logits, what="base logits file") if kld else None
        jobs = []
        for i, m in enumerate(models):
            req = eval_resources(Path(m).stat().st_size,
                                 base_bytes=Path(base).stat().st_size if (kld and base) else None,
                                 threads=threads, nodes=nodes)
            check_feasible(f"the evaluation of {Path(m).name}", req, nodes, address=cluster.address)
            spec = {
                "quantforge_version": __version__, "model": inputs(m, what="model"), "base": base_entry,
                "base_logits": logits_entry, "corpus": corpus_entry, "engine": engine, "ctx": ctx,
                "chunks": chunks,
                "kld": kld, "threads": req.cpus, "batch": batch, "binary": binary, "bin_dir": bin_dir,
            }  # fmt: skip
            jobs.append(Job(key=f"{i}:{Path(m).stem}", what=f"the evaluation of {Path(m).name}",
                            resources=req,
                            func=tasks.eval_task, spec=spec))
        order = {j.key: i for i, j in enumerate(jobs)}

        def on_outcome(o: Any) -> None:
            if o.error is not None:
                failures.append((o.key.split(":", 1)[1], o.error))
                return
            i = order[o.key]
            res = EvalResult.model_validate(o.value["result"])
            # The node read its own copies; the result names the driver's files, as a local run does.
            res = res.model_copy(update={
                "model": str(models[i]), "corpus": str(corpus),
                "base": str(base) if res.base is not None and base is not None else res.base,
                "node": {**o.value["node"], "cluster": cluster.address},
            })  # fmt: skip
            results[i] = res
            if on_result is not None:
                on_result(i, res)

        session.run(jobs, progress=progress, on_outcome=on_outcome)
    if failures:
        raise _summarise(failures, len(models))
    return [results[i] for i in range(len(models))]


def sweep_on_cluster(
    *,
    cluster: ClusterSpec,
    rig: str,
    model: Path | None,
    execute: Callable[[Path | None, int], dict[str, Any]],
    label: str,
    progress: TaskProgress | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``execute(model_on_node, cpus)`` on the node that offers ``rig:RIG``; (its value, the node)."""
    with connect(cluster) as session:
        nodes = session.nodes()
        req = sweep_resources(rig, model.stat().st_size if model is not None else 0, nodes=nodes)
        check_feasible(f"the sweep on rig {rig}", req, nodes, address=cluster.address)
        inputs = _Inputs(session, cluster)
        spec = {"quantforge_version": __version__, "model": inputs(model, what="model"), "execute": execute,
                "threads": req.cpus}
        job = Job(key=label, what=f"the sweep of {label} on rig {rig}", resources=req, func=tasks.sweep_task,
                  spec=spec)
        (outcome,) = session.run([job], progress=progress)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.value is not None
    node = {**outcome.value["node"], "cluster": cluster.address, "rig": rig}
    return outcome.value["result"], node
