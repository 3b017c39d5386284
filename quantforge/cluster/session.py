"""The driver's side of Ray: connect, list nodes, run tasks with one progress view, cancel on Ctrl-C.

Ray is an optional dependency (``pip install 'quantforge[ray]'``) and is imported only here and
in the node-side task module. Tasks return plain dicts; a library error raised on a node comes
back as ``{"error": {...}}`` and is raised again on the driver as the same class with the same
``where`` and ``hint``, so a cluster run fails with exactly the line a local run would print.
"""

from __future__ import annotations

import contextlib
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge import errors
from quantforge.cluster.config import ClusterSpec
from quantforge.cluster.resources import NodeInfo, TaskResources
from quantforge.errors import ClusterError, Interrupted, QuantforgeError, ToolError

_FROZEN = ConfigDict(frozen=True, extra="forbid")
#: After a polite cancel (KeyboardInterrupt inside the task: the tool's process group is killed and
#: its partial removed, as on a local Ctrl-C), tasks still running this long are killed outright.
CANCEL_GRACE_S = 15.0
#: Connection attempts when the head's per-driver server fails its first start (a loaded head).
CONNECT_ATTEMPTS = 3

#: progress(task, node, kind, done, total): one line of the cluster's progress view.
TaskProgress = Callable[[str, str, str, int, int], None]


def import_ray() -> Any:
    try:
        import ray  # optional
    except ImportError:
        raise ToolError(
            "a cluster run needs Ray, which is not installed",
            where="--cluster",
            hint="pip install 'quantforge[ray]' on the driver and on every node",
        ) from None
    return ray


class _Board:
    """A tiny actor the tasks report to: (task -> node, kind, done, total, updated)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, str, int, int, float]] = {}

    def report(self, task: str, node: str, kind: str, done: int, total: int) -> None:
        self.state[task] = (node, kind, done, total, time.time())

    def snapshot(self) -> dict[str, tuple[str, str, int, int, float]]:
        return dict(self.state)


class Reporter:
    """Given to node-side code: ``reporter(kind, done, total)``, throttled to a few calls a second."""

    def __init__(self, board: Any, task: str, node: str, *, every_s: float = 0.25) -> None:
        self.board, self.task, self.node, self.every_s = board, task, node, every_s
        self._last = 0.0
        self._key: tuple[str, int] | None = None

    def __call__(self, kind: str, done: int, total: int) -> None:
        now = time.monotonic()
        if (kind, total) == self._key and done < total and now - self._last < self.every_s:
            return
        self._last, self._key = now, (kind, total)
        if self.board is not None:
            self.board.report.remote(self.task, self.node, kind, done, total)


class Job(BaseModel):
    """One task to run: what it is called in the progress view and the errors, and its request."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    key: str
    what: str  # "the build of IQ4_KS", for messages
    resources: TaskResources
    func: Any  # a module-level function of quantforge.cluster.tasks
    spec: dict[str, Any]
    node_id: str | None = None  # pin to this node (hard)


class Outcome(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    key: str
    value: dict[str, Any] | None = None
    error: QuantforgeError | None = None


class Session:
    """A connected driver: ``with connect(spec) as s: s.nodes(); s.run(jobs, ...)``."""

    def __init__(self, ray: Any, spec: ClusterSpec) -> None:
        self.ray, self.spec = ray, spec
        self.board: Any = None

    # -- nodes
    def nodes(self) -> list[NodeInfo]:
        out = []
        for n in self.ray.nodes():
            if not n.get("Alive"):
                continue
            res = dict(n.get("Resources") or {})
            custom = {
                k: float(v) for k, v in res.items()
                if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")
                and k != "accelerator_type" and not k.startswith("accelerator_type:")
            }  # fmt: skip
            out.append(
                NodeInfo(
                    node_id=n["NodeID"], ip=n.get("NodeManagerAddress", "?"),
                    hostname=n.get("NodeManagerHostname"), cpus=float(res.get("CPU", 0.0)),
                    memory=float(res.get("memory", 0.0)), custom=custom,
                )  # fmt: skip
            )
        if not out:
            raise ClusterError("the cluster has no live node", where=self.spec.address,
                               hint="start one with ray start")
        return out

    def put(self, data: bytes) -> Any:
        return self.ray.put(data)

    def call(self, func: Callable[..., Any], *args: Any, node_id: str | None = None,
             timeout: float | None = None) -> Any:
        """Run a small node-side helper (no CPU, no memory) and return its result."""
        return self.ray.get(self._remote(func, TaskResources(cpus=0, memory=0),
                                         node_id=node_id).remote(*args),
                            timeout=timeout)

    def _remote(self, func: Callable[..., Any], req: TaskResources, *, node_id: str | None = None,
                retries: int = 0) -> Any:
        opts: dict[str, Any] = {"num_cpus": req.cpus, "max_retries": retries, "retry_exceptions": False}
        if req.memory:
            opts["memory"] = req.memory
        if req.custom:
            opts["resources"] = dict(req.custom)
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # optional

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        return self.ray.remote(func).options(**opts)

    # -- running
    def run(
        self,
        jobs: Sequence[Job],
        *,
        progress: TaskProgress | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        tick: Callable[[], None] | None = None,
        poll_s: float = 0.5,
    ) -> list[Outcome]:
        """Submit ``jobs``, show their progress, collect every outcome (a failed task does not stop the
        others).

        ``on_outcome`` runs on the driver as each task ends (pulling its files, writing manifests);
        Ctrl-C cancels every task still running, waits for them to clean up, and raises Interrupted.
        """
        if self.board is None:
            self.board = self.ray.remote(num_cpus=0)(_Board).remote()
        refs: dict[Any, Job] = {}
        for job in jobs:
            fn = self._remote(job.func, job.resources, node_id=job.node_id, retries=self.spec.retries)
            refs[fn.remote(job.spec, self.board, job.key)] = job
        outcomes: list[Outcome] = []
        pending = list(refs)
        seen: dict[str, tuple[str, str, int, int, float]] = {}
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1, timeout=poll_s)
                seen = self._show(seen, progress)
                for ref in ready:
                    job = refs[ref]
                    outcome = self._outcome(job, ref, seen)
                    outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
                if tick is not None:
                    tick()
        except KeyboardInterrupt:
            n = self.cancel(pending)
            raise Interrupted(
                f"Ctrl-C: cancelled {n} cluster task(s); each stopped its tool and removed its partial "
                "output, "
                "verified outputs are kept",
                where=self.spec.address,
                hint="run the same command again to resume",
            ) from None
        return outcomes

    def refresh(self, progress: TaskProgress | None) -> None:
        """Redraw the progress view (for long driver-side steps such as pulling a file)."""
        if self.board is not None and progress is not None:
            self._show({}, progress)

    def _show(self, seen: dict[str, tuple[str, str, int, int, float]],
              progress: TaskProgress | None) -> dict[str, tuple[str, str, int, int, float]]:
        if self.board is None:
            return seen
        try:
            snap: dict[str, tuple[str, str, int, int, float]] = self.ray.get(self.board.snapshot.remote(),
                                                                             timeout=10)
        except Exception:  # noqa: BLE001 - the view is best effort; the tasks' results are what count
            return seen
        if progress is not None:
            for task, st in sorted(snap.items()):
                if seen.get(task) != st:
                    progress(task, st[0], st[1], st[2], st[3])
        return snap

    def _outcome(self, job: Job, ref: Any, seen: dict[str, tuple[str, str, int, int, float]]) -> Outcome:
        ray = self.ray
        node = seen.get(job.key, ("an unknown node",))[0]
        try:
            value = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return Outcome(key=job.key, error=Interrupted(f"{job.what} was cancelled", where=node))
        except ray.exceptions.RayTaskError as exc:  # a bug on the node: its own line, not a traceback
            cause = getattr(exc, "cause", None) or exc
            return Outcome(key=job.key, error=ClusterError(
                f"{job.what} failed on {node}: {type(cause).__name__}: "
                f"{str(cause).splitlines()[-1] if str(cause) else ''}",
                where=self.spec.address, hint="run it locally with --debug for the traceback"))
        except (ray.exceptions.RayError, ConnectionError) as exc:  # node or worker died, object lost
            return Outcome(key=job.key, error=ClusterError(
                f"{job.what} was lost: {node} died or its worker crashed ({type(exc).__name__})",
                where=self.spec.address,
                hint="the node's partial output is not under a final name; run the same command again "
                     "to resume"))
        if isinstance(value, dict) and "error" in value:
            return Outcome(key=job.key, error=rebuild_error(value["error"], node=node))
        return Outcome(key=job.key, value=value)

    def cancel(self, refs: Sequence[Any]) -> int:
        """Cancel ``refs``: politely (the task's tool is stopped and its partial removed), then by force."""
        ray = self.ray
        live = list(refs)
        for r in live:
            with contextlib.suppress(Exception):
                ray.cancel(r, force=False)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while live and time.monotonic() < deadline:
            with contextlib.suppress(KeyboardInterrupt):
                _, live = ray.wait(live, num_returns=len(live), timeout=0.5)
        for r in live:
            with contextlib.suppress(Exception):
                ray.cancel(r, force=True)
        return len(refs)


def error_record(exc: QuantforgeError) -> dict[str, Any]:
    return {"class": type(exc).__name__, "message": exc.message, "where": exc.where, "hint": exc.hint}


def rebuild_error(rec: dict[str, Any], *, node: str) -> QuantforgeError:
    cls = getattr(errors, str(rec.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, QuantforgeError)):
        cls = ClusterError
    message = f"{rec.get('message')} [on {node}]"
    return cls(message, where=rec.get("where"), hint=rec.get("hint"))


def _reachable(spec: ClusterSpec, timeout: float = 5.0) -> None:
    """A quick TCP check before Ray's own connect, which retries for half a minute before it says so."""
    hostport = spec.address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"nothing answers at {hostport} ({exc.strerror or type(exc).__name__})",
            where=spec.address,
            hint="start the head with `ray start --head` (Ray Client listens on port 10001), "
            "or check the address and the firewall",
        ) from None


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Session]:
    """Connect to ``spec``'s cluster for the duration of the block (ClusterError when it cannot)."""
    ray = import_ray()
    _reachable(spec)
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # Ray Client warns on stderr as well as raising: one line is ours
                warnings.simplefilter("ignore")
                ray.init(address=spec.address, log_to_driver=False, logging_level="ERROR")
            break
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            # The head starts a server per driver; on a loaded head its first start can miss Ray
            # Client's deadline ("Initialization failure from server"): the next attempt finds it warm.
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt + 1 < CONNECT_ATTEMPTS and "Initialization failure" in str(exc):
                time.sleep(2.0 * (attempt + 1))
                continue
            raise _connect_error(spec, exc) from None
    try:
        yield Session(ray, spec)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


def _connect_error(spec: ClusterSpec, exc: BaseException) -> ClusterError:
    return ClusterError(
        f"cannot connect to the Ray cluster: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
        where=spec.address,
        hint="start the head with `ray start --head` (Ray Client listens on port 10001) and check "
             "the address",
    )
