"""What runs on a node: the same library calls a local run makes, with that node's tools and paths.

Every task gets ``(spec, board, key)``: a dict of plain values (and the recipe model), the
progress board actor and its own name in the progress view. It returns a dict; a library error
is returned as ``{"error": {...}}`` (see ``session.rebuild_error``) so the driver prints the
line a local run would. Ctrl-C on the driver cancels the task, which reaches it here as
KeyboardInterrupt: the runner stops the tool's process group and removes its partial output,
exactly as a local Ctrl-C does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

from quantforge import __version__, constants
from quantforge import build as qb
from quantforge.cluster.session import Reporter, error_record
from quantforge.cluster.transfer import materialize
from quantforge.errors import ClusterError, InputError, Interrupted, QuantforgeError
from quantforge.evaluate.bundled import bundled_version
from quantforge.evaluate.perplexity import evaluate, find_perplexity
from quantforge.lock import folder_lock
from quantforge.manifest import manifest_path, read_manifest, update_manifest
from quantforge.plan import expand
from quantforge.sensitivity.scoring import remove_outputs, score_kld


def scratch_dir() -> Path:
    """This node's scratch folder: QUANTFORGE_SCRATCH, else ~/.cache/quantforge/cluster."""
    return constants.SCRATCH_DIR or constants.CACHE_DIR / "cluster"


def identity() -> dict[str, Any]:
    """Which node this is, as manifests record it."""
    import ray  # optional

    rc = ray.get_runtime_context()
    return {
        "node_id": rc.get_node_id(),
        "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "scratch": str(scratch_dir()),
    }


def node_label(ident: dict[str, Any]) -> str:
    return f"{ident['ip']} {ident['node_id'][:8]}"


def _guarded(body: Any, spec: dict[str, Any], board: Any, key: str) -> dict[str, Any]:
    ident = identity()
    report = Reporter(board, key, node_label(ident))
    report("start", 0, 1)
    try:
        if spec.get("quantforge_version") != __version__:
            raise ClusterError(
                f"this node runs quantforge {__version__}, the driver {spec.get('quantforge_version')}",
                where=node_label(ident),
                hint="install the same quantforge version on the driver and every node",
            )
        value: dict[str, Any] = body(spec, report, ident)
        value["node"] = ident
        report("done", 1, 1)
        return value
    except QuantforgeError as exc:
        report("failed", 1, 1)
        return {"error": error_record(exc), "node": ident}
    except KeyboardInterrupt:  # a cancel from the driver that arrived outside the tool runner
        report("cancelled", 1, 1)
        return {"error": error_record(Interrupted("cancelled from the driver", where=node_label(ident))),
                "node": ident}


def _local_input(entry: dict[str, Any] | None, *, what: str, ident: dict[str, Any]) -> Path | None:
    """A driver input on this node: shipped (materialized in scratch) or at the same path (shared)."""
    if entry is None:
        return None
    if entry.get("chunks") is not None:
        return materialize(entry, scratch_dir())
    p = Path(entry["path"])
    if not p.is_file() or (entry.get("bytes") is not None and p.stat().st_size != entry["bytes"]):
        found = "missing" if not p.is_file() else (f"{p.stat().st_size} bytes, the driver's has "
                                                   f"{entry['bytes']}")
        raise InputError(
            f"the {what} {p} is not the driver's on node {node_label(ident)} ({found})",
            where=str(p),
            hint="put it under the recipe's [cluster] shared folder, or copy it to the same path on "
                 "every node",
        )
    return p


# ---------------------------------------------------------------------------------------- build


def ladder_scratch(recipe: Any, base: str) -> str:
    """The scratch sub-folder of a ladder: stable across reruns, so a node resumes its own builds."""
    digest = hashlib.sha256(f"{recipe.sha256}\0{base}".encode()).hexdigest()[:16]
    return f"builds/{digest}"


def build_task(spec: dict[str, Any], board: Any, key: str) -> dict[str, Any]:
    return _guarded(_build, spec, board, key)


def _build(spec: dict[str, Any], report: Reporter, ident: dict[str, Any]) -> dict[str, Any]:
    recipe = spec["recipe"]
    base = spec["base"]
    if not base.startswith("hf://"):
        _local_input({"path": base, "bytes": spec["base_bytes"]}, what="base", ident=ident)
    imatrix = _local_input(spec.get("imatrix"), what="imatrix", ident=ident)
    if spec["out_dir"] is not None:
        out_dir = Path(spec["out_dir"])
        if not out_dir.is_dir():
            raise InputError(
                f"the output folder {out_dir} is not on node {node_label(ident)}",
                where=str(out_dir),
                hint="mount the shared folder at the same path on every node, or remove [cluster] shared",
            )
    else:
        out_dir = scratch_dir() / ladder_scratch(recipe, base)
    ctx = qb.prepare(recipe, out_dir=out_dir, base=base, imatrix=str(imatrix) if imatrix else None,
                     bin_dir=spec.get("bin_dir"), threads=spec["threads"])
    tc = ctx.toolchain
    want = spec["toolchain"]
    mine = {"engine": tc.engine, "version": tc.version, "commit": tc.commit}
    if mine != want:
        raise ClusterError(
            f"node {node_label(ident)} has {tc.label} {tc.version} (commit {tc.commit}), the driver "
            "planned with "
            f"{want['engine']} {want['version']} (commit {want['commit']})",
            where=tc.quantize,
            hint="install the same engine build on every node (or give --bin-dir a path that holds it "
                 "everywhere)",
        )
    variant = recipe.variant(spec["variant"]).name
    # The driver holds the folder's lock; each variant has its own, which llama-quantize inherits: a
    # node cut off from the cluster whose tool still writes keeps the rerun from racing it.
    with folder_lock(ctx.out_dir, purpose=f"quantforge build {variant} (cluster task)",
                     name=f".quantforge-{variant}.lock"):
        if spec["out_dir"] is None:
            _clear_stale(qb, ctx, variant, expand)
        result = qb.build_variant(
            ctx, variant, force=spec["force"] and spec["out_dir"] is not None, min_free=spec.get("min_free"),
            split_max_bytes=spec.get("split_max_bytes"), timeout=spec.get("timeout"), progress=report,
        )  # fmt: skip
    man = manifest_path(result.output)
    if result.status == "built" or read_manifest(man).node is None:
        update_manifest(man, node={**ident, "cluster": spec["address"], "out_dir": str(ctx.out_dir)})
    return {
        "result": result.model_dump(mode="json"),
        "manifest": read_manifest(man).model_dump(mode="json"),
        "out_dir": str(ctx.out_dir),
    }


def _clear_stale(qb: Any, ctx: Any, variant: str, expand: Any) -> None:
    """In this node's scratch only: an output that is not this variant's verified build is ours to replace."""
    output = ctx.out_dir / f"{qb.output_stem(ctx.recipe, ctx.base_path)}-{variant}.gguf"
    existing = qb.existing_outputs(output)
    if not existing or qb.pending_path(manifest_path(output)).exists():
        return  # nothing there, or a commit cut short that build_variant completes
    imeta = qb._imatrix_meta(ctx.imatrix) if ctx.imatrix is not None else False
    plan = expand(ctx.recipe, variant, ctx.inventory, imatrix=imeta)
    if not qb._manifest_matches(manifest_path(output), qb._build_key(ctx, plan), existing):
        qb._remove([*existing, manifest_path(output)])


# ---------------------------------------------------------------------------------------- eval


def eval_task(spec: dict[str, Any], board: Any, key: str) -> dict[str, Any]:
    return _guarded(_eval, spec, board, key)


def _eval(spec: dict[str, Any], report: Reporter, ident: dict[str, Any]) -> dict[str, Any]:
    model = _local_input(spec["model"], what="model", ident=ident)
    base = _local_input(spec.get("base"), what="KLD base", ident=ident)
    base_logits = _local_input(spec.get("base_logits"), what="base logits file", ident=ident)
    corpus = _local_input(spec["corpus"], what="corpus", ident=ident)
    assert model is not None and corpus is not None
    report("eval", 0, 1)
    res = evaluate(
        model, engine=spec["engine"], corpus=corpus, ctx=spec["ctx"], chunks=spec.get("chunks"), base=base,
        base_logits=base_logits, kld=spec["kld"], threads=spec["threads"], batch=spec.get("batch"),
        binary=spec.get("binary"), bin_dir=spec.get("bin_dir"),
    )  # fmt: skip
    return {"result": res.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------- sweep


def sweep_task(spec: dict[str, Any], board: Any, key: str) -> dict[str, Any]:
    return _guarded(_sweep, spec, board, key)


def _sweep(spec: dict[str, Any], report: Reporter, ident: dict[str, Any]) -> dict[str, Any]:
    model = _local_input(spec.get("model"), what="model", ident=ident)
    report("sweep", 0, 1)
    value: dict[str, Any] = spec["execute"](model, spec["threads"])
    return {"result": value}


# ---------------------------------------------------------------------------------------- sensitivity


class MeasuredRun(TypedDict):
    """What one sensitivity task sends back (``_sensitivity``)."""

    kld: float
    kld_err: float
    ppl: float
    build_s: float
    seconds: float


def sensitivity_task(spec: dict[str, Any], board: Any, key: str) -> dict[str, Any]:
    return _guarded(_sensitivity, spec, board, key)


def _sensitivity(spec: dict[str, Any], report: Reporter, ident: dict[str, Any]) -> MeasuredRun:
    t0 = time.monotonic()
    recipe = spec["recipe"]
    base = spec["base"]
    if not base.startswith("hf://"):
        _local_input({"path": base, "bytes": spec["base_bytes"]}, what="base", ident=ident)
    imatrix = _local_input(spec.get("imatrix"), what="imatrix", ident=ident)
    logits = _local_input(spec["logits"], what="base logits", ident=ident)
    corpus = _local_input(spec["corpus"], what="corpus", ident=ident)
    assert logits is not None and corpus is not None
    engine = spec["engine"]
    if engine == "bundled":
        binary, version = None, bundled_version()
    else:
        binary, ver = find_perplexity(engine, bin_dir=spec.get("bin_dir"))
        version = ver or Path(binary).name
    if version != spec["eval_version"]:
        raise ClusterError(
            f"node {node_label(ident)} evaluates with {engine} {version}, the driver's method key names "
            f"{spec['eval_version']}",
            where=binary or engine, hint="install the same evaluator on every node",
        )
    out_dir = scratch_dir() / "sensitivity" / spec["method_key"]
    ctx = qb.prepare(recipe, out_dir=out_dir, base=base, imatrix=str(imatrix) if imatrix else None,
                     bin_dir=spec.get("bin_dir"), threads=spec["threads"])
    tc = ctx.toolchain
    if {"engine": tc.engine, "version": tc.version, "commit": tc.commit} != spec["toolchain"]:
        raise ClusterError(
            f"node {node_label(ident)} has {tc.label} {tc.version} (commit {tc.commit}), the driver's "
            "method key "
            f"names {spec['toolchain']['version']} (commit {spec['toolchain']['commit']})",
            where=tc.quantize, hint="install the same engine build on every node",
        )
    with folder_lock(out_dir, purpose=f"quantforge sensitivity run {spec['run']} (cluster task)",
                     name=f".quantforge-{spec['run']}.lock"):
        b = qb.build_variant(ctx, spec["run"], force=True, split_max_bytes=None, progress=report)
        t_build = time.monotonic() - t0
        report("kld", 0, 1)
        res = score_kld(Path(b.output), engine=engine, logits=logits, corpus=corpus,
                        corpus_sha=spec["corpus_sha256"],
                   threads=spec["threads"], binary=binary, version=version, stop=threading.Event())
        if not spec["keep"]:
            remove_outputs(Path(b.output))
    assert res.kld is not None
    return MeasuredRun(kld=res.kld.mean, kld_err=res.kld.mean_err, ppl=res.ppl, build_s=round(t_build, 2),
                       seconds=round(time.monotonic() - t0, 2))
