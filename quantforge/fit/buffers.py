"""Every buffer one command line allocates, for one model, as the engine logs it.

``run_buffers(tensors, dims, cmd, n_gpus=...)`` places each tensor the way the engines' loaders do
(``-ngl`` layers from the end, ``-ts`` split, ``token_embd`` in RAM, ``-ot`` first match with
``std::regex_search``, ``-ncmoe`` / ``--n-cpu-moe``, ik's pinned host buffer when anything is
overridden to the CPU, mainline's mapped range of the file), sizes the weights per buffer (CUDA pads
quantized rows to 512 and aligns to 128), the KV cache per device, the compute buffers by running
the engine's own graph through ggml's scheduler and allocator (``quantforge.fit.graphs`` on
``quantforge.fit.ggml_sim``), and the logits output buffer.

Buffer names are the engines' own: ``CPU`` (mapped weights, ik), ``CPU_Mapped`` (mainline), ``CUDA_Host``
(pinned host: ik's overridden weights, every GPU run's host compute and output buffers), ``CUDA0`` …
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import InventoryError
from quantforge.fit.cmdline import RunCommand
from quantforge.fit.dims import ModelDims, ModelExtras
from quantforge.fit.ggml_sim import CUDA_ROW_PADDING, Backend, schedule
from quantforge.fit.graphs import GraphConfig, ModelWeights, WeightInfo, build_graph
from quantforge.fit.kv import kv_cache
from quantforge.fit.placement import FitTensor

BufferKind = Literal["weights", "kv", "compute", "output"]
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(up|gate|down|gate_up)_exps\.")
GGUF_ALIGNMENT = 32


class BufferBytes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str  # the buffer's name as the engine logs it: CPU, CPU_Mapped, CUDA_Host, CUDA0 ...
    kind: BufferKind
    bytes: int


class RunBuffers(BaseModel):
    """What a command allocates, per buffer, plus the placement and the sizes that decided it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Engine
    n_ctx: int
    kv_size: int
    n_ubatch: int
    flash_attn: bool
    buffers: tuple[BufferBytes, ...]
    placement: dict[str, str]  # tensor -> buffer name
    gpu_layers: tuple[int, ...]  # device index of each layer (-1: CPU)

    def get(self, device: str, kind: BufferKind) -> int:
        return sum(b.bytes for b in self.buffers if b.device == device and b.kind == kind)

    def by_device(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.buffers:
            out[b.device] = out.get(b.device, 0) + b.bytes
        return out


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _cumulative_splits(split: Sequence[float]) -> list[np.float32]:
    """llama.cpp's split points: the running sum of the split in float32, normalized."""
    acc = np.float32(0)
    cum = []
    for x in split:
        acc = np.float32(acc + np.float32(x))
        cum.append(acc)
    return [np.float32(c / acc) for c in cum]


def _default_split(n_gpus: int, tensor_split: Sequence[float], gpu_free: Sequence[int] | None) -> list[float]:
    split = [float(x) for x in tensor_split[:n_gpus]]
    split += [0.0] * (n_gpus - len(split))
    if not any(split):  # no -ts: by each GPU's free memory (equal when unknown)
        split = [float(x) for x in gpu_free] if gpu_free else [1.0] * n_gpus
    return split


def layer_devices(n_layer: int, ngl: int, n_gpus: int, tensor_split: Sequence[float],
                  gpu_free: Sequence[int] | None = None) -> list[int]:  # fmt: skip
    """Mainline's assignment of layers ``0..n_layer`` (the last entry is the output layer) to
    devices (-1: CPU): the output counts as a layer, so ``-ngl N`` offloads the output and the
    last ``N - 1`` repeating layers; the ``-ts`` split is cut by layer count (float32
    ``std::upper_bound`` of ``(il - i_gpu_start) / act_gpu_layers`` over the cumulative split)."""
    if n_gpus == 0 or ngl <= 0:
        return [-1] * (n_layer + 1)
    start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    cum = _cumulative_splits(_default_split(n_gpus, tensor_split, gpu_free))
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(-1)
            continue
        x = np.float32(np.float32(il - start) / np.float32(act))
        out.append(min(bisect.bisect_right(cum, x), n_gpus - 1))
    return out


_IK_NORMS = ("attn_norm", "attn_norm_2", "attn_output_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm",
             "layer_output_norm")  # fmt: skip
_IK_DENSE = ("ffn_up", "ffn_gate", "ffn_down")
_IK_SHEXP = ("ffn_up_shexp", "ffn_gate_shexp", "ffn_down_shexp")
_IK_EXPS = ("ffn_up_exps", "ffn_gate_exps", "ffn_down_exps", "ffn_gate_up_exps")
IK_DEFAULT_FIT_MARGIN = 1 << 30
#: ik build (commit count) of 0871ab296, PR #1466 "Take into account layer sizes for setting GPU
#: layers" (2026-03-20): before it, ik split layers by count as below in ``ik_count_layer_devices``.
IK_SIZE_BASED_SPLIT_BUILD = 4327


def ik_count_layer_devices(n_layer: int, ngl: int, n_gpus: int, tensor_split: Sequence[float],
                           gpu_free: Sequence[int] | None = None) -> list[int]:  # fmt: skip
    """ik before ``IK_SIZE_BASED_SPLIT_BUILD``: repeating layer ``i`` of the last ``-ngl`` goes to
    ``upper_bound(splits, (i - i_gpu_start) / act_gpu_layers)`` with ``act_gpu_layers = min(ngl,
    n_layer + 1)``, the output (when ``-ngl`` > n_layer) to the split of ``(act - 1) / act``."""
    if n_gpus == 0 or ngl <= 0:
        return [-1] * (n_layer + 1)
    start = max(n_layer - ngl, 0)
    act = min(ngl, n_layer + 1)
    cum = _cumulative_splits(_default_split(n_gpus, tensor_split, gpu_free))

    def dev(x: int) -> int:
        return min(bisect.bisect_right(cum, np.float32(np.float32(x) / np.float32(act))), n_gpus - 1)

    out = [-1 if il < start else dev(il - start) for il in range(n_layer)]
    out.append(dev(act - 1) if ngl > n_layer else -1)
    return out  # k_default_mem_margin: kept free per GPU when splitting by free memory


def ik_layer_sizes(tensors: Sequence[FitTensor], dims: ModelDims, kv_per_layer: Sequence[int], *, n_ubatch: int,
                   n_ctx: int, mla: int, amb: int) -> tuple[list[float], float]:  # fmt: skip
    """ik's ``get_layer_sizes``: bytes of every layer (all its tensors, routed experts included
    whatever ``-ot`` says, plus its KV cache), the output layer last (output.weight or the tied
    token_embd, plus the logits beyond the largest compute estimate), and that estimate
    (``max_compute``: the largest FFN/MLA intermediate of a layer at this u-batch)."""
    nl = dims.n_layer
    result = [0.0] * (nl + 1)
    compute = [0.0] * (nl + 1)
    ffn_exps = [0] * nl
    ffn_shexp = [0] * nl
    ffn_dense = [0] * nl
    norm = [False] * nl
    mla_t: dict[int, dict[str, FitTensor]] = {}
    ow = embd = 0
    first_nextn = nl - dims.nextn_layers
    for t in tensors:
        if t.name == "token_embd.weight":
            embd = t.bytes
            continue
        if t.name == "output.weight":
            ow += t.bytes
            continue
        if t.layer is None or not 0 <= t.layer < nl or t.layer >= first_nextn:
            continue
        il = t.layer
        result[il] += t.bytes
        kind, _, suffix = t.name.split(".", 2)[2].rpartition(".")
        if suffix in ("bias", "scale"):
            continue
        if dims.is_mla and kind in ("attn_k_b", "attn_v_b", "attn_kv_b"):
            mla_t.setdefault(il, {})[kind] = t
            continue
        rows = t.shape[1] if len(t.shape) > 1 else 1
        if kind in _IK_EXPS:
            ffn_exps[il] += rows * n_ubatch * dims.n_expert_used * 4
        elif kind in _IK_SHEXP:
            ffn_shexp[il] += rows * n_ubatch * 4
        elif kind in _IK_DENSE:
            ffn_dense[il] += rows * n_ubatch * 4
        elif kind in _IK_NORMS:
            norm[il] = True
    for il in range(nl):
        inp = dims.n_embd * n_ubatch * 4 * (2 if norm[il] else 1)
        compute[il] = max(compute[il], float(max(ffn_exps[il], ffn_shexp[il], ffn_dense[il]) + inp))
    for il, m in mla_t.items():
        kb, vb, kvb = m.get("attn_k_b"), m.get("attn_v_b"), m.get("attn_kv_b")
        if kb is not None and vb is not None and kvb is None:
            qt = catalogue("ik").get(kb.type)
            row_t = catalogue("ik").get("q8_0") if qt.block_size > 1 else qt
            heads = vb.shape[2] if len(vb.shape) > 2 else 1
            result[il] += row_t.row_bytes(vb.shape[0]) * (vb.shape[1] + kb.shape[1]) * heads * 2
        elif kvb is not None:
            if kb is None:
                result[il] += kvb.bytes // 2
            if vb is None:
                result[il] += kvb.bytes // 2
        if mla == 3 and vb is not None:
            n_head = vb.shape[2] if len(vb.shape) > 2 else 1
            f32_mib = (2 * vb.shape[1] * n_head * n_ctx * 4) / (1024.0 * 1024.0)
            n_max = n_head
            if amb > 0 and f32_mib > amb:
                n_max = 1
                for it in range(2, n_head):
                    if n_head % it == 0 and f32_mib / it <= amb:
                        n_max = n_head // it
                        break
            compute[il] = max(compute[il], 2.0 * vb.shape[1] * n_max * n_ctx * 4)
    result[nl] = float(ow or embd)
    max_compute = max(compute[:nl], default=0.0)
    for il in range(nl):
        result[il] += kv_per_layer[il] if il < len(kv_per_layer) else 0
    result[nl] += max(dims.n_vocab * n_ubatch * 4 - max_compute, 0.0)
    return result, max_compute


def ik_layer_devices(sizes: Sequence[float], max_compute: float, *, ngl: int, n_gpus: int,
                     tensor_split: Sequence[float], gpu_free: Sequence[int] | None = None) -> list[int]:  # fmt: skip
    """ik's assignment of layers ``0..n_layer`` (the last entry is the output layer) to devices
    (-1: CPU): the last ``-ngl`` repeating layers (and the output when ``-ngl`` > n_layer) go to
    GPUs filled in order, each up to its share of the split of the layers' bytes plus one compute
    estimate per GPU, a layer that crosses the share kept when it is more than half inside (the
    float32/double arithmetic of ``llm_load_tensors`` kept)."""
    nl = len(sizes) - 1
    if n_gpus == 0 or ngl <= 0:
        return [-1] * (nl + 1)
    start = max(nl - ngl, 0)
    out = [-1] * start + [n_gpus - 1] * (nl + 1 - start)
    if ngl <= nl:
        out[nl] = -1
    if n_gpus == 1:
        return out
    free = [max(int(f) - IK_DEFAULT_FIT_MARGIN, 0) for f in gpu_free] if gpu_free else None
    split = _default_split(n_gpus, tensor_split, free)
    cum = _cumulative_splits(split)
    if not any(tensor_split) and free:
        required = sum(sizes)
        available = sum(f - max_compute for f in free if f > max_compute)
        if required > available:
            cum = _cumulative_splits([max(f - max_compute, 0.0) for f in free])
    n_last = nl + 1 if ngl > nl else nl
    total = max_compute * n_gpus + sum(sizes[start:n_last])
    last = start
    loaded = np.float32(0)
    for dev in range(n_gpus):
        loaded = np.float32(float(loaded) + max_compute)
        share = np.float32(float(cum[dev]) * total)
        il = last
        while il < n_last:
            if float(loaded) + sizes[il] <= float(share):
                out[il] = dev
                loaded = np.float32(float(loaded) + sizes[il])
                il += 1
                continue
            if float(loaded) + sizes[il] - float(share) < float(np.float32(share - loaded)):
                out[il] = dev
                loaded = np.float32(float(loaded) + sizes[il])
                il += 1
            break
        last = il
    return out


def place_tensors(
    tensors: Sequence[FitTensor], dims: ModelDims, cmd: RunCommand, *, n_gpus: int,
    kv_per_layer: Sequence[int] = (), gpu_free: Sequence[int] | None = None, engine_build: int | None = None,
) -> tuple[dict[str, str], list[int], str]:  # fmt: skip
    """tensor -> device name (``CPU`` or ``CUDAn``), the layer devices, and the output layer's device.
    ``gpu_free``: each GPU's free bytes, which split the layers when the command has no ``-ts``."""
    nl = dims.n_layer
    ngl = 999 if cmd.n_gpu_layers is None or cmd.n_gpu_layers < 0 else cmd.n_gpu_layers
    if n_gpus == 0:
        ngl = 0
    if cmd.engine == "ik" and engine_build is not None and engine_build < IK_SIZE_BASED_SPLIT_BUILD:
        devs = ik_count_layer_devices(nl, ngl, n_gpus, cmd.tensor_split, gpu_free)
    elif cmd.engine == "ik":
        sizes, max_compute = ik_layer_sizes(tensors, dims, kv_per_layer, n_ubatch=cmd.effective_ubatch,
                                            n_ctx=cmd.n_ctx or dims.n_ctx_train or 4096, mla=cmd.mla,
                                            amb=cmd.amb)  # fmt: skip
        devs = ik_layer_devices(sizes, max_compute, ngl=ngl, n_gpus=n_gpus, tensor_split=cmd.tensor_split,
                                gpu_free=gpu_free)  # fmt: skip
    else:
        devs = layer_devices(nl, ngl, n_gpus, cmd.tensor_split, gpu_free)
    ldev, odev = devs[:nl], devs[nl]
    out_gpu = odev >= 0
    out_dev = f"CUDA{odev}" if out_gpu else "CPU"
    compiled = [(re.compile(p), b) for p, b in cmd.overrides] if n_gpus > 0 else []
    cpu_moe_layers: set[int] = set()
    moe_layers = sorted({int(m.group(1)) for t in tensors if (m := _EXPERT_RE.match(t.name))})
    if cmd.n_cpu_moe and n_gpus > 0:
        n = min(cmd.n_cpu_moe, len(moe_layers))
        cpu_moe_layers = set(moe_layers[-n:] if cmd.engine == "ik" else moe_layers[:n]) if n else set()
    placement: dict[str, str] = {}
    for t in tensors:
        dev = None
        for rx, buft in compiled:
            if rx.search(t.name):
                dev = "CPU" if buft.upper().startswith("CPU") else buft
                break
        if dev is None:
            m = _EXPERT_RE.match(t.name)
            if m and int(m.group(1)) in cpu_moe_layers:
                dev = "CPU"
            elif t.name == "token_embd.weight":
                dev = "CPU"
            elif t.layer is not None and t.layer < nl:
                d = ldev[t.layer]
                dev = "CPU" if d < 0 else f"CUDA{d}"
            else:
                dev = out_dev
        placement[t.name] = dev
    return placement, ldev, out_dev


def _repacked(type_name: str, shape: tuple[int, ...], engine: Engine) -> str:
    qt = catalogue(engine).get(type_name)
    if qt.repacked is None:
        return type_name
    rp = catalogue(engine).get(qt.repacked)
    rows = shape[1] if len(shape) > 1 else 1
    return rp.name if rows % rp.interleave == 0 else type_name


def _cuda_alloc(t: FitTensor, engine: Engine) -> int:
    qt = catalogue(engine).get(t.type)
    extra = 0
    ne0 = t.shape[0] if t.shape else 1
    if qt.block_size > 1 and ne0 % CUDA_ROW_PADDING:
        extra = qt.row_bytes(CUDA_ROW_PADDING - ne0 % CUDA_ROW_PADDING)
    return _pad(t.bytes + extra, 128)


def representative_layers(signatures: Sequence[tuple[object, ...]]) -> list[int]:
    """Layers to build the graph from: layer 0, the first two of every run of identical layer kinds,
    and the last layer (which makes the outputs). The compute buffers of the whole model equal
    those of this subset (checked against full graphs in the tests)."""
    n = len(signatures)
    keep: list[int] = []
    run = 0
    for i, s in enumerate(signatures):
        run = run + 1 if i > 0 and s == signatures[i - 1] else 1
        if i == 0 or run <= 2 or i == n - 1:
            keep.append(i)
    return keep


def run_buffers(
    tensors: Sequence[FitTensor],
    dims: ModelDims,
    cmd: RunCommand,
    *,
    n_gpus: int,
    extras: ModelExtras | None = None,
    gpu_backend: str = "CUDA",
    offsets: Sequence[int] | None = None,
    gpu_free: Sequence[int] | None = None,
    engine_build: int | None = None,
) -> RunBuffers:
    """Every buffer ``cmd`` allocates for a model with these tensors (in file order)."""
    engine = cmd.engine
    ex = extras or ModelExtras()
    if dims.nextn_layers:
        # the NextN (MTP) layer's tensors are skipped by both loaders unless MTP is turned on
        first_mtp = dims.n_layer - dims.nextn_layers
        keep = [i for i, t in enumerate(tensors) if t.layer is None or t.layer < first_mtp]
        if offsets is not None:
            offsets = [offsets[i] for i in keep]
        else:
            offs, o = [], 0
            for t in tensors:
                offs.append(o)
                o += _pad(t.bytes, GGUF_ALIGNMENT)
            offsets = [offs[i] for i in keep]
        tensors = [tensors[i] for i in keep]
    n_ctx = cmd.n_ctx or dims.n_ctx_train or 4096
    kv = kv_cache(dims, n_ctx=n_ctx, type_k=cmd.type_k, type_v=cmd.type_v, flash_attn=cmd.flash_attn,
                  mla=cmd.mla if engine == "ik" else 1, engine=engine)  # fmt: skip
    placement, ldev, out_dev = place_tensors(tensors, dims, cmd, n_gpus=n_gpus, kv_per_layer=kv.per_layer,
                                             gpu_free=gpu_free, engine_build=engine_build)  # fmt: skip
    gpus = [f"{gpu_backend}{i}" for i in range(n_gpus)]
    any_cpu_override = n_gpus > 0 and any(
        placement[t.name] == "CPU" for t in tensors if t.name != "token_embd.weight"
    ) and (bool(cmd.overrides) or cmd.n_cpu_moe > 0)  # fmt: skip
    # which host buffer CPU weights land in
    if engine == "ik":
        host_w = "CUDA_Host" if (n_gpus > 0 and (any_cpu_override or cmd.no_mmap)) else "CPU"
    else:
        host_w = "CPU" if cmd.no_mmap else "CPU_Mapped"
    types: dict[str, str] = {}
    for t in tensors:
        ty = t.type
        if (engine == "ik" and cmd.run_time_repack and placement[t.name] == "CPU" and t.name != "token_embd.weight"
                and len(t.shape) > 1):  # fmt: skip
            ty = _repacked(ty, tuple(t.shape), engine)
        types[t.name] = ty
    # ---- weights
    buffers: list[BufferBytes] = []
    wsum: dict[str, int] = {}
    if offsets is None:
        offs, o = [], 0
        for t in tensors:
            offs.append(o)
            o += _pad(t.bytes, GGUF_ALIGNMENT)
        offsets = offs
    cpu_range = [1 << 62, 0]
    for t, off in zip(tensors, offsets, strict=True):
        dev = placement[t.name]
        if dev == "CPU":
            if host_w in ("CPU_Mapped",) or (host_w == "CPU" and engine == "ik" and not cmd.no_mmap):
                cpu_range[0] = min(cpu_range[0], off)
                cpu_range[1] = max(cpu_range[1], off + t.bytes)
            else:
                wsum[host_w] = wsum.get(host_w, 0) + _pad(t.bytes, 32)
        else:
            wsum[dev] = wsum.get(dev, 0) + _cuda_alloc(t, engine)
    if cpu_range[1] > 0:
        wsum[host_w] = wsum.get(host_w, 0) + cpu_range[1] - cpu_range[0]
    # a tied output (no output.weight) is a copy of token_embd on the output's GPU
    names = {t.name for t in tensors}
    tied_dev = out_dev if ("output.weight" not in names and out_dev != "CPU") else None
    if tied_dev:
        embd = next(t for t in tensors if t.name == "token_embd.weight")
        wsum[tied_dev] = wsum.get(tied_dev, 0) + _cuda_alloc(embd, engine)
    for dev in [host_w, *gpus]:
        if wsum.get(dev):
            buffers.append(BufferBytes(device=dev, kind="weights", bytes=wsum[dev]))
    # ---- KV cache
    kv_dev: dict[int, str] = {}
    kvb: dict[str, int] = {}
    for il in range(len(kv.per_layer)):
        d = ldev[il] if il < len(ldev) else -1
        dev = "CPU" if (d < 0 or cmd.no_kv_offload) else gpus[d]
        kv_dev[il] = dev
        kvb[dev] = kvb.get(dev, 0) + kv.per_layer[il]
    for dev in ["CPU", *gpus]:
        if kvb.get(dev):
            buffers.append(BufferBytes(device=dev, kind="kv", bytes=kvb[dev]))
    # ---- compute
    host_c = "CUDA_Host" if n_gpus > 0 else "CPU"
    comp = _compute(tensors, types, placement, host_w, dims, cmd, kv.kv_size, kv_dev, gpus, host_c, ex, engine,
                    tied_output=tied_dev)  # fmt: skip
    for dev in [*gpus, host_c]:
        if comp.get(dev):
            buffers.append(BufferBytes(device=dev, kind="compute", bytes=comp[dev]))
    buffers.append(BufferBytes(device=host_c, kind="output", bytes=dims.n_vocab * 4 * max(cmd.n_parallel, 1)))
    return RunBuffers(
        engine=engine, n_ctx=n_ctx, kv_size=kv.kv_size, n_ubatch=cmd.effective_ubatch, flash_attn=cmd.flash_attn,
        buffers=tuple(buffers), placement={k: (host_w if v == "CPU" else v) for k, v in placement.items()},
        gpu_layers=tuple(ldev),
    )  # fmt: skip


def _compute(
    tensors: Sequence[FitTensor], types: dict[str, str], placement: dict[str, str], host_w: str, dims: ModelDims,
    cmd: RunCommand, kv_size: int, kv_dev: dict[int, str], gpus: list[str], host_c: str, ex: ModelExtras,
    engine: Engine, tied_output: str | None = None,
) -> dict[str, int]:  # fmt: skip
    nl = dims.n_layer - dims.nextn_layers
    # layer kinds: what decides the layer's part of the graph and its scheduling
    sig: list[tuple[object, ...]] = []
    per_layer: dict[int, list[FitTensor]] = {}
    for t in tensors:
        if t.layer is not None:
            per_layer.setdefault(t.layer, []).append(t)
    for il in range(nl):
        items = tuple(sorted((t.name.split(".", 2)[2], types[t.name], placement[t.name], tuple(t.shape))
                             for t in per_layer.get(il, [])))  # fmt: skip
        sig.append((items, kv_dev.get(il)))
    layers = representative_layers(sig)
    key_tensors = []
    wanted = set(layers)
    for t in tensors:
        if t.layer is not None and t.layer not in wanted:
            continue
        buf = "w:" + (host_w if placement[t.name] == "CPU" else placement[t.name])
        key_tensors.append((t.name, types[t.name], tuple(t.shape), buf))
        if tied_output and t.name == "token_embd.weight":
            # both engines load a tied output as a duplicate of token_embd in the output layer's
            # buffer, so the logits matmul finds its weight on the GPU (no weight copy)
            key_tensors.append(("output.weight", types[t.name], tuple(t.shape), "w:" + tied_output))
    cfg = GraphConfig(
        n_tokens=cmd.effective_ubatch, n_kv=kv_size, flash_attn=cmd.flash_attn, type_k=cmd.type_k,
        type_v=cmd.type_v, mla=cmd.mla if engine == "ik" else 0, amb=cmd.amb if engine == "ik" else 0,
        cpu_only=not gpus, fused_moe=cmd.fused_moe,
    )  # fmt: skip
    kvk = tuple(sorted((il, "kv:" + kv_dev[il]) for il in layers if il in kv_dev))
    try:
        return dict(_simulate(engine, dims, cfg, tuple(layers), tuple(key_tensors), kvk, tuple(gpus), host_c,
                              host_w, ex))  # fmt: skip
    except KeyError as exc:  # the engine's graph for this architecture needs a tensor the model lacks
        raise InventoryError(
            f"tensor {exc.args[0]} is missing: the {dims.arch} graph the engine builds needs it",
            hint="the model file is incomplete or not of this architecture (check it with quantforge inventory)",
        ) from None


@lru_cache(maxsize=2048)
def _simulate(
    engine: Engine, dims: ModelDims, cfg: GraphConfig, layers: tuple[int, ...],
    tensors: tuple[tuple[str, str, tuple[int, ...], str], ...], kv: tuple[tuple[int, str], ...],
    gpus: tuple[str, ...], host_c: str, host_w: str, ex: ModelExtras,
) -> tuple[tuple[str, int], ...]:  # fmt: skip
    weights = {n: WeightInfo(ty, sh, buf) for n, ty, sh, buf in tensors}
    mw = ModelWeights(dims=dims, weights=weights, kv_buffer=dict(kv), layout=ex.layout,
                      expert_weights_scale=ex.expert_weights_scale, expert_groups=ex.expert_groups,
                      expert_groups_used=ex.expert_groups_used)  # fmt: skip
    graph = build_graph(engine, mw, cfg, list(layers))
    backends = [
        Backend(g, g, 128, frozenset({"w:" + g, "kv:" + g}), gpu=True) for g in gpus
    ] + [Backend("CPU", host_c, 32, frozenset({"w:CPU", "w:CPU_Mapped", "w:CUDA_Host", "kv:CPU"}))]
    res = schedule(graph, backends)
    return tuple(sorted(res.buffers.items()))
