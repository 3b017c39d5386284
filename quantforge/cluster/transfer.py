"""Moving files between the driver and the nodes when no shared folder holds them.

* **Pull** (a node's output to the driver): chunks read on that node by pinned, CPU-free tasks,
  a few in flight, appended to ``<final>.partial`` on the driver while hashing; the file keeps
  its ``.partial`` name until its sha256 equals the one the node's manifest lists, and the caller
  renames it only after the plan's verification, so no partial is ever under a final name.
* **Ship** (a small input to a node: an imatrix, a corpus, a model to evaluate): the driver puts
  its chunks into the object store; the node writes them to ``scratch/inputs/<sha256>/<name>``
  through a ``.partial`` and keeps it only when the sha256 matches, so a second task on that node
  reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantforge.cluster.resources import TaskResources
from quantforge.errors import BuildError, ClusterError, InputError

CHUNK_BYTES = 32 * 1024**2
IN_FLIGHT = 4
#: The request of the helper tasks that read chunks: no CPU, so a pull never waits behind a build.
_NO_RESOURCES = TaskResources(cpus=0, memory=0)


def read_chunk(path: str, offset: int, size: int) -> bytes:
    """Node side: ``size`` bytes of ``path`` from ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def pull_file(
    session: Any,
    *,
    node_id: str,
    source: str,
    partial: Path,
    sha256: str,
    size: int,
    on_bytes: Callable[[int, int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Path:
    """Copy ``source`` on node ``node_id`` to ``partial`` (never a final name) and check its size and
    sha256."""
    dest = partial
    offsets = list(range(0, size, chunk_bytes)) or [0]
    h = hashlib.sha256()
    done = 0
    try:
        with open(partial, "wb") as out:
            pending: list[Any] = []
            nxt = 0
            while nxt < len(offsets) or pending:
                while nxt < len(offsets) and len(pending) < IN_FLIGHT:
                    pending.append(session._remote(read_chunk, _NO_RESOURCES, node_id=node_id)
                                   .remote(source, offsets[nxt], chunk_bytes))
                    nxt += 1
                try:
                    data = session.ray.get(pending.pop(0))
                except session.ray.exceptions.RayError as exc:
                    raise ClusterError(
                        f"pulling {Path(source).name} from node {node_id[:8]} failed: the node died or lost "
                        "the file "
                        f"({type(exc).__name__})",
                        where=str(dest),
                        hint="run the same command again: the variant is built again on a live node",
                    ) from None
                out.write(data)
                h.update(data)
                done += len(data)
                if on_bytes is not None:
                    on_bytes(done, size)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    if done != size or h.hexdigest() != sha256:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise BuildError(
            f"{dest.name} pulled from node {node_id[:8]} is {done} bytes with sha256 {h.hexdigest()[:16]}…, "
            f"its manifest says {size} bytes, {sha256[:16]}…",
            where=str(dest),
            hint="the node's copy changed while it was pulled; run the same command again",
        )
    return partial


def ship_file(session: Any, path: Path, *, sha256: str, limit: int, what: str) -> dict[str, Any]:
    """Put ``path`` into the object store in chunks for a node to write into its scratch folder."""
    size = path.stat().st_size
    if size > limit:
        raise InputError(
            f"{what} {path.name} ({size} bytes) is too large to ship to the nodes through Ray",
            where=str(path),
            hint="put it under the recipe's [cluster] shared folder (every node sees it there), "
            "or raise cluster.ship_max_bytes in the user config",
        )
    refs = []
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            refs.append(session.put(data))
    return {"name": path.name, "sha256": sha256, "bytes": size, "chunks": refs}


def materialize(shipped: dict[str, Any], scratch: Path) -> Path:
    """Node side: the shipped file under ``scratch/inputs/<sha256>/<name>`` (written once, checked)."""
    import ray  # optional

    folder = scratch / "inputs" / str(shipped["sha256"])
    final = folder / str(shipped["name"])
    if final.is_file() and final.stat().st_size == shipped["bytes"]:
        return final  # written by an earlier task on this node only after its sha256 matched
    folder.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.name}.{os.getpid()}.{time.monotonic_ns()}.partial")
    h = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for ref in shipped["chunks"]:
                data = ray.get(ref)
                out.write(data)
                h.update(data)
        if h.hexdigest() != shipped["sha256"]:
            raise ClusterError(f"shipped {shipped['name']} arrived with another sha256", where=str(final),
                               hint="run the same command again")
        os.replace(partial, final)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return final
