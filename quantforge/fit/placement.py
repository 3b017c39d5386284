"""Which tensor goes to which device, the exact bytes each buffer takes, and the ``-ot`` arguments.

Policy (the community default for MoE models on CPU + GPU rigs): ``token_embd`` always in
RAM; attention, norms, shared experts, dense layers and the output on the GPU that holds the
layer; routed experts on the CPU; then the remaining VRAM of each GPU is filled with whole
expert layers (``ffn_up/gate/down_exps`` of one layer; if a whole layer no longer fits, its
``up``+``gate`` pair, which are always kept together). Every expert byte moved to a GPU saves
the same CPU read per token, so the fill order is simply ascending layers on the GPU that
owns the layer (no extra transfer), then any GPU with room. An interleaved type without a
CUDA matmul kernel is never placed on a GPU (it would run on the CPU anyway, over PCIe).

Buffer bytes replicate the loaders: CUDA pads every quantized row-length to a multiple of 512
(``MATRIX_ROW_PADDING``, one extra partial row per tensor) and aligns tensors to 128 bytes;
CPU buffers align to 32. A tied output (no ``output.weight``) is a second copy of
``token_embd`` on the output device when that is a GPU (or when mmap is off).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from quantforge.catalogue import Engine, catalogue

_EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(up|gate|down|gate_up)_exps\.")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
CUDA_ROW_PADDING = 512


class FitTensor(NamedTuple):
    """What placement needs of one tensor (a ``TensorPlan`` or a tensor-listing line). A named
    tuple: immutable like a frozen dataclass, but made several times faster (the matrix makes
    tens of thousands)."""

    name: str
    shape: tuple[int, ...]
    type: str
    bytes: int
    layer: int | None
    place: str | None = None  # a recipe rule's explicit "cpu" / "gpu"


def fit_tensors(plan_or_tensors: Any) -> list[FitTensor]:
    """``FitTensor``s of a ``QuantPlan`` (or any sequence of objects with name/shape/type/bytes)."""
    items = getattr(plan_or_tensors, "tensors", plan_or_tensors)
    out = []
    missing = object()
    for t in items:
        # a TensorPlan carries its layer (the same ^blk.N. rule); other objects are parsed
        layer = getattr(t, "layer", missing)
        if layer is missing:
            m = _LAYER_RE.match(t.name)
            layer = int(m.group(1)) if m else None
        out.append(
            FitTensor(
                name=t.name, shape=tuple(t.shape), type=t.type, bytes=int(t.bytes),
                layer=layer, place=getattr(t, "place", None),  # type: ignore[arg-type]
            )
        )  # fmt: skip
    return out


def expert_part(name: str) -> str | None:
    m = _EXPERT_RE.match(name)
    return m.group(2) if m else None


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class Unit:
    """Routed-expert tensors of one layer that move together."""

    layer: int
    parts: tuple[str, ...]
    idx: list[int]
    cpu_bytes: int
    gpu_bytes: int
    cuda_ok: bool
    forced: str | None  # "cpu" / "gpu" from a recipe rule
    raw_bytes: int = 0  # tensor bytes (what one generated token reads, times the active fraction)
    max_gpu_tensor: int = 0  # the largest tensor's GPU bytes (the copy a large u-batch makes of it)


@dataclass
class Prepared:
    """Per-tensor bytes on each kind of buffer and per-layer aggregates (computed once per plan)."""

    engine: Engine
    tensors: list[FitTensor]
    cpu_bytes: list[int]
    gpu_bytes: list[int]
    cuda_ok: list[bool]
    interleaved: list[bool]
    n_layer: int
    layer_base_gpu: list[int]  # non-expert tensors of each layer that may live on a GPU
    layer_base_cpu: list[int]
    layer_base_idx: list[list[int]]
    forced_cpu_idx: list[int]  # non-expert tensors that must stay on the CPU
    forced_cpu_max_matrix: int  # the largest GPU bytes among the forced-CPU matrices (0: none)
    embd_idx: int | None
    out_idx: list[int]  # output.weight, output_norm.weight and other non-layer tensors
    tied_output: bool
    units: list[Unit] = field(default_factory=list)
    layer_expert_cpu: list[int] = field(default_factory=list)  # all routed-expert bytes of a layer (CPU)
    layer_base_raw: list[int] = field(default_factory=list)
    out_raw: int = 0
    forced_raw: int = 0
    total_raw: int = 0
    # derived once for the fill (the matrix evaluates one Prepared against many targets/contexts)
    out_cpu: int = 0  # bytes of the non-layer tensors (output, output_norm, ...) on each buffer kind
    out_gpu: int = 0
    forced_cpu: int = 0
    fill_layers: list[tuple[int, list[int], int]] = field(default_factory=list)  # (layer, units, GPU bytes)
    forced_gpu_units: list[int] = field(default_factory=list)
    min_fill_unit: int = 0  # the smallest unit the fill may move (0: none)


def prepare(tensors: Sequence[FitTensor], *, engine: Engine, n_layer: int | None = None) -> Prepared:
    cat = catalogue(engine)
    # per (type, row length): the CUDA row padding and the type's flags (a few dozen distinct
    # pairs for a thousand tensors)
    facts: dict[tuple[str, int], tuple[int, bool, bool]] = {}
    cpu_b, gpu_b, cuda_ok, inter = [], [], [], []
    for t in tensors:
        ne0 = t.shape[0] if t.shape else 1
        f = facts.get((t.type, ne0))
        if f is None:
            qt = cat.get(t.type)
            extra = 0
            if qt.block_size > 1 and ne0 % CUDA_ROW_PADDING:
                extra = qt.row_bytes(CUDA_ROW_PADDING - ne0 % CUDA_ROW_PADDING)
            f = facts[(t.type, ne0)] = (extra, qt.interleave > 1, qt.cuda_matmul or qt.block_size == 1)
        cpu_b.append(_pad(t.bytes, 32))
        gpu_b.append(_pad(t.bytes + f[0], 128))
        inter.append(f[1])
        cuda_ok.append(f[2])
    layers = [t.layer for t in tensors if t.layer is not None]
    nl = n_layer if n_layer is not None else (max(layers) + 1 if layers else 0)
    p = Prepared(
        engine=engine, tensors=list(tensors), cpu_bytes=cpu_b, gpu_bytes=gpu_b, cuda_ok=cuda_ok,
        interleaved=inter, n_layer=nl, layer_base_gpu=[0] * nl, layer_base_cpu=[0] * nl,
        layer_base_idx=[[] for _ in range(nl)], forced_cpu_idx=[], forced_cpu_max_matrix=0, embd_idx=None, out_idx=[],
        tied_output=not any(t.name == "output.weight" for t in tensors), layer_expert_cpu=[0] * nl,
        layer_base_raw=[0] * nl, total_raw=sum(t.bytes for t in tensors),
    )  # fmt: skip
    groups: dict[tuple[int, str], list[int]] = {}
    for i, t in enumerate(tensors):
        part = expert_part(t.name) if "_exps." in t.name else None
        if part is not None and t.layer is not None and t.layer < nl:
            # ik fuses gate and up into one op (-fmoe, its default), so they move together;
            # mainline runs them as separate matmuls, so each may sit on its own device
            key = (t.layer, "down" if part == "down" else ("gate_up" if engine == "ik" or part == "gate_up" else part))
            groups.setdefault(key, []).append(i)
            p.layer_expert_cpu[t.layer] += cpu_b[i]
            continue
        if t.name == "token_embd.weight":
            p.embd_idx = i
            continue
        no_gpu = (inter[i] and not cuda_ok[i]) or t.place == "cpu"
        if no_gpu:
            p.forced_cpu_idx.append(i)
            p.forced_raw += t.bytes
            if len(t.shape) > 1:
                p.forced_cpu_max_matrix = max(p.forced_cpu_max_matrix, gpu_b[i])
        elif t.layer is not None and t.layer < nl:
            p.layer_base_gpu[t.layer] += gpu_b[i]
            p.layer_base_cpu[t.layer] += cpu_b[i]
            p.layer_base_raw[t.layer] += t.bytes
            p.layer_base_idx[t.layer].append(i)
        else:
            p.out_idx.append(i)
            p.out_raw += t.bytes
    order = {"gate_up": 0, "gate": 1, "up": 2, "down": 3}
    for (layer, kind), idx in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        forced = {tensors[i].place for i in idx} - {None}
        p.units.append(
            Unit(
                layer=layer, parts=("gate", "up") if kind == "gate_up" else (kind,), idx=idx,
                cpu_bytes=sum(cpu_b[i] for i in idx), gpu_bytes=sum(gpu_b[i] for i in idx),
                cuda_ok=all(cuda_ok[i] or not inter[i] for i in idx),
                forced=forced.pop() if len(forced) == 1 else None, raw_bytes=sum(tensors[i].bytes for i in idx),
                max_gpu_tensor=max(gpu_b[i] for i in idx),
            )
        )  # fmt: skip
    p.out_cpu = sum(cpu_b[i] for i in p.out_idx)
    p.out_gpu = sum(gpu_b[i] for i in p.out_idx)
    p.forced_cpu = sum(cpu_b[i] for i in p.forced_cpu_idx)
    by_layer: dict[int, list[int]] = {}
    for ui, u in enumerate(p.units):
        if u.forced == "cpu" or not u.cuda_ok:
            continue
        if u.forced == "gpu":
            p.forced_gpu_units.append(ui)
        else:
            by_layer.setdefault(u.layer, []).append(ui)
    p.fill_layers = [
        (lay, uis, sum(p.units[ui].gpu_bytes for ui in uis)) for lay, uis in sorted(by_layer.items())
    ]
    p.min_fill_unit = min((p.units[ui].gpu_bytes for _l, uis, _n in p.fill_layers for ui in uis), default=0)
    return p


def split_layers(n_layer: int, vram: Sequence[int]) -> list[int]:
    """Layers per GPU, proportional to VRAM (largest remainder), as ``-ts`` will be given."""
    if not vram:
        return []
    total = sum(vram)
    raw = [n_layer * v / total for v in vram]
    counts = [int(r) for r in raw]
    order = sorted(range(len(vram)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: n_layer - sum(counts)]:
        counts[i] += 1
    return counts


@lru_cache(maxsize=256)
def _layer_map(counts: tuple[int, ...]) -> tuple[int, ...]:
    import numpy as np

    n = sum(counts)
    cum = np.cumsum(np.asarray(counts, dtype=np.float32)) / np.float32(n)
    out = []
    for layer in range(n):
        x = np.float32(layer) / np.float32(n)
        out.append(next((j for j, c in enumerate(cum) if c > x), len(counts) - 1))
    return tuple(out)


def layer_device(layer: int, counts: Sequence[int]) -> int:
    """GPU index of ``layer`` under llama.cpp's ``-ts`` split with these counts: the first split
    whose cumulative fraction (float32) is above ``layer / n_layer`` (``std::upper_bound``)."""
    m = _layer_map(tuple(counts))
    return m[layer] if layer < len(m) else len(counts) - 1


def gpu_names(n: int, *, backend: str = "CUDA") -> list[str]:
    return [f"{backend}{i}" for i in range(n)]


def _alternation(values: Sequence[int]) -> str:
    vals = sorted(set(values))
    return vals and ("(" + "|".join(str(v) for v in vals) + ")") or ""


def override_args(
    prep: Prepared,
    unit_dev: dict[int, str],
    *,
    cpu_name: str = "CPU",
) -> list[str]:
    """The ordered ``-ot`` arguments: GPU-resident expert layers per GPU first, explicit CPU
    tensors next, the CPU catch-all for routed experts last. Anchored patterns; first match wins."""
    args: list[str] = []
    by_dev: dict[str, dict[int, set[str]]] = {}
    any_cpu_expert = False
    for ui, u in enumerate(prep.units):
        dev = unit_dev.get(ui, cpu_name)
        if dev == cpu_name:
            any_cpu_expert = True
            continue
        by_dev.setdefault(dev, {}).setdefault(u.layer, set()).update(u.parts)
    rank = {"gate": 0, "up": 1, "down": 2}
    for dev in sorted(by_dev):
        # layers with the same parts on this device share one pattern: whole layers first, then
        # gate+up, then down alone (and mainline's single gate or up)
        groups: dict[frozenset[str], list[int]] = {}
        for layer, layer_parts in by_dev[dev].items():
            groups.setdefault(frozenset(layer_parts), []).append(layer)
        for group in sorted(groups, key=lambda ps: (-len(ps), sorted(rank[x] for x in ps))):
            alt = "|".join(sorted(group, key=lambda x: {"up": 0, "gate": 1, "down": 2}[x]))
            part_rx = f"({alt})" if len(group) > 1 else alt
            args.append(rf"^blk\.{_alternation(sorted(groups[group]))}\.ffn_{part_rx}_exps\.weight$={dev}")
    for i in prep.forced_cpu_idx:
        args.append("^" + re.escape(prep.tensors[i].name).replace(r"\_", "_") + f"$={cpu_name}")
    if any_cpu_expert:
        args.append(rf"^blk\.[0-9]+\.ffn_(up|gate|down)_exps\.weight$={cpu_name}")
    return args


def apply_overrides(
    names: Sequence[str], ot_args: Sequence[str], default: Callable[[str], str]
) -> dict[str, str]:
    """llama.cpp's matching, reimplemented: each ``pattern=BUFT`` in order, ``std::regex_search``
    (ECMAScript; Python's ``re.search`` agrees on the patterns emitted here), first match wins;
    an unmatched tensor goes to ``default(name)`` (its layer's device)."""
    compiled = []
    for a in ot_args:
        for piece in a.split(","):
            pat, _, buft = piece.rpartition("=")
            compiled.append((re.compile(pat), buft))
    out = {}
    for n in names:
        for rx, buft in compiled:
            if rx.search(n):
                out[n] = buft
                break
        else:
            out[n] = default(n)
    return out


def device_weight_bytes(
    prep: Prepared, device_of: dict[str, str], *, cpu_names: frozenset[str] = frozenset({"CPU"})
) -> dict[str, int]:
    """Weight bytes of each buffer for a tensor -> device map (``CPU`` buffers align to 32,
    GPU buffers pad rows to 512 and align to 128). A tied output is a copy of ``token_embd``
    on the device of the last layer when that is a GPU."""
    out: dict[str, int] = {}
    last_dev = None
    for i, t in enumerate(prep.tensors):
        dev = device_of[t.name]
        b = prep.cpu_bytes[i] if dev in cpu_names else prep.gpu_bytes[i]
        out[dev] = out.get(dev, 0) + b
        if t.layer is not None and t.layer == prep.n_layer - 1 and dev not in cpu_names:
            last_dev = dev
    if prep.tied_output and prep.embd_idx is not None and last_dev is not None:
        out[last_dev] = out.get(last_dev, 0) + prep.gpu_bytes[prep.embd_idx]
    return out
