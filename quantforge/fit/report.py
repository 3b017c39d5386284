"""``plan_fit``: memory per device, verdict, largest context, run command, R4 advice, speed bound."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import UsageError
from quantforge.fit.buffers import BufferBytes, RunBuffers, run_buffers
from quantforge.fit.cmdline import RunCommand, parse_command, split_command_line
from quantforge.fit.dims import ModelDims, ModelExtras
from quantforge.fit.kv import KVCache, check_kv_type, kv_cache, kv_padding
from quantforge.fit.margin import GpuMargin, gpu_margin
from quantforge.fit.placement import (
    FitInput,
    FitTensor,
    Prepared,
    expert_part,
    fit_tensors,
    override_args,
    prepare,
)
from quantforge.plan import QuantPlan
from quantforge.targets import HardwareTarget

_GIB = 1 << 30
_MIB = 1 << 20
#: ``-ngl`` of the emitted command: every layer and the output on the GPUs.
NGL = 999
#: Contexts above this are refused as absurd (ik/mainline cap at 2^24 tokens in practice far lower).
MAX_CTX = 1 << 22

Verdict = Literal["fits", "fits_smaller_ctx", "does_not_fit"]


class Settings(BaseModel):
    """The run settings the plan is made for (the flags of the emitted command)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_ctx: int = 32768
    ctk: str = "f16"
    ctv: str = "f16"
    mla: int = 3  # ik, MLA models only
    flash_attn: bool = True
    ub: int = 512
    batch: int = 2048
    amb: int = 512  # ik -amb MiB, MLA models
    split_mode: Literal["layer", "graph"] = "layer"


class DeviceUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # "CPU" (RAM), "CUDA0", ...
    kind: Literal["cpu", "gpu"]
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int  # GPUs: the measured margin + the target's gpu_margin; CPU: the logits buffer
    total_bytes: int
    capacity_bytes: int
    headroom_bytes: int
    expert_layers: tuple[int, ...] = ()  # layers whose routed experts live here (GPUs)
    pinned: bool = False  # CPU weights allocated (ik turns mmap off with -ot), not mapped
    margin_bytes: int = 0  # GPUs: kept beyond the buffers, measured (quantforge.fit.margin)
    margin_source: str | None = None  # where margin_bytes comes from


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str  # r4-cpu-plain | r4-on-gpu | pp-pcie | ncmoe | mmap-off
    message: str
    count: int = 0
    bytes: int = 0
    examples: tuple[str, ...] = ()
    cost_ms_per_token: float | None = None


class FitReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    quant: str
    target: str
    engine: Engine
    settings: Settings
    verdict: Verdict
    max_ctx: int
    kv_bytes: int
    kv_k_bytes: int
    kv_v_bytes: int
    kv_size: int
    weights_bytes: int
    devices: tuple[DeviceUsage, ...]
    short_by_bytes: int
    cheapest_change: str | None
    command: list[str]
    override_args: list[str]
    ngl: int
    tensor_split: list[int]
    tg_tokens_per_s: float
    pp_offload_tokens_per_s: float | None
    findings: tuple[Finding, ...]
    placement: dict[str, str] | None = None  # tensor -> device (only when asked for)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@dataclass
class _Eval:
    devices: list[DeviceUsage]
    unit_dev: dict[int, str]
    layer_gpu: list[int]
    counts: list[int]
    fits: bool
    kv: KVCache
    short_by: int
    command: RunCommand | None = None
    buffers: RunBuffers | None = None


def _names(target: HardwareTarget) -> list[str]:
    if target.unified_memory:
        return ["Metal"] if len(target.gpu) == 1 else [f"Metal{i}" for i in range(len(target.gpu))]
    return [f"CUDA{i}" for i in range(len(target.gpu))]


@lru_cache(maxsize=4096)
def _kv(dims: ModelDims, n_ctx: int, ctk: str, ctv: str, fa: bool, mla: int, engine: Engine) -> KVCache:
    """``kv_cache`` memoized: the matrix and the largest-context search ask for the same few
    contexts of one model over and over (dims and the result are frozen models)."""
    return kv_cache(dims, n_ctx=n_ctx, type_k=ctk, type_v=ctv, flash_attn=fa, mla=mla, engine=engine)


def tensor_split_for(target: HardwareTarget) -> list[int]:
    """The ``-ts`` the plan emits: each GPU's memory in MiB. Both engines normalize the split;
    ik splits the layers' bytes by it, mainline the layer count."""
    return [g.vram >> 20 for g in target.gpu]


def _run_command(s: Settings, n_ctx: int, engine: Engine, target: HardwareTarget, ot: Sequence[str],
                 ngl: int = 999) -> RunCommand:  # fmt: skip
    n_gpu = len(target.gpu)
    overrides: list[tuple[str, str]] = []
    for a in ot:
        pat, _, buft = a.rpartition("=")
        overrides.append((pat, buft))
    return RunCommand(
        tool="llama-server", engine=engine, n_ctx=n_ctx, n_batch=max(s.batch, s.ub), n_ubatch=s.ub,
        flash_attn=s.flash_attn, mla=s.mla if engine == "ik" else 3, amb=s.amb if engine == "ik" else 0,
        type_k=s.ctk, type_v=s.ctv, n_gpu_layers=ngl if n_gpu else 0, overrides=tuple(overrides) if n_gpu else (),
        tensor_split=tuple(float(x) for x in tensor_split_for(target)) if n_gpu > 1 else (),
        split_mode=s.split_mode, fit=False if engine == "mainline" else None,
    )  # fmt: skip


def gpu_margins(dims: ModelDims, target: HardwareTarget, cmd: RunCommand, rb: RunBuffers, *,
                experts: bool | None = None) -> list[GpuMargin]:  # fmt: skip
    """The measured margin each GPU of ``target`` keeps beyond its buffers (``quantforge.fit.margin``),
    by whether the simulated command puts routed experts on it (``experts``: as if it did or not)."""
    with_experts = {buf for name, buf in rb.placement.items() if expert_part(name) is not None}
    out = []
    for k, _g in enumerate(target.gpu):
        if target.unified_memory:
            out.append(GpuMargin(bytes=0, measured_bytes=0, kq_scratch_bytes=0, safety_bytes=0,
                                 source="not measured on unified memory (Metal): only the target's gpu_margin"))
            continue
        out.append(gpu_margin(engine=cmd.engine, attention="mla" if dims.is_mla else "gqa",
                              flash_attn=cmd.flash_attn, ubatch=cmd.effective_ubatch, n_kv=rb.kv_size,
                              n_head=dims.n_head,
                              experts_on_gpu=f"CUDA{k}" in with_experts if experts is None else experts))  # fmt: skip
    return out


def _usage(rb: RunBuffers, dims: ModelDims, target: HardwareTarget, cmd: RunCommand,
           unit_dev: dict[int, str], prep: Prepared, engine: Engine) -> list[DeviceUsage]:  # fmt: skip
    """Per-device usage of one simulated command (CPU first, then each GPU)."""
    names = _names(target)
    gpu_buf = [f"CUDA{k}" for k in range(len(target.gpu))]
    margins = gpu_margins(dims, target, cmd, rb)
    devices: list[DeviceUsage] = []
    gpu_used = 0
    exp_layers: list[set[int]] = [set() for _ in target.gpu]
    for ui, dev in unit_dev.items():
        if dev in names:
            exp_layers[names.index(dev)].add(prep.units[ui].layer)
    for k, g in enumerate(target.gpu):
        w, kvb, comp = rb.get(gpu_buf[k], "weights"), rb.get(gpu_buf[k], "kv"), rb.get(gpu_buf[k], "compute")
        over = margins[k].bytes + target.gpu_margin
        total = w + kvb + comp + over
        gpu_used += total
        devices.append(DeviceUsage(
            name=names[k], kind="gpu", weights_bytes=w, kv_bytes=kvb, compute_bytes=comp, overhead_bytes=over,
            total_bytes=total, capacity_bytes=g.vram, headroom_bytes=g.vram - total,
            expert_layers=tuple(sorted(exp_layers[k])), margin_bytes=margins[k].bytes,
            margin_source=margins[k].source,
        ))  # fmt: skip
    host = {"CPU", "CPU_Mapped", "CUDA_Host"}
    cpu_w = sum(b.bytes for b in rb.buffers if b.device in host and b.kind == "weights")
    cpu_kv = sum(b.bytes for b in rb.buffers if b.device in host and b.kind == "kv")
    cpu_c = sum(b.bytes for b in rb.buffers if b.device in host and b.kind == "compute")
    out_b = sum(b.bytes for b in rb.buffers if b.kind == "output")
    cpu_total = cpu_w + cpu_kv + cpu_c + out_b + (gpu_used if target.unified_memory else 0)
    cap = target.ram.available
    pinned = any(b.device == "CUDA_Host" and b.kind == "weights" for b in rb.buffers)
    devices.insert(0, DeviceUsage(
        name="CPU", kind="cpu", weights_bytes=cpu_w, kv_bytes=cpu_kv, compute_bytes=cpu_c, overhead_bytes=out_b,
        total_bytes=cpu_total, capacity_bytes=cap, headroom_bytes=cap - cpu_total, pinned=pinned,
    ))  # fmt: skip
    return devices


def _simulate_plan(prep: Prepared, dims: ModelDims, target: HardwareTarget, s: Settings, n_ctx: int,
                   engine: Engine, unit_dev: dict[int, str], extras: ModelExtras | None,
                   engine_build: int | None, ngl: int = 999) -> tuple[RunCommand, RunBuffers, list[DeviceUsage]]:  # fmt: skip
    # the simulation names GPUs as CUDA buffers; unified memory (Metal) keeps everything in the
    # GPU's working set (-ngl alone, no -ot: RAM and VRAM are one pool)
    sim_dev = {ui: f"CUDA{_names(target).index(d)}" for ui, d in unit_dev.items() if d != "CPU"}
    ot = override_args(prep, sim_dev) if target.gpu and not target.unified_memory else []
    cmd = _run_command(s, n_ctx, engine, target, ot, ngl)
    rb = run_buffers(prep.tensors, dims, cmd, n_gpus=len(target.gpu), extras=extras,
                     gpu_free=[g.vram for g in target.gpu] or None, engine_build=engine_build)  # fmt: skip
    return cmd, rb, _usage(rb, dims, target, cmd, unit_dev, prep, engine)


def _evaluate(
    prep: Prepared, dims: ModelDims, target: HardwareTarget, s: Settings, n_ctx: int, engine: Engine,
    extras: ModelExtras | None = None, engine_build: int | None = None, *, fill: bool = True, ngl: int = 999,
) -> _Eval:  # fmt: skip
    """Place, size and judge: the base command (routed experts and CPU-only tensors in RAM) is
    simulated first, so every fixed cost of each GPU (its layers, KV, compute buffer with the
    offload copy, the measured margin) is known before a byte of experts moves; then whole expert
    layers fill the room left (each GPU its own layers first), then single expert tensors (down
    before gate+up); the final command is simulated again and units come back off a GPU that the
    larger compute buffer of GPU-resident experts pushed over."""
    kv = _kv(dims, n_ctx, s.ctk, s.ctv, s.flash_attn, s.mla, engine)
    names = _names(target)
    n_gpu = len(target.gpu)
    unit_dev: dict[int, str] = {}
    if target.unified_memory:
        unit_dev = {ui: names[0] for ui in range(len(prep.units))}
        fill = False
    cmd, rb, devices = _simulate_plan(prep, dims, target, s, n_ctx, engine, unit_dev, extras, engine_build, ngl)
    layer_gpu = [max(d, 0) for d in rb.gpu_layers]  # which layer goes where does not depend on -ot
    if n_gpu and prep.forced_gpu_units and not target.unified_memory:  # a rule's place = "gpu": on the GPU of its layer, always
        for ui in prep.forced_gpu_units:
            lay = prep.units[ui].layer
            unit_dev[ui] = names[layer_gpu[lay] if lay < len(layer_gpu) else 0]
        cmd, rb, devices = _simulate_plan(prep, dims, target, s, n_ctx, engine, unit_dev, extras, engine_build, ngl)
    if n_gpu and fill and ngl > dims.n_layer:
        order_added: list[int] = []
        refused: set[int] = set()  # units taken back after an overflow: never offered again
        tries = 0
        nl = len(layer_gpu)

        def home(layer: int) -> int:
            return layer_gpu[layer] if layer < nl else 0

        def fill_pass(room: list[int]) -> list[int]:
            """Place what is still in RAM into ``room`` (bytes free per GPU); the units placed."""
            added: list[int] = []

            def place(ui: int, k: int) -> None:
                unit_dev[ui] = names[k]
                room[k] -= prep.units[ui].gpu_bytes
                added.append(ui)

            layers = [(lay, [ui for ui in uis if ui not in unit_dev and ui not in refused]) for lay, uis, _n in
                      prep.fill_layers]  # fmt: skip
            left: list[tuple[int, list[int], int]] = []
            for layer, uis in layers:  # whole layers on their own GPU (no extra hop)
                if not uis:
                    continue
                need = sum(prep.units[ui].gpu_bytes for ui in uis)
                if room[home(layer)] >= need:
                    for ui in uis:
                        place(ui, home(layer))
                else:
                    left.append((layer, uis, need))
            pending: list[int] = []
            for layer, uis, need in left:  # whole layers on any GPU with room
                ks = [home(layer)] + [k for k in range(n_gpu) if k != home(layer)]
                k = next((k for k in ks if room[k] >= need), None) if max(room) >= prep.min_fill_unit else None
                if k is None:
                    pending += uis
                else:
                    for ui in uis:
                        place(ui, k)
            # single expert tensors of what is left, layer by layer: down before gate+up (the
            # recipes give ffn_down more bits, so it saves the most RAM reads per token; gate and
            # up stay together, ik fuses them into one op)
            pending.sort(key=lambda ui: (prep.units[ui].layer, prep.units[ui].parts != ("down",)))
            for ui in pending:
                if max(room) < prep.min_fill_unit:
                    break
                lay = prep.units[ui].layer
                ks = [home(lay)] + [k for k in range(n_gpu) if k != home(lay)]
                k = next((k for k in ks if room[k] >= prep.units[ui].gpu_bytes), None)
                if k is not None:
                    place(ui, k)
            return added

        def room_for_experts() -> list[int]:
            """Headroom per GPU, less the larger margin a GPU takes once it holds routed experts."""
            with_exp = gpu_margins(dims, target, cmd, rb, experts=True)
            return [d.headroom_bytes - max(0, m.bytes - d.margin_bytes)
                    for d, m in zip(devices[1:], with_exp, strict=True)]  # fmt: skip

        added = fill_pass(room_for_experts())
        # Re-simulate after each pass: GPU-resident experts grow a GPU's compute buffer (their
        # FFN runs there) and take away the copy a large u-batch made of a RAM-resident expert
        # (which shrinks it), so what fits is only known from the final command. Units come back
        # off a GPU that went over (last placed first, and are not offered again); room that
        # opened up is filled again.
        for _round in range(12):
            if not added:
                break
            order_added += added
            cmd, rb, devices = _simulate_plan(prep, dims, target, s, n_ctx, engine, unit_dev, extras, engine_build, ngl)
            over = [-d.headroom_bytes for d in devices[1:]]
            if max(over) > 0:
                for k in range(n_gpu):
                    freed = 0
                    while over[k] > freed:
                        back = next((u for u in reversed(order_added) if unit_dev.get(u) == names[k]), None)
                        if back is None:
                            break
                        order_added.remove(back)
                        del unit_dev[back]
                        refused.add(back)
                        freed += prep.units[back].gpu_bytes
                cmd, rb, devices = _simulate_plan(prep, dims, target, s, n_ctx, engine, unit_dev, extras,
                                                  engine_build, ngl)  # fmt: skip
                if max(-d.headroom_bytes for d in devices[1:]) > 0:
                    continue  # still over: take more back in the next round
            added = fill_pass(room_for_experts())
            if not added and tries < 3:
                # Nothing fits by the numbers, but moving the last experts out of RAM also removes
                # the copy of the largest RAM-resident expert that a large u-batch keeps in the
                # compute buffer: try the next unit where that copy would make the difference
                # (the simulation decides; a failed try is taken back and not offered again).
                cpu_units = [ui for ui in range(len(prep.units)) if ui not in unit_dev and ui not in refused
                             and prep.units[ui].cuda_ok and prep.units[ui].forced != "cpu"]  # fmt: skip
                if cpu_units:
                    copy = max(prep.units[ui].max_gpu_tensor for ui in cpu_units)
                    room = room_for_experts()
                    ui = cpu_units[0]
                    k = max(range(n_gpu), key=lambda j: room[j])
                    if room[k] + copy >= prep.units[ui].gpu_bytes:
                        unit_dev[ui] = names[k]
                        added = [ui]
                        tries += 1
        if max(-d.headroom_bytes for d in devices[1:]) > 0 and order_added:
            # the last round could not settle: fall back to the base placement plus forced units
            for ui in order_added:
                unit_dev.pop(ui, None)
            cmd, rb, devices = _simulate_plan(prep, dims, target, s, n_ctx, engine, unit_dev, extras, engine_build, ngl)
    counts = [sum(1 for d in rb.gpu_layers if d == k) for k in range(n_gpu)]
    short = max(0, max(-d.headroom_bytes for d in devices))
    return _Eval(devices, dict(unit_dev), layer_gpu, counts, short == 0, kv, short, cmd, rb)


def _fewer_layers(prep: Prepared, dims: ModelDims, target: HardwareTarget, s: Settings, engine: Engine,
                  extras: ModelExtras | None, engine_build: int | None, ev: _Eval) -> tuple[int, _Eval]:  # fmt: skip
    """The largest ``-ngl`` below all layers whose base placement fits (bisection: fewer layers on
    the GPUs never need more of them), or (NGL, ev) when not even ``-ngl 0`` fits."""
    def at(n: int) -> _Eval:
        return _evaluate(prep, dims, target, s, s.n_ctx, engine, extras, engine_build, fill=False, ngl=n)

    zero = at(0)
    if not zero.fits:
        return NGL, ev
    lo, hi = 0, dims.n_layer + 1  # lo fits, hi does not (hi: every layer and the output)
    best = zero
    while hi - lo > 1:
        mid = (lo + hi) // 2
        e = at(mid)
        if e.fits:
            lo, best = mid, e
        else:
            hi = mid
    return lo, best


def _max_ctx(
    prep: Prepared, dims: ModelDims, target: HardwareTarget, s: Settings, engine: Engine, cap: int,
    extras: ModelExtras | None = None, engine_build: int | None = None, ngl: int = 999,
) -> int:  # fmt: skip
    """The largest context at which the base placement (routed experts in RAM) fits: the context
    a GPU can hold at all (a smaller one lets the fill move more experts)."""
    step = kv_padding(s.flash_attn)

    def fits(ctx: int) -> bool:
        return _evaluate(prep, dims, target, s, ctx, engine, extras, engine_build, fill=False, ngl=ngl).fits

    lo, hi = 0, cap // step  # in units of step; lo fits (0 = nothing fits)
    if fits(hi * step):
        return hi * step
    if not fits(step):
        return 0
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid
    return lo * step


def _command(
    *, engine: Engine, dims: ModelDims, target: HardwareTarget, s: Settings, ot: list[str], counts: list[int],
    n_ctx: int, ngl: int,
) -> list[str]:  # fmt: skip
    """The ``llama-server`` command of the plan, in the spelling both engines' parsers accept today:
    ``-fa on|off`` always explicit (ik turns FA on by default, and its ``-fa`` takes a value), no
    ``-fmoe`` (ik fuses MoE up/gate by default and only knows ``-no-fmoe``), ``-b`` at least ``-ub``
    (llama.cpp clamps the u-batch to the batch, so a smaller ``-b`` would run another plan), and
    mainline's ``-fit off`` so that its own fitting does not move what the plan placed. ``-ts`` is
    each GPU's memory in MiB (the split the plan simulated); ``counts`` is unused by the command."""
    cmd = ["llama-server", "-m", "MODEL.gguf", "-c", str(n_ctx)]
    if target.gpu:
        cmd += ["-ngl", str(ngl)]
        if len(target.gpu) > 1:
            cmd += ["-ts", ",".join(str(c) for c in tensor_split_for(target))]
        for a in ot:
            cmd += ["-ot", a]
    cmd += ["-fa", "on" if s.flash_attn else "off"]
    if engine == "ik" and dims.is_mla:
        cmd += ["-mla", str(s.mla), "-amb", str(s.amb)]
    cmd += ["-ctk", s.ctk, "-ctv", s.ctv, "-b", str(max(s.batch, s.ub)), "-ub", str(s.ub)]
    cmd += ["-t", str(target.cpu.physical_cores)]
    if engine == "mainline":
        cmd += ["-fit", "off"]
    return cmd


def _findings(
    prep: Prepared,
    dims: ModelDims,
    target: HardwareTarget,
    ev: _Eval,
    engine: Engine,
    s: Settings,
    *,
    advice: bool = True,
) -> tuple[list[Finding], float, float | None]:
    cat = catalogue(engine)
    out: list[Finding] = []
    names = _names(target)
    gpu_names = set(names) if target.gpu else set()
    cpu_bw = target.cpu.memory_bandwidth
    frac = (dims.n_expert_used / dims.n_expert) if dims.n_expert else 1.0
    # bytes read per generated token on each device, from the per-layer aggregates
    read = {d.name: float(d.kv_bytes) for d in ev.devices}
    if not gpu_names:
        read["CPU"] += (
            sum(prep.layer_base_raw)
            + prep.out_raw
            + prep.forced_raw
            + frac * sum(u.raw_bytes for u in prep.units)
        )
    else:
        for layer, b in enumerate(prep.layer_base_raw):
            read[names[ev.layer_gpu[layer]]] += b
        read[names[-1]] += prep.out_raw
        read["CPU"] += prep.forced_raw
        for ui, u in enumerate(prep.units):
            read[ev.unit_dev.get(ui, "CPU")] += frac * u.raw_bytes
    secs = 0.0
    for d in ev.devices:
        bw = cpu_bw if d.kind == "cpu" else target.gpu[names.index(d.name)].memory_bandwidth
        secs += read[d.name] / bw
    tg = 1.0 / secs if secs > 0 else 0.0
    plain_on_cpu: list[int] = []
    mispacked: list[int] = []
    unit_of = {i: ui for ui, u in enumerate(prep.units) for i in u.idx} if advice else {}
    if advice and gpu_names:
        for u in prep.units:
            if not u.cuda_ok:
                mispacked += [i for i in u.idx if prep.interleaved[i] and not prep.cuda_ok[i]]
        mispacked += [i for i in prep.forced_cpu_idx if prep.interleaved[i] and not prep.cuda_ok[i]]
    if advice and not gpu_names and engine == "ik":
        for i, t in enumerate(prep.tensors):
            if i != prep.embd_idx and len(t.shape) > 1:
                qt = cat.get(t.type)
                if qt.interleave == 1 and qt.repacked is not None:
                    plain_on_cpu.append(i)
    if plain_on_cpu:
        b = sum(prep.tensors[i].bytes for i in plain_on_cpu)
        twins = sorted(
            {f"{prep.tensors[i].type}->{cat.get(prep.tensors[i].type).repacked}" for i in plain_on_cpu}
        )
        out.append(
            Finding(
                code="r4-cpu-plain",
                message=(
                    f"CPU-only target: {len(plain_on_cpu)} tensors use plain types with a row-interleaved twin "
                    f"({', '.join(twins[:4])}); quantize them as _r4/_r8 (repack_cpu = true) or run with -rtr "
                    "(prompt processing is typically 1.5-2x faster repacked)"
                ),
                count=len(plain_on_cpu), bytes=b, examples=tuple(prep.tensors[i].name for i in plain_on_cpu[:3]),
            )
        )  # fmt: skip
    if mispacked:
        b = sum(prep.tensors[i].bytes for i in mispacked)
        gbw = max(g.memory_bandwidth for g in target.gpu)
        share = sum(prep.tensors[i].bytes * (frac if i in unit_of else 1.0) for i in mispacked)
        cost = share * (1 / cpu_bw - 1 / gbw) * 1000
        out.append(
            Finding(
                code="r4-on-gpu",
                message=(
                    f"{len(mispacked)} tensors use interleaved types without a CUDA matmul "
                    f"({', '.join(sorted({prep.tensors[i].type for i in mispacked}))}); they stay in RAM. "
                    "Use the plain (or a CUDA-capable _r4) type for tensors meant for the GPU"
                ),
                count=len(mispacked), bytes=b, examples=tuple(prep.tensors[i].name for i in mispacked[:3]),
                cost_ms_per_token=round(cost, 2),
            )
        )  # fmt: skip
    pp = None
    cpu_exp = sum(prep.units[ui].cpu_bytes for ui in range(len(prep.units)) if ui not in ev.unit_dev)
    if gpu_names and cpu_exp > 0 and not target.unified_memory:
        pcie = min(g.pcie_bandwidth for g in target.gpu)
        pp = s.ub / (cpu_exp / pcie)
        msg = (
            f"prompt processing offloads the {cpu_exp / _GIB:.1f} GiB of CPU-resident experts over PCIe per "
            f"u-batch: at -ub {s.ub} that bounds PP to ~{pp:.0f} t/s"
        )
        if s.ub < 4096:
            msg += (
                f"; -b 4096 -ub 4096 raises it to ~{4096 / (cpu_exp / pcie):.0f} t/s (more compute buffer), "
                "or set an -op offload policy to keep MoE ops on the CPU when PCIe is slow"
            )
        out.append(Finding(code="pp-pcie", message=msg, bytes=cpu_exp))
    return out, tg, pp


def plan_fit(
    plan: FitInput,
    dims: ModelDims,
    target: HardwareTarget,
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    prepared: Prepared | None = None,
    with_placement: bool = False,
    max_ctx_cap: int | None = None,
    advice: bool = True,
    extras: ModelExtras | None = None,
    engine_build: int | None = None,
) -> FitReport:
    """Does ``plan`` fit ``target`` at ``settings``: per-device bytes, verdict, command, advice."""
    s = settings or Settings()
    eng: Engine = engine or (plan.engine if isinstance(plan, QuantPlan) else None) or "ik"
    _check(s, dims, eng)
    prep = prepared or prepare(fit_tensors(plan), engine=eng, n_layer=dims.n_layer)
    ex = extras or infer_extras(prep.tensors)
    ev = _evaluate(prep, dims, target, s, s.n_ctx, eng, ex, engine_build)
    ngl = NGL
    cap = max_ctx_cap or max(dims.n_ctx_train, s.n_ctx)
    max_ctx = _max_ctx(prep, dims, target, s, eng, cap, ex, engine_build)
    if max_ctx == 0 and target.gpu and not target.unified_memory and ev.devices[0].headroom_bytes >= 0:
        # the GPUs cannot hold the attention of every layer at any context: as many layers as
        # they can (-ngl N: the last N layers; 0 keeps only the compute on the GPU)
        ngl, ev = _fewer_layers(prep, dims, target, s, eng, ex, engine_build, ev)
        if ngl != NGL:
            max_ctx = _max_ctx(prep, dims, target, s, eng, cap, ex, engine_build, ngl)
    if ev.fits:
        verdict: Verdict = "fits"
    elif max_ctx > 0:
        verdict = "fits_smaller_ctx"
    else:
        verdict = "does_not_fit"
    cheapest = None if ev.fits or not advice else _cheapest(prep, dims, target, s, eng, ev, max_ctx, ex, engine_build)
    ot = override_args(prep, ev.unit_dev) if target.gpu and not target.unified_memory else []
    cmd = _command(engine=eng, dims=dims, target=target, s=s, ot=ot, counts=ev.counts, n_ctx=s.n_ctx, ngl=ngl)
    findings, tg, pp = _findings(prep, dims, target, ev, eng, s, advice=advice)
    ncmoe = _ncmoe_note(prep, ev, eng) if advice else None
    if ncmoe:
        findings.append(ncmoe)
    placement = None
    if with_placement:
        placement = _placement_map(prep, ev, target)
    weights = prep.total_raw
    return FitReport(
        quant=plan.name if isinstance(plan, QuantPlan) else "plan", target=target.name, engine=eng, settings=s, verdict=verdict,
        max_ctx=max_ctx, kv_bytes=ev.kv.total, kv_k_bytes=ev.kv.k_bytes, kv_v_bytes=ev.kv.v_bytes,
        kv_size=ev.kv.kv_size, weights_bytes=weights, devices=tuple(ev.devices), short_by_bytes=ev.short_by,
        cheapest_change=cheapest, command=cmd, override_args=ot, ngl=ngl,
        tensor_split=tensor_split_for(target) if len(target.gpu) > 1 else [],
        tg_tokens_per_s=round(tg, 2), pp_offload_tokens_per_s=round(pp, 1) if pp else None,
        findings=tuple(findings), placement=placement,
    )  # fmt: skip


def infer_extras(tensors: Sequence[FitTensor]) -> ModelExtras:
    """``ModelExtras`` from the tensor names alone: a DeepSeek-style model with 3-D ``attn_k_b`` /
    ``attn_v_b`` and no ``attn_kv_b`` is in mainline's layout (the scale and groups default)."""
    names = {t.name.split(".", 2)[-1] for t in tensors if t.layer is not None}
    mainline = "attn_k_b.weight" in names and "attn_kv_b.weight" not in names
    return ModelExtras(layout="mainline" if mainline else "ik")


def _placement_map(prep: Prepared, ev: _Eval, target: HardwareTarget) -> dict[str, str]:
    """tensor -> device ("CPU" for every host buffer), as the final command places it."""
    names = _names(target)
    placed = ev.buffers.placement if ev.buffers is not None else {}
    out: dict[str, str] = {}
    for t in prep.tensors:
        dev = placed.get(t.name, "CPU")
        out[t.name] = names[int(dev[4:])] if dev.startswith("CUDA") and dev != "CUDA_Host" else "CPU"
    return out


def _ncmoe_note(prep: Prepared, ev: _Eval, engine: Engine) -> Finding | None:
    moe_layers = sorted({u.layer for u in prep.units})
    if not moe_layers or not ev.unit_dev:
        return None
    on_gpu = sorted({prep.units[ui].layer for ui in ev.unit_dev})
    whole = all(
        all(ui in ev.unit_dev for ui, u in enumerate(prep.units) if u.layer == layer) for layer in on_gpu
    )
    if not whole or on_gpu != moe_layers[: len(on_gpu)]:
        return None
    n_cpu = len(moe_layers) - len(on_gpu)
    return Finding(
        code="ncmoe",
        message=(
            f"same split as ik's -ncmoe {n_cpu} (ik: the LAST N layers' experts stay on the CPU); "
            f"mainline's --n-cpu-moe {n_cpu} keeps the FIRST N layers' experts on the CPU instead, "
            "so use the -ot arguments with mainline"
            if engine == "ik"
            else f"mainline's --n-cpu-moe N keeps the FIRST N layers' experts on the CPU; these -ot arguments keep "
            f"the last {n_cpu} there instead (ik's -ncmoe {n_cpu} is equivalent)"
        ),
        count=n_cpu,
    )


def _cheapest(
    prep: Prepared,
    dims: ModelDims,
    target: HardwareTarget,
    s: Settings,
    engine: Engine,
    ev: _Eval,
    max_ctx: int,
    extras: ModelExtras | None = None,
    engine_build: int | None = None,
) -> str:
    tries: list[tuple[str, Settings]] = []
    if s.ctk == "f16" or s.ctv == "f16":
        tries.append(
            (
                "-ctk q8_0 -ctv q8_0",
                s.model_copy(update={"ctk": "q8_0", "ctv": "q8_0" if s.flash_attn else s.ctv}),
            )
        )
    if s.ub > 256:
        tries.append((f"-ub {s.ub // 2}", s.model_copy(update={"ub": s.ub // 2})))
    if dims.is_mla and engine == "ik" and not s.flash_attn:
        tries.append(("-fa -mla 3", s.model_copy(update={"flash_attn": True, "mla": 3})))
    for label, alt in tries:
        if _evaluate(prep, dims, target, alt, s.n_ctx, engine, extras, engine_build, fill=False).fits:
            return f"run with {label}"
    if max_ctx > 0:
        return f"reduce the context to -c {max_ctx}"
    worst = max(ev.devices, key=lambda d: -d.headroom_bytes)
    return (
        f"{worst.name} is short by {ev.short_by / _GIB:.2f} GiB even at the smallest context: "
        f"choose a quant at least {ev.short_by / _GIB:.2f} GiB smaller (quantforge fit) or add memory"
    )


def _check(s: Settings, dims: ModelDims, engine: Engine) -> None:
    if s.n_ctx <= 0:
        raise UsageError(
            f"--ctx {s.n_ctx}: the context must be a positive number of tokens", hint="e.g. --ctx 32768"
        )
    if s.n_ctx > MAX_CTX:
        raise UsageError(
            f"--ctx {s.n_ctx}: absurdly large (limit {MAX_CTX})",
            hint=f"the model was trained for {dims.n_ctx_train} tokens" if dims.n_ctx_train else None,
        )
    if s.ub <= 0 or s.ub > 65536:
        raise UsageError(f"--ub {s.ub}: the u-batch must be between 1 and 65536", hint="e.g. --ub 512")
    if s.split_mode != "layer":
        raise UsageError(f"split mode {s.split_mode!r}: only the layer split is planned so far",
                         hint="plan with the default layer split")  # fmt: skip
    if s.mla not in (0, 1, 2, 3):
        raise UsageError(f"--mla {s.mla}: must be 1, 2 or 3", hint="ik: -mla 3 with -fa is the usual choice")
    check_kv_type(s.ctk, engine, flag="--ctk")
    check_kv_type(s.ctv, engine, flag="--ctv")
    if not s.flash_attn and s.ctv not in ("f16", "f32", "bf16") and not dims.is_mla:
        raise UsageError(f"--ctv {s.ctv}: a quantized V cache needs flash attention", hint="add --fa")


# ------------------------------------------------------------------ a given command line


class CommandPlan(BaseModel):
    """Every buffer one command line allocates (``plan SOURCE --command …``), per device, with the
    verdict against a target when one is given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Engine
    command: list[str]
    n_ctx: int
    kv_size: int
    n_ubatch: int
    flash_attn: bool
    buffers: tuple[BufferBytes, ...]  # device as the engine logs it: CPU, CPU_Mapped, CUDA_Host, CUDA0 ...
    gpu_layers: list[int]  # repeating layers per GPU
    target: str | None = None
    devices: tuple[DeviceUsage, ...] = ()  # with a target: CPU (RAM) first, then each GPU
    verdict: Literal["fits", "does_not_fit"] | None = None
    short_by_bytes: int = 0


def _command_gpus(cmd: RunCommand) -> int:
    """How many GPUs a command addresses when no target says so: its -ts entries, the highest
    CUDAn it names, else one (a single-GPU run; -ngl 0 means none)."""
    named = [int(m.group(1)) for _p, b in cmd.overrides if (m := re.fullmatch(r"CUDA(\d+)", b))]
    n = max([len(cmd.tensor_split), *(x + 1 for x in named), 1])
    return 0 if cmd.n_gpu_layers == 0 and not named else n


def plan_command(
    tensors: Sequence[FitTensor], dims: ModelDims, argv: str | Sequence[str], *, engine: Engine,
    target: HardwareTarget | None = None, extras: ModelExtras | None = None,
    offsets: Sequence[int] | None = None, engine_build: int | None = None,
) -> CommandPlan:  # fmt: skip
    """Size every buffer ``argv`` allocates for a model with these tensors (file order) and, with a
    target, judge it: each GPU's buffers + its measured margin + the target's ``gpu_margin``
    against its memory, RAM against the target's available RAM."""
    cmd = parse_command(argv, engine=engine)  # -ub above -b is clamped to it, as llama.cpp does
    if cmd.split_mode not in ("layer", "none"):
        raise UsageError(f"-sm {cmd.split_mode}: only the layer split is planned so far (its buffers are not "
                         "modelled)", hint="plan the command with -sm layer, or leave -sm out")  # fmt: skip
    n_gpus = len(target.gpu) if target is not None else _command_gpus(cmd)
    ex = extras or infer_extras(tensors)
    free = [g.vram for g in target.gpu] if target is not None and target.gpu else None
    rb = run_buffers(tensors, dims, cmd, n_gpus=n_gpus, extras=ex, offsets=offsets, gpu_free=free,
                     engine_build=engine_build)  # fmt: skip
    layers = [sum(1 for d in rb.gpu_layers if d == k) for k in range(n_gpus)]
    out = CommandPlan(engine=engine, command=split_command_line(argv), n_ctx=rb.n_ctx, kv_size=rb.kv_size,
                      n_ubatch=rb.n_ubatch, flash_attn=rb.flash_attn, buffers=rb.buffers, gpu_layers=layers)  # fmt: skip
    if target is None:
        return out
    prep = prepare(tensors, engine=engine, n_layer=dims.n_layer)
    devices = _usage(rb, dims, target, cmd, {}, prep, engine)
    short = max(0, max(-d.headroom_bytes for d in devices))
    return out.model_copy(update={"target": target.name, "devices": tuple(devices),
                                  "verdict": "fits" if short == 0 else "does_not_fit", "short_by_bytes": short})
