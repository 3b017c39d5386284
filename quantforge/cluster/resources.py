"""What each cluster task asks Ray for, from the plan, and whether any node can give it.

* A **build** asks for ``llama-quantize``'s working set, not for the base: the tool streams the
  base through mmap (page cache, which the kernel gives back) and holds one tensor at a time in
  three buffers: the source bytes, their f32 conversion and the f32-sized output work buffer
  (``llama_model_quantize_impl``: ``read_data``, ``f32_conv_buf``, ``work``). So a 1.3 TB
  DeepSeek BF16 asks for 35.5 GiB (its 3.76 G-element expert tensors), and a box with 64 GiB can
  build it. CPUs: ``--threads``, else the fewest CPUs of a node that has the memory, so every
  such node can take it (a homogeneous cluster then runs one build per node with all its cores,
  like a local build does).
* An **evaluation** holds the whole model (and, for KLD, the base while its logits are made)
  plus the context's KV cache and compute buffers, for which a fixed reserve is added.
* A **sweep** asks for the custom resource ``rig:NAME`` (all of it, so sweeps of one rig run one
  at a time) and every CPU of that node, so nothing else runs there while it is measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import catalogue
from quantforge.errors import ClusterError
from quantforge.inventory_models import TensorInventory
from quantforge.plan import QuantPlan
from quantforge.units import human_bytes

_FROZEN = ConfigDict(frozen=True, extra="forbid")
#: The tool process itself (code, ggml context, log buffers) on top of its tensor buffers.
PROCESS_RESERVE_BYTES = 512 * 1024**2
#: KV cache and compute buffers of an evaluation at the usual 512-4096 context.
EVAL_RESERVE_BYTES = 2 * 1024**3
RIG_PREFIX = "rig:"


class TaskResources(BaseModel):
    """One task's request: Ray's ``num_cpus``, ``memory`` (bytes) and custom ``resources``."""

    model_config = _FROZEN
    cpus: int
    memory: int
    custom: dict[str, float] = {}

    def describe(self) -> str:
        parts = [f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}", f"{human_bytes(self.memory)} memory"]
        parts += [f"{k}={v:g}" for k, v in sorted(self.custom.items())]
        return ", ".join(parts)


class NodeInfo(BaseModel):
    """A live node of the cluster and what it offers."""

    model_config = _FROZEN
    node_id: str
    ip: str
    hostname: str | None = None
    cpus: float
    memory: float
    custom: dict[str, float] = {}

    @property
    def rigs(self) -> list[str]:
        return sorted(k[len(RIG_PREFIX) :] for k in self.custom if k.startswith(RIG_PREFIX))

    def describe(self) -> str:
        extra = "".join(f", {k}" for k in sorted(self.custom) if k.startswith(RIG_PREFIX))
        return f"{self.ip} {self.node_id[:8]} ({self.cpus:g} CPUs, {human_bytes(int(self.memory))}{extra})"

    def holds(self, req: TaskResources) -> bool:
        return (
            self.cpus >= req.cpus
            and self.memory >= req.memory
            and all(self.custom.get(k, 0.0) >= v for k, v in req.custom.items())
        )


def quantize_working_set(plan: QuantPlan, inventory: TensorInventory) -> int:
    """Bytes ``llama-quantize`` holds at its peak: the largest tensor's three buffers plus the process."""
    cat = catalogue(plan.engine)
    source = {t.name: t for t in inventory.tensors}
    peak = 0
    for t in plan.tensors:
        src = source.get(t.name)
        n = 1
        for d in t.shape:
            n *= d
        src_bytes = (cat.get(src.dtype).tensor_bytes(src.shape) if src is not None and cat.find(src.dtype)
                     else 4 * n)
        peak = max(peak, src_bytes + 8 * n)
    return peak + PROCESS_RESERVE_BYTES


def build_resources(plan: QuantPlan, inventory: TensorInventory, *, threads: int | None,
                    nodes: Sequence[NodeInfo]) -> TaskResources:
    memory = quantize_working_set(plan, inventory)
    return TaskResources(cpus=threads or _fewest_cpus(nodes, memory), memory=memory)


def eval_resources(model_bytes: int, *, base_bytes: int | None, threads: int | None,
                   nodes: Sequence[NodeInfo]) -> TaskResources:
    memory = max(model_bytes, base_bytes or 0) + EVAL_RESERVE_BYTES
    return TaskResources(cpus=threads or _fewest_cpus(nodes, memory), memory=memory)


def sweep_resources(rig: str, model_bytes: int, *, nodes: Sequence[NodeInfo]) -> TaskResources:
    key = RIG_PREFIX + rig
    holders = [n for n in nodes if n.custom.get(key, 0.0) > 0]
    if not holders:
        known = sorted({r for n in nodes for r in n.rigs})
        raise ClusterError(
            f"no node of the cluster offers the resource {key}",
            where="--rig",
            hint=(f"rigs on this cluster: {', '.join(known)}" if known else "no node names a rig")
            + f"; start that machine's node with ray start ... --resources '{{\"{key}\": 1}}'",
        )
    cpus = int(min(n.cpus for n in holders))
    amount = min(n.custom[key] for n in holders)
    return TaskResources(cpus=max(cpus, 1), memory=model_bytes + EVAL_RESERVE_BYTES, custom={key: amount})


def _fewest_cpus(nodes: Sequence[NodeInfo], memory: int) -> int:
    able = [n for n in nodes if n.memory >= memory and n.cpus >= 1]
    return int(min(n.cpus for n in able)) if able else 1


def check_feasible(what: str, req: TaskResources, nodes: Sequence[NodeInfo], *, address: str) -> None:
    """ClusterError when no live node could ever run ``req`` (Ray would leave it pending forever)."""
    if any(n.holds(req) for n in nodes):
        return
    listing = "; ".join(n.describe() for n in nodes) or "none"
    raise ClusterError(
        f"no node of the cluster can run {what}: it needs {req.describe()}; nodes: {listing}",
        where=address,
        hint="add a node that large (ray start --address ... --num-cpus N --memory BYTES), or lower "
             "--threads",
    )
