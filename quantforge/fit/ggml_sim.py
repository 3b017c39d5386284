"""A miniature of ggml's graph, scheduler and graph allocator, for sizing compute buffers.

The compute buffer a backend logs is the ``max_size`` of ggml-alloc's dynamic allocator after it
has walked the scheduler's graph once: tensors are placed best-fit into free blocks in graph
order, freed after their last consumer, and some ops reuse a parent's memory in place. The
scheduler (``ggml_backend_sched``) first assigns every node to a backend (the one holding its
weights, GPU assignments expanded to neighbours, a RAM-resident weight's op offloaded to the GPU
for large batches), cuts the graph into splits and copies each split's foreign inputs into its
backend. This module reproduces those three steps exactly as ik_llama.cpp and llama.cpp do
(``ggml/src/ggml-alloc.c``, ``ggml_backend_sched_split_graph`` in ``ggml-backend.cpp``), on
graphs the per-engine builders (``quantforge.fit.graphs``) write like the engines' own graph
code. Nothing is computed: tensors only carry shapes, strides and types.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from quantforge.catalogue import Engine, catalogue

#: element sizes of the non-quantized types the graphs use
_ELEM = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4, "i64": 8, "i8": 1}

#: ops whose result may reuse a parent's memory (``ggml_op_can_inplace``)
INPLACE_OPS = frozenset(
    {"SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL", "DIV", "SQR", "SQRT",
     "LOG", "UNARY", "ROPE", "RMS_NORM", "SOFT_MAX"}
)  # fmt: skip
#: view ops (``ggml_is_view_op``): no memory of their own
VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})

FLAG_INPUT = 1
FLAG_OUTPUT = 2

CUDA_ROW_PADDING = 512  # ggml-cuda MATRIX_ROW_PADDING


class TypeInfo:
    """Block size and bytes per block of a ggml type, from the catalogue for quantized types."""

    _cache: dict[tuple[str, str], tuple[int, int]] = {}

    @classmethod
    def get(cls, name: str, engine: Engine = "ik") -> tuple[int, int]:
        key = (engine, name)
        hit = cls._cache.get(key)
        if hit is not None:
            return hit
        if name in _ELEM:
            out = (1, _ELEM[name])
        else:
            qt = catalogue(engine).get(name)
            out = (qt.block_size, qt.type_size)
        cls._cache[key] = out
        return out


class Tensor:
    __slots__ = ("name", "op", "type", "ne", "nb", "src", "view_src", "view_offs", "flags", "buffer", "row_meta",
                 "op_params")  # fmt: skip

    def __init__(
        self, name: str, op: str, type_: str, ne: Sequence[int], *, nb: Sequence[int] | None = None,
        src: Sequence[Tensor | None] = (), view_src: Tensor | None = None, view_offs: int = 0,
        buffer: str | None = None, engine: Engine = "ik", row_meta: int = 0,
    ) -> None:  # fmt: skip
        self.name = name
        self.op = op
        self.type = type_
        ne4 = tuple(ne) + (1,) * (4 - len(ne))
        self.ne: tuple[int, int, int, int] = ne4  # type: ignore[assignment]
        self.row_meta = row_meta
        if nb is None:
            blck, tsize = TypeInfo.get(type_, engine)
            nb0 = tsize
            nb1 = row_meta + tsize * (ne4[0] // blck)
            nb2 = nb1 * ne4[1]
            nb3 = nb2 * ne4[2]
            nb = (nb0, nb1, nb2, nb3)
        self.nb: tuple[int, int, int, int] = tuple(nb)  # type: ignore[assignment]
        self.src: list[Tensor | None] = list(src)
        self.view_src = view_src
        self.view_offs = view_offs
        self.flags = 0
        self.buffer = buffer  # name of the buffer a pre-allocated tensor (weight, KV cache) lives in
        self.op_params: dict[str, object] = {}

    def nbytes(self, engine: Engine = "ik") -> int:
        if any(n <= 0 for n in self.ne):
            return 0
        blck, tsize = TypeInfo.get(self.type, engine)
        if blck == 1:
            n = tsize
            for i in range(4):
                n += (self.ne[i] - 1) * self.nb[i]
            return n
        n = self.row_meta + tsize * (self.ne[0] // blck)
        for i in range(1, 4):
            n += (self.ne[i] - 1) * self.nb[i]
        return n

    @property
    def is_view(self) -> bool:
        return self.view_src is not None

    @property
    def quantized(self) -> bool:
        return self.type not in _ELEM

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.op}, {self.type}, {self.ne})"


class Graph:
    """A ggml context and compute graph: tensors are created through the op methods, nodes are
    appended by ``expand`` in ggml's depth-first order (sources left to right)."""

    def __init__(self, engine: Engine = "ik") -> None:
        self.engine = engine
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self._seen: set[int] = set()
        self._n_unnamed = 0

    # ---- construction -------------------------------------------------------------------
    def new(self, type_: str, *ne: int, name: str = "", op: str = "NONE", src: Sequence[Tensor | None] = ()) -> Tensor:
        return Tensor(name, op, type_, ne, src=src, engine=self.engine)

    def weight(self, name: str, type_: str, *ne: int, buffer: str, row_meta: int = 0) -> Tensor:
        return Tensor(name, "NONE", type_, ne, buffer=buffer, engine=self.engine, row_meta=row_meta)

    def input(self, type_: str, *ne: int, name: str) -> Tensor:
        t = Tensor(name, "NONE", type_, ne, engine=self.engine)
        t.flags |= FLAG_INPUT
        return t

    def _op(self, op: str, type_: str, ne: Sequence[int], src: Sequence[Tensor | None], name: str = "") -> Tensor:
        return Tensor(name, op, type_, ne, src=src, engine=self.engine)

    def view(self, a: Tensor, ne: Sequence[int], nb: Sequence[int] | None = None, offs: int = 0, *, op: str = "VIEW",
             name: str | None = None) -> Tensor:  # fmt: skip
        ne4 = tuple(ne) + (1,) * (4 - len(ne))
        if nb is None:
            blck, tsize = TypeInfo.get(a.type, self.engine)
            nb0 = tsize
            nb1 = a.row_meta + tsize * (ne4[0] // blck)
            nb = (nb0, nb1, nb1 * ne4[1], nb1 * ne4[1] * ne4[2])
        else:
            nb = tuple(nb) + tuple(a.nb[len(nb):])  # ggml_view_Nd keeps the higher strides computed below
        base = a.view_src if a.view_src is not None else a
        t = Tensor(name if name is not None else a.name + " (view)", op, a.type, ne4, nb=nb, src=[a], view_src=base,
                   view_offs=a.view_offs + offs, engine=self.engine, row_meta=a.row_meta)  # fmt: skip
        return t

    def view_nd(self, a: Tensor, ne: Sequence[int], nbs: Sequence[int], offs: int) -> Tensor:
        """``ggml_view_{2,3,4}d``: ``nbs`` are nb1.. as given; the last stride follows the others."""
        ne4 = tuple(ne) + (1,) * (4 - len(ne))
        nb = [a.nb[0], *nbs]
        while len(nb) < 4:
            nb.append(nb[-1] * ne4[len(nb) - 1])
        return self.view(a, ne4, nb, offs)

    def reshape(self, a: Tensor, *ne: int) -> Tensor:
        return self.view(a, ne, op="RESHAPE", name=a.name + " (reshaped)")

    def permute(self, a: Tensor, *axes: int) -> Tensor:
        ne = [0, 0, 0, 0]
        nb = [0, 0, 0, 0]
        for i, ax in enumerate(axes):
            ne[ax] = a.ne[i]
            nb[ax] = a.nb[i]
        return self.view(a, ne, nb, op="PERMUTE", name=a.name + " (permuted)")

    def transpose(self, a: Tensor) -> Tensor:
        return self.permute(a, 1, 0, 2, 3)

    def view_tensor(self, a: Tensor) -> Tensor:
        return self.view(a, a.ne, a.nb)

    # ---- ops ------------------------------------------------------------------------------
    def mul_mat(self, a: Tensor, b: Tensor, name: str = "") -> Tensor:
        return self._op("MUL_MAT", "f32", (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), [a, b], name)

    def mul_mat_id(self, a: Tensor, b: Tensor, ids: Tensor, name: str = "") -> Tensor:
        return self._op("MUL_MAT_ID", "f32", (a.ne[1], ids.ne[0], b.ne[2], 1), [a, b, ids], name)

    def unary_like(self, op: str, a: Tensor, *others: Tensor | None, name: str = "", type_: str | None = None) -> Tensor:
        return self._op(op, type_ or a.type, a.ne, [a, *others], name)

    def add(self, a: Tensor, b: Tensor, name: str = "") -> Tensor:
        return self.unary_like("ADD", a, b, name=name)

    def mul(self, a: Tensor, b: Tensor, name: str = "") -> Tensor:
        return self.unary_like("MUL", a, b, name=name)

    def div(self, a: Tensor, b: Tensor, name: str = "") -> Tensor:
        return self.unary_like("DIV", a, b, name=name)

    def scale(self, a: Tensor, name: str = "") -> Tensor:
        return self.unary_like("SCALE", a, name=name)

    def unary(self, a: Tensor, name: str = "") -> Tensor:
        return self.unary_like("UNARY", a, name=name)

    def soft_max(self, a: Tensor, mask: Tensor | None = None, name: str = "") -> Tensor:
        return self.unary_like("SOFT_MAX", a, mask, name=name)

    def rms_norm(self, a: Tensor, name: str = "") -> Tensor:
        return self.unary_like("RMS_NORM", a, name=name)

    def norm(self, a: Tensor, name: str = "") -> Tensor:
        return self.unary_like("NORM", a, name=name)

    def fused_rms_norm(self, a: Tensor, w: Tensor, name: str = "") -> Tensor:
        return self._op("FUSED_RMS_NORM", a.type, a.ne, [a, w], name)

    def rope(self, a: Tensor, pos: Tensor, freq: Tensor | None = None, name: str = "") -> Tensor:
        return self._op("ROPE", a.type, a.ne, [a, pos, freq], name)

    def cont(self, a: Tensor, *ne: int, name: str = "") -> Tensor:
        return self._op("CONT", a.type, ne or a.ne, [a], name or a.name + " (cont)")

    def cpy(self, a: Tensor, b: Tensor) -> Tensor:
        t = self.view(b, b.ne, b.nb, op="CPY", name=f"{b.name} (copy of {a.name})")
        t.op = "CPY"
        t.src = [a, b]
        return t

    def cast(self, a: Tensor, type_: str, name: str = "") -> Tensor:
        t = self._op("CPY", type_, a.ne, [a], name or a.name + " (copy)")
        return t

    def concat(self, a: Tensor, b: Tensor, dim: int, name: str = "") -> Tensor:
        ne = list(a.ne)
        ne[dim] = a.ne[dim] + b.ne[dim]
        return self._op("CONCAT", a.type, ne, [a, b], name)

    def repeat(self, a: Tensor, ne: Sequence[int], name: str = "") -> Tensor:
        return self._op("REPEAT", a.type, ne, [a], name)

    def get_rows(self, a: Tensor, idx: Tensor, name: str = "") -> Tensor:
        type_ = "i32" if a.type == "i32" else "f32"
        return self._op("GET_ROWS", type_, (a.ne[0], idx.ne[0], idx.ne[1], idx.ne[2]), [a, idx], name)

    def argsort(self, a: Tensor, name: str = "") -> Tensor:
        return self._op("ARGSORT", "i32", a.ne, [a], name)

    def top_k(self, a: Tensor, k: int, name: str = "") -> Tensor:
        s = self.argsort(a, name=a.name + " (sort)")
        return self.view(s, (k, s.ne[1], s.ne[2], s.ne[3]), (s.nb[0], s.nb[1], s.nb[2], s.nb[3]), 0,
                         name=name or s.name + " (view)")  # fmt: skip

    def sum_rows(self, a: Tensor, name: str = "") -> Tensor:
        return self._op("SUM_ROWS", a.type, (1, a.ne[1], a.ne[2], a.ne[3]), [a], name)

    def flash_attn_ext(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, name: str = "") -> Tensor:
        return self._op("FLASH_ATTN_EXT", "f32", (v.ne[0], q.ne[2], q.ne[1], q.ne[3]), [q, k, v, mask], name)

    def fused_up_gate(self, up: Tensor, gate: Tensor, b: Tensor, name: str = "") -> Tensor:
        return self._op("FUSED_UP_GATE", "f32", (up.ne[1], b.ne[1], 1, 1), [up, gate, b], name)

    def moe_up_gate(self, up: Tensor, gate: Tensor | None, b: Tensor, ids: Tensor, name: str = "") -> Tensor:
        m = up.ne[1] if gate is not None else up.ne[1] // 2
        return self._op("MOE_FUSED_UP_GATE", "f32", (m, ids.ne[0], b.ne[2], 1), [up, gate, b, ids], name)

    def fused_mul_unary(self, a: Tensor, b: Tensor, name: str = "") -> Tensor:
        return self._op("FUSED_MUL_UNARY", a.type, a.ne, [a, b], name)

    def mul_multi_add(self, a: Tensor, w: Tensor, name: str = "") -> Tensor:
        return self._op("MUL_MULTI_ADD", "f32", (a.ne[0], a.ne[2], 1, 1), [a, w], name)

    # ---- graph ----------------------------------------------------------------------------
    def expand(self, t: Tensor) -> None:
        stack: list[tuple[Tensor, int]] = [(t, 0)]
        seen = self._seen
        while stack:
            node, i = stack.pop()
            if i == 0 and id(node) in seen:
                continue
            if i < len(node.src):
                stack.append((node, i + 1))
                s = node.src[i]
                if s is not None and id(s) not in seen:
                    stack.append((s, 0))
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op == "NONE":
                self.leafs.append(node)
            else:
                self.nodes.append(node)


# ---------------------------------------------------------------------------------------
# the scheduler


@dataclass
class Backend:
    """One backend of the scheduler, in priority order (GPUs first, the CPU last)."""

    name: str  # "CUDA0", "CPU"
    buffer: str  # the compute buffer's name as logged: "CUDA0", "CUDA_Host" (pinned host of a GPU run), "CPU"
    alignment: int
    weight_buffers: frozenset[str]  # weight/KV buffers whose tensors this backend computes on directly
    gpu: bool = False
    offload_batch: int = 32  # ggml-cuda's min batch for running a host-resident weight's op on the GPU


@dataclass
class SchedResult:
    buffers: dict[str, int]  # compute buffer name -> bytes
    n_splits: int
    assignment: dict[int, int] = field(default_factory=dict)
    graph: list[tuple[Tensor, int]] = field(default_factory=list)
    peak: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # buffer -> live tensors at its peak


def _cuda_runs(node: Tensor, engine: Engine) -> bool:
    """Whether the CUDA backend has a kernel for a matmul-type op on this weight type (the
    row-interleaved ``_rN`` types of ik mostly have none: their ops stay on the CPU)."""
    w = node.src[0] if node.src else None
    if w is None or not w.quantized:
        return True
    return catalogue(engine).get(w.type).cuda_matmul


def _offload_op(b: Backend, node: Tensor, engine: Engine) -> bool:
    if not b.gpu:
        return False
    if node.op in ("MUL_MAT", "MUL_MAT_ID", "MOE_FUSED_UP_GATE", "FUSED_UP_GATE") and not _cuda_runs(node, engine):
        return False
    if node.op in ("MUL_MAT_ID", "MOE_FUSED_UP_GATE"):
        ids = node.src[2] if node.op == "MUL_MAT_ID" else node.src[3]
        src0 = node.src[0]
        assert ids is not None and src0 is not None
        batch = node.ne[2]
        if engine == "ik":
            if batch < b.offload_batch:
                return False
            return batch * ids.ne[0] >= b.offload_batch * src0.ne[2]
        return batch >= b.offload_batch
    return node.ne[1] >= b.offload_batch and node.op != "GET_ROWS"


def alloc_size(t: Tensor, backend: Backend, engine: Engine) -> int:
    size = t.nbytes(engine)
    if backend.gpu and t.quantized and t.ne[0] % CUDA_ROW_PADDING:
        blck, tsize = TypeInfo.get(t.type, engine)
        size += tsize * ((CUDA_ROW_PADDING - t.ne[0] % CUDA_ROW_PADDING) // blck)
    return size


def schedule(graph: Graph, backends: Sequence[Backend], *, n_outputs_all: bool = True,
             fixed: dict[int, int] | None = None, offload_ops: bool = True, trace_peak: bool = False) -> SchedResult:  # fmt: skip
    """Assign backends, split, add the split-input copies and run the graph allocator.

    ``fixed``: node id -> backend index assignments the graph builder made
    (``ggml_backend_sched_set_tensor_backend``), which pass 1 does not overwrite.
    """
    engine = graph.engine
    nb = len(backends)
    cpu = nb - 1
    bid: dict[int, int] = dict(fixed or {})

    def from_buffer(t: Tensor) -> int:
        if t.buffer is None:
            return -1
        for i, b in enumerate(backends):
            if t.buffer in b.weight_buffers:
                return i
        return -1

    def from_cur(t: Tensor) -> int:
        i = from_buffer(t)
        if i != -1:
            return i
        if t.view_src is not None:
            i = from_buffer(t.view_src)
            if i != -1:
                return i
        if t.flags & FLAG_INPUT:
            return cpu
        for s in t.src:
            if s is None:
                continue
            if s.buffer is not None and s.buffer.startswith("w:"):
                sb = from_buffer(s)
                if offload_ops and sb == cpu:
                    for b in range(sb):
                        if _offload_op(backends[b], t, engine):
                            return b
                return sb
        return -1

    for leaf in graph.leafs:
        if id(leaf) not in bid:
            bid[id(leaf)] = from_cur(leaf)
    nodes = graph.nodes
    for n in nodes:
        if bid.get(id(n), -1) == -1:
            bid[id(n)] = from_cur(n)

    def get(t: Tensor | None) -> int:
        return -1 if t is None else bid.get(id(t), -1)

    # pass 2: expand GPU assignments down and up, then the rest down and up
    def expand(indices: Iterable[int], skip_cpu: bool) -> None:
        cur = -1
        for i in indices:
            n = nodes[i]
            if n.op in VIEW_OPS:
                continue
            b = get(n)
            if b != -1:
                cur = -1 if (skip_cpu and b == cpu) else b
            elif cur != -1:
                bid[id(n)] = cur

    rng = range(len(nodes))
    expand(rng, True)
    expand(reversed(rng), True)
    expand(rng, False)
    expand(reversed(rng), False)

    def buffer_of(t: Tensor) -> str | None:
        base = t.view_src if t.view_src is not None else t
        if base.buffer is not None:
            return base.buffer
        b = get(t)
        if b == -1 and t.view_src is not None:
            b = get(t.view_src)
        return None if b == -1 else "c:" + backends[b].buffer

    def supported(t: Tensor, b: int) -> bool:
        buf = buffer_of(t)
        if buf is None:
            return False
        if buf.startswith("c:"):
            return buf[2:] == backends[b].buffer or (buf[2:] in backends[b].weight_buffers)
        return buf in backends[b].weight_buffers

    # pass 3: unassigned nodes -> the backend with most supported inputs (upgrades do not apply:
    # the GPU and CPU compute buffer types differ)
    for n in nodes:
        if n.op in VIEW_OPS:
            continue
        if get(n) == -1:
            best, best_b = -1, cpu
            for b in range(nb):
                k = sum(1 for s in n.src if s is not None and (get(s) != -1 or get(s.view_src) != -1)
                        and supported(s, b))  # fmt: skip
                if k > best:
                    best, best_b = k, b
            bid[id(n)] = best_b
    # pass 4: sources and views from their consumers
    for n in nodes:
        if n.view_src is not None and get(n) == -1:
            bid[id(n)] = get(n.view_src)
        for s in n.src:
            if s is None or get(s) != -1:
                continue
            bid[id(s)] = get(s.view_src) if s.view_src is not None else get(n)

    # pass 5: splits and copies
    splits: list[tuple[int, int, list[Tensor]]] = []  # (backend, i_start, inputs)
    copies: dict[tuple[int, int], Tensor] = {}
    new_src: dict[int, list[Tensor | None]] = {}
    i0 = next((i for i, n in enumerate(nodes) if n.op not in VIEW_OPS), 0)
    cur_b = get(nodes[i0]) if nodes else cpu
    cur_inputs: list[Tensor] = []
    splits.append((cur_b, 0, cur_inputs))
    for i in range(i0, len(nodes)):
        n = nodes[i]
        if n.op in VIEW_OPS:
            continue
        b = get(n)
        need_new = False
        if b == cur_b and cur_inputs:
            for s in n.src:
                if s is not None and s.buffer is not None and s.buffer.startswith("w:") and get(s) != cur_b:
                    need_new = True
                    break
        if b != cur_b or need_new:
            cur_b = b
            cur_inputs = []
            splits.append((cur_b, i, cur_inputs))
        srcs = list(n.src)
        changed = False
        for j, s in enumerate(srcs):
            if s is None:
                continue
            sb = get(s)
            if sb != cur_b and not supported(s, cur_b):
                key = (id(s), cur_b)
                c = copies.get(key)
                if c is None:
                    c = Tensor(f"{backends[cur_b].name}#{s.name}#0", "NONE", s.type, s.ne, nb=s.nb, engine=engine,
                               row_meta=s.row_meta)  # fmt: skip
                    copies[key] = c
                    bid[id(c)] = cur_b
                    cur_inputs.append(s)
                srcs[j] = c
                changed = True
        if changed:
            new_src[id(n)] = srcs
    # the graph copy: per split, its input dependencies then its input copies, then its nodes
    gnodes: list[tuple[Tensor, int]] = []
    bounds = [s[1] for s in splits[1:]] + [len(nodes)]
    for (b, start, inputs), end in zip(splits, bounds, strict=True):
        for inp in inputs:
            dep = Tensor(inp.name + " (dep)", "NONE", inp.type, inp.ne, nb=inp.nb, src=[inp],
                         view_src=inp.view_src if inp.view_src is not None else inp, engine=engine)  # fmt: skip
            gnodes.append((dep, get(inp)))
            gnodes.append((copies[(id(inp), b)], b))
        split_nodes = nodes[start:end]
        keep: dict[int, list[Tensor]] = {}
        if engine == "mainline" and backends[b].gpu:
            keep = _cuda_alloc_deps(split_nodes)
        for n in split_nodes:
            gnodes.append((n, get(n)))
            kept = keep.get(id(n))
            if kept:
                # ggml_backend_sched: a GGML_OP_NONE node that keeps the fused ops' inputs alive until here
                dep = Tensor(n.name + " (keep)", "NONE", kept[0].type, kept[0].ne, nb=kept[0].nb,
                             src=list(kept),
                             view_src=kept[0].view_src if kept[0].view_src is not None else kept[0], engine=engine)
                gnodes.append((dep, b))
    leafs = [(lf, get(lf)) for lf in graph.leafs]
    trace: dict[str, list[tuple[str, int, int]]] | None = {} if trace_peak else None
    sizes = _allocate(gnodes, leafs, backends, engine, new_src, trace)
    return SchedResult(buffers=sizes, n_splits=len(splits), assignment=bid, graph=gnodes, peak=trace or {})


def _contiguous(t: Tensor) -> bool:
    return t.nb == Tensor("", "NONE", t.type, t.ne).nb


def _cuda_alloc_deps(nodes: Sequence[Tensor]) -> dict[int, list[Tensor]]:
    """mainline's ``ggml_backend_cuda_graph_optimize``: the MoE weighted-reduction fusion
    (``experts * weights`` followed by the per-expert views and adds) keeps the experts and the
    weights alive until the last add, so the adds cannot reuse the experts' memory."""
    keep: dict[int, list[Tensor]] = {}
    i = 0
    n = len(nodes)
    while i < n:
        first = nodes[i]
        if first.op == "MUL" and first.type == "f32" and _contiguous(first) and len(first.src) >= 2:
            a, w = first.src[0], first.src[1]
            if a is not None and w is not None and a.ne == first.ne and w.ne[0] == 1 and w.ne[1:] == first.ne[1:]:
                n_used = first.ne[1]
                count = 2 * n_used
                if 2 <= n_used <= 15 and i + count <= n:
                    seq = nodes[i + 1 : i + count]
                    views = [x for x in seq if x.op == "VIEW" and x.view_src is first]
                    adds = [x for x in seq if x.op == "ADD"]
                    if len(views) == n_used and len(adds) == n_used - 1:
                        dst = adds[-1]
                        keep.setdefault(id(dst), []).extend([a, w])
                        i += count
                        continue
        i += 1
    return keep


# ---------------------------------------------------------------------------------------
# the graph allocator (ggml-alloc.c)


class _DynAlloc:
    __slots__ = ("alignment", "blocks", "max_size", "last_size")

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def _align(self, n: int) -> int:
        a = self.alignment
        return (n + a - 1) // a * a

    def alloc(self, size: int) -> int:
        size = self._align(size)
        self.last_size = size
        blocks = self.blocks
        best, best_size = -1, 1 << 63
        for i in range(len(blocks) - 1):
            bs = blocks[i][1]
            if bs >= size and bs <= best_size:
                best, best_size = i, bs
        if best == -1:
            best = len(blocks) - 1
        blk = blocks[best]
        off = blk[0]
        blk[0] += size
        blk[1] -= size
        if blk[1] == 0:
            del blocks[best]
        if off + size > self.max_size:
            self.max_size = off + size
        return off

    def free(self, off: int, size: int) -> None:
        size = self._align(size)
        blocks = self.blocks
        for i, blk in enumerate(blocks):
            if blk[0] + blk[1] == off:
                blk[1] += size
                if i < len(blocks) - 1 and blk[0] + blk[1] == blocks[i + 1][0]:
                    blk[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if off + size == blk[0]:
                blk[0] = off
                blk[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == blk[0]:
                    blocks[i - 1][1] += blk[1]
                    del blocks[i]
                return
        pos = 0
        while pos < len(blocks) and blocks[pos][0] < off:
            pos += 1
        blocks.insert(pos, [off, size])


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.type == b.type and a.ne == b.ne and a.nb == b.nb


def _allocate(
    gnodes: Sequence[tuple[Tensor, int]], leafs: Sequence[tuple[Tensor, int]], backends: Sequence[Backend],
    engine: Engine, new_src: dict[int, list[Tensor | None]], trace: dict[str, list[tuple[str, int, int]]] | None = None,
) -> dict[str, int]:  # fmt: skip
    # one dynamic allocator per distinct compute buffer
    allocs: dict[str, _DynAlloc] = {}
    for b in backends:
        allocs.setdefault(b.buffer, _DynAlloc(b.alignment))
    children: dict[int, int] = {}
    views: dict[int, int] = {}
    allocated: dict[int, bool] = {}
    offset: dict[int, tuple[str, int]] = {}
    owner: dict[int, Backend] = {}
    live: dict[int, Tensor] = {}

    def srcs(n: Tensor) -> list[Tensor | None]:
        return new_src.get(id(n), n.src)

    def is_allocated(t: Tensor) -> bool:
        return t.buffer is not None or allocated.get(id(t), False) or (
            t.view_src is not None and t.view_src.buffer is not None
        )

    def allocate(t: Tensor, b: int) -> None:
        if is_allocated(t) or t.view_src is not None:
            return
        allocated[id(t)] = True
        if t.op in INPLACE_OPS:
            for p in srcs(t):
                # ggml_gallocr_is_own: only a tensor this allocator placed itself (never a view, a
                # weight or a KV cache) can give its memory to an in-place op
                if p is None or not allocated.get(id(p), False):
                    continue
                if p.flags & FLAG_OUTPUT or (p.view_src is not None and p.view_src.flags & FLAG_OUTPUT):
                    continue
                if not _same_layout(t, p):
                    continue
                if children.get(id(p), 0) == 1 and views.get(id(p), 0) == 0:
                    if p.view_src is not None:
                        vs = p.view_src
                        if views.get(id(vs), 0) == 1 and children.get(id(vs), 0) == 0 and p.view_offs == 0:
                            offset[id(t)] = offset[id(p)]
                            owner[id(t)] = owner[id(p)]
                            allocated[id(p)] = False
                            allocated[id(vs)] = False
                            return
                    else:
                        offset[id(t)] = offset[id(p)]
                        owner[id(t)] = owner[id(p)]
                        allocated[id(p)] = False
                        return
        be = backends[b]
        size = alloc_size(t, be, engine)
        a = allocs[be.buffer]
        before = a.max_size
        offset[id(t)] = (be.buffer, a.alloc(size))
        owner[id(t)] = be
        if trace is not None and a.max_size > before:
            trace[be.buffer] = [(x.name, offset[id(x)][1], alloc_size(x, owner[id(x)], engine)) for x in live.values()
                                if offset[id(x)][0] == be.buffer] + [(t.name, offset[id(t)][1], size)]
        live[id(t)] = t

    def free(t: Tensor) -> None:
        if t.flags & FLAG_OUTPUT:
            return
        buf, off = offset[id(t)]
        allocs[buf].free(off, alloc_size(t, owner[id(t)], engine))
        allocated[id(t)] = False
        live.pop(id(t), None)

    for lf, bi in leafs:
        if bi >= 0:
            allocate(lf, bi)
    for n, bi in gnodes:
        if n.view_src is not None and n.op != "NONE":
            views[id(n.view_src)] = views.get(id(n.view_src), 0) + 1
        if n.flags & FLAG_INPUT:
            allocate(n, bi)
        for s in srcs(n):
            if s is None:
                continue
            children[id(s)] = children.get(id(s), 0) + 1
            if s.flags & FLAG_INPUT:
                allocate(s, bi)
    for n, bi in gnodes:
        for p in srcs(n):
            if p is not None:
                allocate(p, bi)
        allocate(n, bi)
        for p in srcs(n):
            if p is None:
                continue
            children[id(p)] -= 1
            if children[id(p)] == 0 and views.get(id(p), 0) == 0:
                if p.view_src is not None:
                    vs = p.view_src
                    views[id(vs)] -= 1
                    if views[id(vs)] == 0 and children.get(id(vs), 0) == 0 and allocated.get(id(vs), False):
                        free(vs)
                elif allocated.get(id(p), False):
                    free(p)
    return {buf: a.max_size for buf, a in allocs.items()}
