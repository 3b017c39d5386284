"""Compute-buffer and fixed-overhead estimates (what the scheduler reserves beside weights and KV).

Calibrated on real loads (see ``docs/memory-validation.md``): the bundled ik ``libllama``
(CPU) at several contexts and u-batches, the fixtures' CUDA logs and the H100 runs of
``docs/gpu-logs/``. The graph allocator keeps the peak of live tensors of the worst-case
u-batch graph; for a model the peak is either the output step (logits ``n_vocab x n_ubatch``
f32 plus the hidden state) or the attention step (without flash attention: ``n_head x n_kv x
n_ubatch`` f32 scores plus the f32 mask; MLA as ik builds it, split in ``-amb`` MiB chunks), or
the MoE FFN step (``n_expert_used`` rows of ``n_ff_exp`` per token). A GPU that runs the
matmul of a host-resident weight (``-ot …=CPU`` with a large u-batch) also holds a copy of the
largest such weight.
"""

from __future__ import annotations

from collections.abc import Iterable

from quantforge.fit.dims import ModelDims

_F32 = 4
_F16 = 2
_MIB = 1 << 20

#: CUDA context + cuBLAS workspace + the driver's own allocations per GPU, not in any log line
#: (measured ~300-450 MiB on Ampere/Hopper with CUDA 12/13): an estimate, kept conservative.
CUDA_CONTEXT_BYTES = 384 * _MIB


def _mla_attention_peak(
    dims: ModelDims, *, kv_size: int, ub: int, flash_attn: bool, mla: int, amb_mib: int, cuda: bool
) -> int:
    """ik's MLA attention (``graphs/build_deepseek2.cpp`` at 8337e4cd3): the live tensors of its
    largest step. ``pp_opt`` (u-batch >= 128 with ``-mla 2/3``) is ik's prompt path. Checked on
    the miniature deepseek2 with the bundled ik libllama (CPU) and on the H100 (CUDA)."""
    hidden = 2 * dims.n_embd * ub * _F32
    width = dims.kv_lora_rank + dims.n_rot  # one c^KV row
    q = dims.n_head * ub * width * _F32  # q (rope part + q_nope absorbed into c^KV space)
    pp_opt = ub >= 128 and mla > 1
    if flash_attn and pp_opt:
        # K and V decompressed from c^KV: kv_f32 = wkv_b x c^KV (f32) for n_max heads at a time
        # (fewer heads when it exceeds -amb MiB), cast to f16 v and k_nope; the peak is at the
        # second cast (kv_f32 is freed after it). The repeated f16 k_rope is made at the first
        # step's concat and stays live through the later steps.
        n_nope = dims.head_dim_k - dims.n_rot
        n_per_head = n_nope + dims.head_dim_v
        kv_f32_mib = dims.n_head * n_per_head * kv_size * _F32 // _MIB
        n_max = dims.n_head
        if amb_mib > 0 and kv_f32_mib > amb_mib:
            n_max = 1
            for niter in range(2, dims.n_head):
                if dims.n_head % niter == 0 and kv_f32_mib // niter <= amb_mib:
                    n_max = dims.n_head // niter
                    break
        kv_f32 = n_max * n_per_head * kv_size * _F32
        casts = n_max * kv_size * n_per_head * _F16
        k_rope = n_max * kv_size * dims.n_rot * _F16 if n_max < dims.n_head else 0
        mask = kv_size * ub * _F16
        q_pp = dims.n_head * ub * dims.head_dim_k * _F32  # concat(q_rope, q_nope), not absorbed
        return kv_f32 + casts + k_rope + q_pp + mask + hidden
    if flash_attn:  # FA on the compressed cache (-mla 1/3 token generation or small batches)
        return q + kv_size * ub * _F16 + hidden
    # no FA: K*Q f32 scores of all heads; outside pp_opt they are permuted and made contiguous,
    # and on CUDA both copies are live (H100: 156.66 MiB = 2 x 64 + 16 + 12.66; the CPU backend
    # keeps one). -amb splits the heads into steps of at most amb MiB (one copy each, soft_max in
    # place). The query in its three forms (q_b output, q_nope absorbed by wk_b, their concat) is
    # allocated before the scores and its blocks are too small to hold them, so it adds up.
    mask = kv_size * ub * _F32
    q += dims.n_head * ub * (dims.head_dim_k + dims.kv_lora_rank) * _F32
    kq = dims.n_head * kv_size * ub * _F32
    kq_mib = kq // _MIB
    trans = kv_size * dims.kv_lora_rank * _F16 if mla > 1 else 0  # cont(transpose(c^KV))
    if amb_mib <= 0 or amb_mib >= kq_mib:
        scores = kq if (pp_opt or not cuda) else 2 * kq
    else:
        n_step = min(-(-kq_mib // amb_mib), dims.n_head)
        per_step = -(-dims.n_head // n_step)
        scores = per_step * kv_size * ub * _F32
    return scores + mask + q + trans + hidden


def _attention_peak(
    dims: ModelDims, *, kv_size: int, ub: int, flash_attn: bool, mla: int, amb_mib: int, cuda: bool
) -> int:
    if dims.is_mla and mla > 0:
        return _mla_attention_peak(
            dims, kv_size=kv_size, ub=ub, flash_attn=flash_attn, mla=mla, amb_mib=amb_mib, cuda=cuda
        )
    hidden = 2 * dims.n_embd * ub * _F32
    if flash_attn:
        return hidden
    # K*Q f32 scores of all heads (soft_max runs in place) plus the f32 mask
    scores = dims.n_head * kv_size * ub * _F32
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
    offload_copy: int = 0,
    cuda: bool = True,
) -> int:
    """The main compute buffer of one device (the GPU holding the output, or the CPU).

    ``cuda``: the device is a GPU (False for a CPU-only run: ik's CPU backend keeps one copy of
    the MLA scores where CUDA keeps two).
    ``offload_copy``: bytes of the largest weight that lives in host memory but whose matmul the
    scheduler runs on this GPU for a large u-batch (see ``offload_copy_bytes``); the copy is a
    graph input of the split, and the measured buffers grow by exactly its size.
    """
    peaks = [0]
    if has_output:
        peaks.append(dims.n_vocab * ub * _F32 + (2 * dims.n_embd * ub * _F32))
    if has_layers:
        peaks.append(
            _attention_peak(
                dims, kv_size=kv_size, ub=ub, flash_attn=flash_attn, mla=mla, amb_mib=amb_mib, cuda=cuda
            )
        )
        peaks.append(_ffn_peak(dims, ub=ub))
    return max(peaks) + offload_copy


#: ggml-cuda's ``GGML_CUDA_MIN_BATCH_OFFLOAD``: a host-resident weight is copied to the GPU for
#: ops with at least this many rows (ik: MoE ops when ``ub * n_expert_used >= 32 * n_expert``).
MIN_BATCH_OFFLOAD = 32


def offloads(dims: ModelDims, *, ub: int, expert: bool, engine: str = "ik") -> bool:
    """Whether the CUDA backend runs the matmul of a host-resident weight on the GPU at ``ub``
    (``ggml_backend_cuda_offload_op``): the weight is then copied into the compute buffer of the
    first GPU (the scheduler offloads to the highest-priority backend that accepts the op). ik
    asks routed-expert ops for ``ub * n_expert_used >= 32 * n_expert``; mainline only ``ub >= 32``."""
    if expert and dims.n_expert > 0 and engine == "ik":
        return ub >= MIN_BATCH_OFFLOAD and ub * dims.n_expert_used >= MIN_BATCH_OFFLOAD * dims.n_expert
    return ub >= MIN_BATCH_OFFLOAD


def host_compute_buffer(dims: ModelDims, *, kv_size: int, ub: int, flash_attn: bool) -> int:
    """The pinned host compute buffer of a GPU run (``CUDA_Host compute buffer``): the input
    embeddings gathered on the CPU and the KQ mask (f16 with flash attention, f32 without)."""
    return dims.n_embd * ub * _F32 + kv_size * ub * (_F16 if flash_attn else _F32)


def output_buffer(dims: ModelDims, *, n_seq: int = 1) -> int:
    """The logits output buffer (``output buffer size``): one row of n_vocab floats per sequence."""
    return dims.n_vocab * _F32 * n_seq


def offload_copy_bytes(
    dims: ModelDims, *, ub: int, host_weights: Iterable[tuple[int, bool]], engine: str = "ik"
) -> int:
    """The largest GPU-side copy among host-resident matmul weights (``(gpu bytes, is routed
    expert)`` pairs) that ``offloads`` at ``ub``; 0 when none does."""
    best = 0
    for nbytes, expert in host_weights:
        if nbytes > best and offloads(dims, ub=ub, expert=expert, engine=engine):
            best = nbytes
    return best
