"""A real multi-node Ray cluster on loopback for the cluster tests and bench/cluster_overhead.py.

Every node is its own raylet (``ray.cluster_utils.Cluster`` starts them as separate processes,
as ``ray start --head`` / ``ray start --address`` would on separate machines), on 127.0.0.1,
with its own CPUs, memory, custom resources (``rig:NAME``) and its own scratch and cache
folders (``QUANTFORGE_SCRATCH`` / ``QUANTFORGE_CACHE`` in the node's environment). The head has
no CPUs, like a head that only coordinates, so every task runs on a worker node. The driver
connects through Ray Client (``ray://127.0.0.1:PORT``), exactly as ``--cluster`` does.
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
        self.address = ""

    def _env(self, name: str) -> dict[str, str]:
        scratch = self.root / name / "scratch"
        cache = self.root / name / "cache"
        scratch.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        return {"QUANTFORGE_SCRATCH": str(scratch), "QUANTFORGE_CACHE": str(cache)}

    def start(self) -> LoopbackCluster:
        from ray.cluster_utils import Cluster

        port = free_port()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0, "include_dashboard": False,
                "ray_client_server_port": port, "object_store_memory": 200 * 1024**2, "env_vars": self._env("head"),
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
        self.scratch[node.unique_id] = Path(env["QUANTFORGE_SCRATCH"])
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
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                return None
            p = int(stat.rsplit(")", 1)[1].split()[1])
        return None

    def kill_node(self, node: Any, tool_pids: list[int]) -> None:
        """A machine dying: its tools, workers and raylet SIGKILLed at once."""
        for pid in tool_pids:
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
