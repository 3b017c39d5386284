"""Compute-buffer and fixed-overhead estimates (what the scheduler reserves beside weights and KV).

Calibrated on real loads (see ``docs/memory-validation.md``): the bundled ik ``libllama``
(CPU) at several contexts and u-batches, and the fixtures' CUDA logs. The graph allocator
keeps the peak of live tensors of the worst-case u-batch graph; for a model the peak is
either the output step (logits ``n_vocab x n_ubatch`` f32 plus the hidden state) or the
attention step (without flash attention: ``n_head x n_kv x n_ubatch`` f32 scores plus the
f32 mask, split in ``-amb`` MiB chunks by ik), or the MoE FFN step (``n_expert_used`` rows
of ``n_ff_exp`` per token).
"""

from __future__ import annotations

from quantforge.fit.dims import ModelDims

_F32 = 4
_F16 = 2
_MIB = 1 << 20

#: CUDA context + cuBLAS workspace + the driver's own allocations per GPU, not in any log line
#: (measured ~300-450 MiB on Ampere/Hopper with CUDA 12/13): an estimate, kept conservative.
CUDA_CONTEXT_BYTES = 384 * _MIB


def _attention_peak(
    dims: ModelDims, *, kv_size: int, ub: int, flash_attn: bool, mla: int, amb_mib: int
) -> int:
    hidden = 2 * dims.n_embd * ub * _F32
    if flash_attn:
        if dims.is_mla and mla >= 2:
            # MLA prompt path: K and V decompressed from c^KV for all n_kv positions (f16),
            # split into -amb sized chunks of heads by ik.
            dec = kv_size * dims.n_head * (dims.head_dim_k + dims.head_dim_v) * _F16
            if amb_mib > 0:
                dec = min(dec, amb_mib * _MIB)
            return dec + hidden
        return hidden
    scores = dims.n_head * kv_size * ub * _F32
    if amb_mib > 0 and dims.is_mla:
        scores = min(scores, amb_mib * _MIB)
    mask = kv_size * ub * _F32
    return scores + mask + hidden


def _ffn_peak(dims: ModelDims, *, ub: int) -> int:
    if dims.is_moe:
        width = dims.n_expert_used * dims.n_ff_exp + dims.n_expert_shared * dims.n_ff_exp
        # router logits + up/gate results of the selected experts + their product
        return ub * (dims.n_expert * _F32 + 2 * width * _F32 + dims.n_embd * _F32)
    return ub * (2 * dims.n_ff * _F32 + dims.n_embd * _F32)


def compute_buffer(
    dims: ModelDims,
    *,
    kv_size: int,
    ub: int,
    flash_attn: bool,
    mla: int = 0,
    amb_mib: int = 0,
    has_output: bool = True,
    has_layers: bool = True,
) -> int:
    """The main compute buffer of one device (the GPU holding the output, or the CPU)."""
    peaks = [0]
    if has_output:
        peaks.append(dims.n_vocab * ub * _F32 + (2 * dims.n_embd * ub * _F32))
    if has_layers:
        peaks.append(
            _attention_peak(dims, kv_size=kv_size, ub=ub, flash_attn=flash_attn, mla=mla, amb_mib=amb_mib)
        )
        peaks.append(_ffn_peak(dims, ub=ub))
    return max(peaks)


def host_compute_buffer(dims: ModelDims, *, kv_size: int, ub: int, flash_attn: bool) -> int:
    """The pinned host compute buffer of a GPU run (``CUDA_Host compute buffer``): the input
    embeddings gathered on the CPU and the KQ mask (f16 with flash attention, f32 without)."""
    return dims.n_embd * ub * _F32 + kv_size * ub * (_F16 if flash_attn else _F32)


def output_buffer(dims: ModelDims, *, n_seq: int = 1) -> int:
    """The logits output buffer (``output buffer size``): one row of n_vocab floats per sequence."""
    return dims.n_vocab * _F32 * n_seq
