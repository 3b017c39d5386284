"""A real multi-node Ray cluster on loopback for the cluster tests and bench/cluster_overhead.py.

Every node is its own raylet (``ray.cluster_utils.Cluster`` starts them as separate processes,
as ``ray start --head`` / ``ray start --address`` would on separate machines), all on this
machine, with its own CPUs, memory, custom resources (``rig:NAME``) and its own scratch and cache
folders (``QUANTFORGE_SCRATCH`` / ``QUANTFORGE_CACHE`` in the node's environment). The head has
no CPUs, like a head that only coordinates, so every task runs on a worker node. The driver
connects through Ray Client (``ray://127.0.0.1:PORT``), exactly as ``--cluster`` does.

The nodes keep Ray's own choice of address (this machine's, so nothing leaves it): started with
``node_ip_address="127.0.0.1"``, Ray 2.60's per-driver client server cannot reach the GCS and
every connection fails with "Initialization failure from server".
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackCluster:
    def __init__(self, root: Path, workers: list[dict[str, Any]]) -> None:
        self.root = root
        self.spec = workers
        self.cluster: Any = None
        self.workers: list[Any] = []
        self.scratch: dict[str, Path] = {}  # node id -> scratch folder
        self.resources: dict[str, dict[str, float]] = {}  # node id -> its custom resources
        self.address = ""

    def _env(self, name: str) -> dict[str, str]:
        scratch = self.root / name / "scratch"
        cache = self.root / name / "cache"
        scratch.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        import quantforge

        # The nodes import the quantforge the tests import (a checkout need not be installed).
        code = str(Path(quantforge.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH", "")) if p)
        return {"QUANTFORGE_SCRATCH": str(scratch), "QUANTFORGE_CACHE": str(cache), "PYTHONPATH": path}

    def start(self) -> LoopbackCluster:
        from ray.cluster_utils import Cluster

        port = free_port()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0, "include_dashboard": False,
                "ray_client_server_port": port, "object_store_memory": 200 * 1024**2,
                "env_vars": self._env("head"),
            },
        )  # fmt: skip
        for i, w in enumerate(self.spec):
            self.add_worker(w, name=w.get("name", f"worker{i + 1}"))
        self.cluster.wait_for_nodes()
        self.address = f"ray://127.0.0.1:{port}"
        return self

    def add_worker(self, w: dict[str, Any], *, name: str) -> Any:
        env = self._env(name)
        node = self.cluster.add_node(
            num_cpus=w.get("cpus", 1), memory=w.get("memory", 4 * 1024**3), resources=w.get("resources", {}),
            object_store_memory=200 * 1024**2, env_vars=env,
        )  # fmt: skip
        self.workers.append(node)
        self.scratch[node.node_id] = Path(env["QUANTFORGE_SCRATCH"])
        self.resources[node.node_id] = dict(w.get("resources", {}))
        self.cluster.wait_for_nodes()
        return node

    def raylet_pid(self, node: Any) -> int:
        from ray._private import ray_constants

        return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)

    def node_of_pid(self, pid: int) -> Any:
        """The worker node whose raylet is an ancestor of ``pid`` (a task's tool process)."""
        raylets = {self.raylet_pid(n): n for n in self.workers}
        p = pid
        while p > 1:
            if p in raylets:
                return raylets[p]
            p = _ppid(p)
        return None

    def kill_node(self, node: Any, tool_pids: list[int]) -> None:
        """A machine dying: its workers, tools and raylet SIGKILLed, none of them left to clean up.

        The Ray worker goes first: killed after its tool, it would see the tool die and remove the
        tool's partial output, which a machine that loses power does not do.
        """
        parents = [_ppid(p) for p in tool_pids]
        for pid in [*parents, *tool_pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(d.name))
    return out
