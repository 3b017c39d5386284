"""``plan_fit``: memory per device, verdict, largest context, run command, R4 advice, speed bound."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import UsageError
from quantforge.fit.compute import (
    CUDA_CONTEXT_BYTES,
    compute_buffer,
    host_compute_buffer,
    offload_copy_bytes,
    output_buffer,
)
from quantforge.fit.dims import ModelDims
from quantforge.fit.kv import KVCache, check_kv_type, kv_cache, kv_padding
from quantforge.fit.placement import Prepared, layer_device, override_args, split_layers
from quantforge.targets import HardwareTarget

_GIB = 1 << 30
_MIB = 1 << 20
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
    overhead_bytes: int  # CUDA context + margin on GPUs; output buffer + OS reserve not included
    total_bytes: int
    capacity_bytes: int
    headroom_bytes: int
    expert_layers: tuple[int, ...] = ()  # layers whose routed experts live here (GPUs)
    pinned: bool = False  # CPU weights allocated (ik turns mmap off with -ot), not mapped


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


def _names(target: HardwareTarget) -> list[str]:
    if target.unified_memory:
        return ["Metal"] if len(target.gpu) == 1 else [f"Metal{i}" for i in range(len(target.gpu))]
    return [f"CUDA{i}" for i in range(len(target.gpu))]


@lru_cache(maxsize=4096)
def _kv(dims: ModelDims, n_ctx: int, ctk: str, ctv: str, fa: bool, mla: int, engine: Engine) -> KVCache:
    """``kv_cache`` memoized: the matrix and the largest-context search ask for the same few
    contexts of one model over and over (dims and the result are frozen models)."""
    return kv_cache(dims, n_ctx=n_ctx, type_k=ctk, type_v=ctv, flash_attn=fa, mla=mla, engine=engine)


def _evaluate(
    prep: Prepared, dims: ModelDims, target: HardwareTarget, s: Settings, n_ctx: int, engine: Engine
) -> _Eval:
    kv = _kv(dims, n_ctx, s.ctk, s.ctv, s.flash_attn, s.mla, engine)
    n_gpu = len(target.gpu)
    nl = prep.n_layer
    per_layer_kv = list(kv.per_layer[:nl]) + [0] * max(0, nl - len(kv.per_layer))
    embd_cpu = prep.cpu_bytes[prep.embd_idx] if prep.embd_idx is not None else 0
    embd_gpu = prep.gpu_bytes[prep.embd_idx] if prep.embd_idx is not None else 0
    out_cpu, out_gpu, forced_cpu = prep.out_cpu, prep.out_gpu, prep.forced_cpu
    out_buf = output_buffer(dims)
    ram_cap = target.ram.available

    if n_gpu == 0:
        weights = embd_cpu + out_cpu + forced_cpu + sum(prep.layer_base_cpu) + sum(prep.layer_expert_cpu)
        cpu_comp = compute_buffer(
            dims, kv_size=kv.kv_size, ub=s.ub, flash_attn=s.flash_attn, mla=s.mla, amb_mib=s.amb, cuda=False
        )
        total = weights + kv.total + cpu_comp + out_buf
        cpu_dev = DeviceUsage(
            name="CPU", kind="cpu", weights_bytes=weights, kv_bytes=kv.total, compute_bytes=cpu_comp,
            overhead_bytes=out_buf, total_bytes=total, capacity_bytes=ram_cap, headroom_bytes=ram_cap - total,
        )  # fmt: skip
        return _Eval([cpu_dev], {}, [], [], total <= ram_cap, kv, max(0, total - ram_cap))

    names = _names(target)
    counts = split_layers(nl, [g.vram for g in target.gpu])
    layer_gpu = [layer_device(i, counts) for i in range(nl)] if n_gpu > 1 else [0] * nl
    overhead = 0 if target.unified_memory else CUDA_CONTEXT_BYTES
    replicate = s.split_mode == "graph" and dims.is_mla and n_gpu > 1
    fixed = [0] * n_gpu
    w = [0] * n_gpu
    kvb = [0] * n_gpu
    for layer in range(nl):
        g = layer_gpu[layer]
        w[g] += prep.layer_base_gpu[layer]
        if replicate:
            for k in range(n_gpu):
                kvb[k] += per_layer_kv[layer]
        else:
            kvb[g] += per_layer_kv[layer]
    last = n_gpu - 1
    w[last] += out_gpu + (embd_gpu if prep.tied_output else 0)
    comp = [
        compute_buffer(
            dims, kv_size=kv.kv_size, ub=s.ub, flash_attn=s.flash_attn, mla=s.mla, amb_mib=s.amb,
            has_output=(k == last), has_layers=counts[k] > 0 if n_gpu > 1 else True,
        )
        for k in range(n_gpu)
    ]  # fmt: skip
    for k in range(n_gpu):
        fixed[k] = w[k] + kvb[k] + comp[k] + overhead + target.gpu_margin
    room = [target.gpu[k].vram - fixed[k] for k in range(n_gpu)]
    # fill: whole expert layers first (home GPU, then any), then gate+up / down halves
    unit_dev: dict[int, str] = {}
    for ui in prep.forced_gpu_units:
        u = prep.units[ui]
        g = layer_gpu[u.layer]
        unit_dev[ui] = names[g]
        room[g] -= u.gpu_bytes
    orders = [[h] + [k for k in range(n_gpu) if k != h] for h in range(n_gpu)]

    def order(layer: int) -> list[int]:
        return orders[layer_gpu[layer] if layer < nl else 0]

    pending: list[int] = []
    left: list[tuple[int, list[int], int]] = []
    # pass 1: each GPU takes whole expert layers of its own layers (no cross-device hop)
    for item in prep.fill_layers:
        layer, uis, need = item
        home = layer_gpu[layer] if layer < nl else 0
        if room[home] >= need:
            for ui in uis:
                unit_dev[ui] = names[home]
            room[home] -= need
        else:
            left.append(item)
    # pass 2: whole layers to any GPU with room left; then the halves of what is left. Once no
    # GPU has room for the smallest unit, nothing more can move (saves the matrix the loops).
    for layer, uis, need in left:
        if max(room) < prep.min_fill_unit:
            break
        for k in order(layer):
            if room[k] >= need:
                for ui in uis:
                    unit_dev[ui] = names[k]
                room[k] -= need
                break
        else:
            pending += uis
    for ui in pending:
        if max(room) < prep.min_fill_unit:
            break
        u = prep.units[ui]
        for k in order(u.layer):
            if room[k] >= u.gpu_bytes:
                unit_dev[ui] = names[k]
                room[k] -= u.gpu_bytes
                break
    exp_w = [0] * n_gpu
    exp_layers: list[set[int]] = [set() for _ in range(n_gpu)]
    cpu_experts = 0
    copy_experts = 0  # the largest routed-expert tensor left in RAM
    for ui, u in enumerate(prep.units):
        udev = unit_dev.get(ui)
        if udev is None:
            cpu_experts += u.cpu_bytes
            copy_experts = max(copy_experts, u.max_gpu_tensor)
        else:
            k = names.index(udev)
            exp_w[k] += u.gpu_bytes
            exp_layers[k].add(u.layer)
    if not target.unified_memory:
        # a large u-batch runs the matmuls of RAM-resident weights on the first GPU, which then
        # holds a copy of the largest of them in its compute buffer (H100-validated)
        comp[0] += offload_copy_bytes(
            dims, ub=s.ub, engine=engine,
            host_weights=[(copy_experts, True), (prep.forced_cpu_max_matrix, False)],
        )  # fmt: skip
    devices: list[DeviceUsage] = []
    gpu_used = 0
    for k in range(n_gpu):
        weights = w[k] + exp_w[k]
        total = weights + kvb[k] + comp[k] + overhead + target.gpu_margin
        gpu_used += total
        cap = target.gpu[k].vram
        devices.append(
            DeviceUsage(
                name=names[k], kind="gpu", weights_bytes=weights, kv_bytes=kvb[k], compute_bytes=comp[k],
                overhead_bytes=overhead + target.gpu_margin, total_bytes=total, capacity_bytes=cap,
                headroom_bytes=cap - total, expert_layers=tuple(sorted(exp_layers[k])),
            )
        )  # fmt: skip
    cpu_w = embd_cpu + forced_cpu + cpu_experts
    host_comp = host_compute_buffer(dims, kv_size=kv.kv_size, ub=s.ub, flash_attn=s.flash_attn)
    cpu_total = cpu_w + host_comp + out_buf
    pinned = engine == "ik" and (cpu_experts > 0 or bool(prep.forced_cpu_idx))
    cpu_cap = ram_cap
    if target.unified_memory:
        cpu_total += gpu_used  # one pool
    devices.insert(
        0,
        DeviceUsage(
            name="CPU", kind="cpu", weights_bytes=cpu_w, kv_bytes=0, compute_bytes=host_comp, overhead_bytes=out_buf,
            total_bytes=cpu_total, capacity_bytes=cpu_cap, headroom_bytes=cpu_cap - cpu_total, pinned=pinned,
        ),
    )  # fmt: skip
    short = max(0, max(-d.headroom_bytes for d in devices))
    return _Eval(devices, unit_dev, layer_gpu, counts, short == 0, kv, short)


def _max_ctx(
    prep: Prepared, dims: ModelDims, target: HardwareTarget, s: Settings, engine: Engine, cap: int
) -> int:
    step = kv_padding(s.flash_attn)
    lo, hi = 0, cap // step  # in units of step; lo fits (0 = nothing fits)
    if _evaluate(prep, dims, target, s, hi * step, engine).fits:
        return hi * step
    if not _evaluate(prep, dims, target, s, step, engine).fits:
        return 0
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _evaluate(prep, dims, target, s, mid * step, engine).fits:
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
    mainline's ``-fit off`` so that its own fitting does not move what the plan placed."""
    cmd = ["llama-server", "-m", "MODEL.gguf", "-c", str(n_ctx)]
    if target.gpu:
        cmd += ["-ngl", str(ngl)]
        if len(target.gpu) > 1:
            cmd += ["-ts", ",".join(str(c) for c in counts)]
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
    plan: Any,
    dims: ModelDims,
    target: HardwareTarget,
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    prepared: Prepared | None = None,
    with_placement: bool = False,
    max_ctx_cap: int | None = None,
    advice: bool = True,
) -> FitReport:
    """Does ``plan`` fit ``target`` at ``settings``: per-device bytes, verdict, command, advice."""
    from quantforge.fit.placement import fit_tensors, prepare

    s = settings or Settings()
    eng: Engine = engine or getattr(plan, "engine", None) or "ik"
    _check(s, dims, eng)
    prep = prepared or prepare(fit_tensors(plan), engine=eng, n_layer=dims.n_layer)
    ev = _evaluate(prep, dims, target, s, s.n_ctx, eng)
    cap = max_ctx_cap or max(dims.n_ctx_train, s.n_ctx)
    max_ctx = _max_ctx(prep, dims, target, s, eng, cap)
    if ev.fits:
        verdict: Verdict = "fits"
    elif max_ctx > 0:
        verdict = "fits_smaller_ctx"
    else:
        verdict = "does_not_fit"
    cheapest = None if ev.fits or not advice else _cheapest(prep, dims, target, s, eng, ev, max_ctx)
    ot = override_args(prep, ev.unit_dev) if advice and target.gpu and not target.unified_memory else []
    ngl = 99
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
        quant=getattr(plan, "name", "plan"), target=target.name, engine=eng, settings=s, verdict=verdict,
        max_ctx=max_ctx, kv_bytes=ev.kv.total, kv_k_bytes=ev.kv.k_bytes, kv_v_bytes=ev.kv.v_bytes,
        kv_size=ev.kv.kv_size, weights_bytes=weights, devices=tuple(ev.devices), short_by_bytes=ev.short_by,
        cheapest_change=cheapest, command=cmd, override_args=ot, ngl=ngl, tensor_split=ev.counts,
        tg_tokens_per_s=round(tg, 2), pp_offload_tokens_per_s=round(pp, 1) if pp else None,
        findings=tuple(findings), placement=placement,
    )  # fmt: skip


def _placement_map(prep: Prepared, ev: _Eval, target: HardwareTarget) -> dict[str, str]:
    names = _names(target)
    unit_of = {i: ui for ui, u in enumerate(prep.units) for i in u.idx}
    out: dict[str, str] = {}
    for i, t in enumerate(prep.tensors):
        if not target.gpu or i == prep.embd_idx or i in prep.forced_cpu_idx:
            out[t.name] = "CPU"
        elif i in unit_of:
            out[t.name] = ev.unit_dev.get(unit_of[i], "CPU")
        elif t.layer is not None and t.layer < prep.n_layer:
            out[t.name] = names[ev.layer_gpu[t.layer]]
        else:
            out[t.name] = names[-1]
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
        if _evaluate(prep, dims, target, alt, s.n_ctx, engine).fits:
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
    if s.mla not in (0, 1, 2, 3):
        raise UsageError(f"--mla {s.mla}: must be 1, 2 or 3", hint="ik: -mla 3 with -fa is the usual choice")
    check_kv_type(s.ctk, engine, flag="--ctk")
    check_kv_type(s.ctv, engine, flag="--ctv")
    if not s.flash_attn and s.ctv not in ("f16", "f32", "bf16") and not dims.is_mla:
        raise UsageError(f"--ctv {s.ctv}: a quantized V cache needs flash attention", hint="add --fa")
