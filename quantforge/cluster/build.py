"""``quantforge build --cluster``: every variant of a ladder is one Ray task.

The driver resolves the recipe, base, imatrix and toolchain as a local build does and plans
each variant; a variant whose output already verifies in the output folder is skipped without
a task. The others are submitted with the request of ``resources.build_resources`` and run
``quantforge.build.build_variant`` on their node, the same code (pre-flight checks, ``.partial``,
verification against the plan, manifest, resume) as a local build.

* With ``[cluster] shared``, the node writes into the output folder itself; the driver then reads
  the written header back against its own plan (which also proves the folder is shared).
* Without it, the node builds into its scratch folder and the driver pulls every file to
  ``<final>.partial``, checks its sha256 against the node's manifest, verifies the header
  against its own plan, renames, and writes the manifest (with the node's log) last. A variant
  whose pull was cut short is skipped by the node on the rerun (its scratch build still
  verifies) and pulled again.

Manifests carry a ``node`` section: the Ray node id, IP, hostname, the folder it built in, and
for pulled outputs how long the pull took.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from quantforge import __version__
from quantforge import build as qb
from quantforge.cluster import tasks
from quantforge.cluster.config import ClusterSpec, check_out_dir
from quantforge.cluster.resources import build_resources, check_feasible
from quantforge.cluster.session import Job, Outcome, Session, TaskProgress, connect
from quantforge.cluster.transfer import pull_file, read_chunk, ship_file
from quantforge.constants import HF_MAX_FILE_BYTES
from quantforge.errors import BuildError, ClusterError, QuantforgeError
from quantforge.fsutil import (
    atomic_write_bytes,
    cached_sha256,
    interrupts_deferred,
    remove_quietly,
    sha256_background,
)
from quantforge.imatrix import ImatrixMeta, quantize_meta
from quantforge.lock import folder_lock
from quantforge.manifest import Manifest, manifest_path, relative_to_manifest, update_manifest, write_manifest
from quantforge.names import existing_outputs, output_stem, split_work_dir
from quantforge.plan import QuantPlan, expand
from quantforge.recipe import Recipe


def build_on_cluster(
    recipe: Recipe,
    *,
    cluster: ClusterSpec,
    variants: Sequence[str] | None = None,
    out_dir: Path | None = None,
    base: str | None = None,
    imatrix: str | None = None,
    bin_dir: str | None = None,
    threads: int | None = None,
    force: bool = False,
    min_free: int | None = None,
    split_max_bytes: int | None = HF_MAX_FILE_BYTES,
    timeout: float | None = None,
    progress: TaskProgress | None = None,
    on_result: Callable[[qb.BuildResult], None] | None = None,
    wait: bool = False,
) -> qb.LadderResult:
    """Build ``variants`` of ``recipe`` on ``cluster``; the same outputs, manifests and resume as
    ``build``."""
    names = [recipe.variant(n).name for n in variants] if variants else [recipe.variant(None).name]
    ctx = qb.prepare(recipe, out_dir=out_dir, base=base, imatrix=imatrix, bin_dir=bin_dir, threads=threads)
    check_out_dir(cluster, ctx.out_dir, where="--out")
    base_digest = sha256_background(ctx.base_path, hasher=cached_sha256)
    plans = {n: _plan(ctx, n) for n in names}
    results: dict[str, qb.BuildResult] = {}
    failures: list[tuple[str, QuantforgeError]] = []

    def done(r: qb.BuildResult) -> None:
        results[r.variant] = r
        if on_result is not None:
            on_result(r)

    label = Path(recipe.path).name if recipe.path else "recipe"
    # One run per output folder, as locally: the nodes of a shared folder write only the variants
    # this driver gave them, each under its own lock (tasks.build_task).
    with folder_lock(ctx.out_dir, purpose=f"quantforge build {label} on {cluster.address}", wait=wait):
        todo = []
        for name in names:
            skipped = _verified(ctx, name, plans[name], pulled=cluster.shared is None, force=force)
            if skipped is not None:
                done(skipped)
            else:
                if cluster.shared is None and not force:
                    _refuse_existing(ctx, name, plans[name])
                todo.append(name)
        if todo:
            _run(recipe, ctx, cluster, todo, plans, base_digest, done, failures, bin_dir=bin_dir,
                 threads=threads,
                 force=force, min_free=min_free, split_max_bytes=split_max_bytes, timeout=timeout,
                 progress=progress)
    if failures:
        raise _summarise(failures, len(names))
    return _ladder(ctx, names, results)


def _run(recipe: Recipe, ctx: qb.BuildContext, cluster: ClusterSpec, todo: list[str],
         plans: dict[str, QuantPlan],
         base_digest: Callable[[], str], done: Callable[[qb.BuildResult], None],
         failures: list[tuple[str, QuantforgeError]], *, bin_dir: str | None, threads: int | None,
         force: bool,
         min_free: int | None, split_max_bytes: int | None, timeout: float | None,
         progress: TaskProgress | None) -> None:
    with connect(cluster) as session:
        nodes = session.nodes()
        base_src = ctx.base_source if ctx.base_source.startswith("hf://") else str(ctx.base_path)
        im_entry = _imatrix_entry(session, ctx, cluster)
        tc = ctx.toolchain
        jobs = []
        for name in todo:
            req = build_resources(plans[name], ctx.inventory, threads=threads, nodes=nodes)
            check_feasible(f"the build of {name}", req, nodes, address=cluster.address)
            spec = {
                "quantforge_version": __version__, "address": cluster.address, "recipe": recipe,
                "variant": name,
                "base": base_src, "base_bytes": ctx.base_path.stat().st_size, "imatrix": im_entry,
                "out_dir": str(ctx.out_dir) if cluster.shared is not None else None, "bin_dir": bin_dir,
                "threads": req.cpus, "force": force, "min_free": min_free, "split_max_bytes": split_max_bytes,
                "timeout": timeout, "toolchain": {"engine": tc.engine, "version": tc.version,
                                                  "commit": tc.commit},
            }  # fmt: skip
            jobs.append(Job(key=name, what=f"the build of {name}", resources=req, func=tasks.build_task,
                            spec=spec))

        def on_outcome(o: Outcome) -> None:
            if o.error is not None:
                failures.append((o.key, o.error))
                return
            assert o.value is not None
            try:
                done(_commit(session, ctx, cluster, o.key, plans[o.key], o.value, base_digest, force=force,
                             progress=progress))
            except QuantforgeError as exc:
                failures.append((o.key, exc))

        session.run(jobs, progress=progress, on_outcome=on_outcome)


def _plan(ctx: qb.BuildContext, name: str) -> QuantPlan:
    imeta: ImatrixMeta | Literal[False] = quantize_meta(ctx.imatrix) if ctx.imatrix is not None else False
    return expand(ctx.recipe, name, ctx.inventory, imatrix=imeta)


def _output(ctx: qb.BuildContext, name: str) -> Path:
    return Path(ctx.out_dir) / f"{output_stem(ctx.recipe, ctx.base_path)}-{name}.gguf"


def _verified(
    ctx: qb.BuildContext, name: str, plan: QuantPlan, *, pulled: bool, force: bool
) -> qb.BuildResult | None:
    """The skip of a local build: outputs that verify against their manifest and the plan; for pulled
    outputs also the completion of a commit that was cut short (its journal), as a local build does."""
    t0 = time.monotonic()
    output = _output(ctx, name)
    man = manifest_path(output)
    log = output.with_name(output.name + ".log")
    status: Literal["skipped", "recovered"] = "skipped"
    if pulled and not force and qb.pending_path(man).exists():
        recovered = qb._recover(ctx, plan, output, man, log_path=log)
        if recovered is None:
            return None
        status = "recovered"
    existing = existing_outputs(output)
    if not existing or not qb._manifest_matches(man, qb._build_key(ctx, plan), existing):
        return None
    qb.verify_output(existing, plan, expect_kv=qb._expected_kv(ctx, plan))
    return qb.BuildResult(
        variant=name, status=status, output=str(output), files=tuple(str(p) for p in existing),
        manifest=str(man), log=str(log), planned_file_bytes=plan.file_bytes,
        actual_file_bytes=sum(p.stat().st_size for p in existing), command=[], seconds=time.monotonic() - t0,
    )  # fmt: skip


def _refuse_existing(ctx: qb.BuildContext, name: str, plan: QuantPlan) -> None:
    """As locally: an output that is not this variant's verified build is not replaced without --force,
    unless it has no manifest and verifies against the plan (a commit cut short): then the pull replaces
    it with the node's verified copy and writes the manifest."""
    output = _output(ctx, name)
    existing = existing_outputs(output)
    if existing and not manifest_path(output).exists():
        try:
            qb._adopt(ctx, plan, existing)
            return
        except BuildError:
            pass
    if existing:
        raise BuildError(
            f"{existing[0].name} already exists and is not this variant's verified build",
            where=str(existing[0]),
            hint="pass --force to overwrite it, or choose another --out",
        )


def _imatrix_entry(session: Session, ctx: qb.BuildContext, cluster: ClusterSpec) -> dict[str, Any] | None:
    im = ctx.imatrix
    if im is None:
        return None
    path = Path(os.path.abspath(im.path))
    if cluster.shared is not None and (cluster.shared in path.resolve().parents):
        return {"path": str(path), "bytes": path.stat().st_size}
    # Shipped under its own name: llama-quantize records the bare file name in quantize.imatrix.file.
    # An imatrix read without its digest (read_imatrix's default) is hashed here: the node checks
    # the shipped bytes against it.
    return ship_file(session, path, sha256=im.sha256 or cached_sha256(path), limit=cluster.ship_max_bytes,
                     what="imatrix")


def _commit(session: Session, ctx: qb.BuildContext, cluster: ClusterSpec, name: str, plan: QuantPlan,
            value: dict[str, Any], base_digest: Callable[[], str], *, force: bool,
            progress: TaskProgress | None) -> qb.BuildResult:
    node = value["node"]
    node_man = value["manifest"]
    result = qb.BuildResult.model_validate(value["result"])
    want_base = base_digest()
    if node_man["base"].get("sha256") != want_base:
        raise ClusterError(
            f"node {tasks.node_label(node)} built {name} from a base with sha256 "
            f"{str(node_man['base'].get('sha256'))[:16]}…, "
            f"the driver's is {want_base[:16]}…",
            where=str(node_man["base"].get("path")),
            hint="the base at that path differs between the nodes: share one copy ([cluster] shared) or fix "
                 "the copies",
        )
    output = _output(ctx, name)
    man_path = manifest_path(output)
    if cluster.shared is not None:
        files = [Path(p) for p in result.files]
        qb.verify_output(files, plan, expect_kv=qb._expected_kv(ctx, plan))
        if ctx.imatrix is not None and node_man.get("imatrix"):
            # A shipped imatrix was read from the node's scratch copy; the manifest names the driver's.
            want = relative_to_manifest(man_path, ctx.imatrix.path)
            if node_man["imatrix"].get("path") != want:
                update_manifest(man_path, imatrix={**node_man["imatrix"], "path": want})
        return result
    # Pull every file to where a local build stages it (``.partial``, or the split work folder),
    # verify it as a local build does, then commit through the same journal.
    t0 = time.monotonic()
    node_dir = Path(value["out_dir"])
    finals = [Path(ctx.out_dir) / Path(f["path"]).name for f in node_man["files"]]
    work = split_work_dir(output)
    if len(finals) == 1:
        staged = [output.with_name(output.name + ".partial")]
    else:
        work.mkdir(exist_ok=True)
        staged = [work / f.name for f in finals]
    journal = qb.pending_path(man_path)

    def shown(file_name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, "driver", f"pull {file_name}", done, total)

    try:
        for f, part, final in zip(node_man["files"], staged, finals, strict=True):
            pull_file(session, node_id=node["node_id"], source=str(node_dir / f["path"]), partial=part,
                      sha256=f["sha256"], size=f["bytes"], on_bytes=shown(final.name))
        qb.verify_output(staged, plan, expect_kv=qb._expected_kv(ctx, plan),
                         exact_file_bytes=len(staged) == 1)
        log_text = session.call(read_chunk, str(node_dir / Path(result.log).name), 0, 1 << 30,
                                node_id=node["node_id"])
    except BaseException:
        remove_quietly([*staged, work])
        raise
    pull_s = time.monotonic() - t0
    log_path = output.with_name(output.name + ".log")
    atomic_write_bytes(log_path, log_text)
    os.chmod(log_path, 0o666 & ~_umask())  # as a local build's log, not the temp file's 0600
    data = dict(node_man)
    node_out = str(node_dir / node_man["output"])
    data["command"] = [str(output) if a == node_out else a for a in node_man["command"]]
    data["files"] = [{**f, "path": relative_to_manifest(man_path,
                                                        final)} for f, final in zip(node_man["files"], finals,
                                                                                    strict=True)]
    data["base"] = {**node_man["base"], "path": relative_to_manifest(man_path, ctx.base_path)}
    if data.get("imatrix") and ctx.imatrix is not None:
        data["imatrix"] = {**node_man["imatrix"], "path": relative_to_manifest(man_path, ctx.imatrix.path)}
    data["log"] = relative_to_manifest(man_path, log_path)
    data["node"] = {**(node_man.get("node") or node),
                    "pulled": {"bytes": sum(f["bytes"] for f in node_man["files"]),
                                                               "seconds": round(pull_s, 3)}}
    man = Manifest.model_validate(data)
    # Journal, renames, manifest, with Ctrl-C held back: a run cut short in between is completed
    # by the rerun (``_verified`` → ``build._recover``) without pulling again.
    write_manifest(journal, man)
    with interrupts_deferred():
        if force:
            remove_quietly([p for p in existing_outputs(output) if p not in finals])
        for src, dst in zip(staged, finals, strict=True):
            os.replace(src, dst)
        remove_quietly([work])
        os.replace(journal, man_path)
    return qb.BuildResult(
        variant=name, status="built", output=str(output), files=tuple(str(f) for f in finals),
        manifest=str(man_path), log=str(log_path), planned_file_bytes=plan.file_bytes,
        actual_file_bytes=man.actual_file_bytes, command=data["command"], seconds=result.seconds + pull_s,
    )  # fmt: skip


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _summarise(failures: list[tuple[str, QuantforgeError]], total: int) -> QuantforgeError:
    if len(failures) == 1:
        return failures[0][1]
    text = "; ".join(f"{k}: {e.one_line()}" for k, e in failures)
    return ClusterError(
        f"{len(failures)} of {total} variants failed: {text}",
        hint="verified variants are kept; run the same command again to resume",
    )


def _ladder(
    ctx: qb.BuildContext, names: Sequence[str], results: dict[str, qb.BuildResult]
) -> qb.LadderResult:
    tc = ctx.toolchain
    return qb.LadderResult(
        recipe=ctx.recipe.path, engine=tc.engine, toolchain=f"{tc.label} {tc.version} ({tc.source})",
        base=str(ctx.base_path), imatrix=ctx.imatrix.path if ctx.imatrix else None,
        results=tuple(results[n] for n in names if n in results),
    )  # fmt: skip
