"""KV cache bytes, exactly as ik_llama.cpp / llama.cpp allocate them.

Replicated from ik_llama.cpp ``src/llama.cpp`` (``llama_kv_cache_init``) at 8337e4cd3:

* the context is padded: ``GGML_PAD(n_ctx, 256)`` with flash attention, ``32`` without
  (``llama_kv_cache::get_padding``);
* GQA layers: K is ``[head_dim_k, n_head_kv * kv_size]`` of ``type_k``, V a 1-D tensor of
  ``head_dim_v * n_head_kv * kv_size`` elements of ``type_v``;
* MLA (DeepSeek, ``-mla N``): one c^KV tensor ``[kv_lora_rank + n_rot, kv_size]`` per layer
  (of ``type_k``; of ``type_v`` when ``-mla 2/3`` run without FA), plus the transposed V cache
  ``kv_lora_rank * kv_size`` of ``type_v`` only for ``-mla 1`` without FA; ``-mla 0`` is the
  plain per-head cache (head_count_kv x key_length / value_length), which is huge;
* the cache of a layer lives on the device of that layer (``-ngl``); with several GPUs in
  ik's graph/attn split modes the MLA cache is replicated on every GPU.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import KV_CACHE_TYPES, Engine, catalogue
from quantforge.errors import UsageError
from quantforge.fit.dims import ModelDims


class KVCache(BaseModel):
    """The cache at one context: per-layer and total bytes, K and V parts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_ctx: int  # as asked
    kv_size: int  # after padding
    type_k: str
    type_v: str
    mla: int
    flash_attn: bool
    k_bytes: int  # all layers (c^KV for MLA)
    v_bytes: int  # all layers (kv^T for MLA -mla 1 without FA, else 0 under MLA)
    per_layer: tuple[int, ...]  # K+V bytes of each layer

    @property
    def total(self) -> int:
        return self.k_bytes + self.v_bytes


def kv_padding(flash_attn: bool, engine: Engine = "ik") -> int:
    """ik pads the cache to 256 cells with flash attention and 32 without; llama.cpp (mainline)
    always to 256 (``llama_context``: ``GGML_PAD(n_ctx, 256)``)."""
    if engine == "mainline":
        return 256
    return 256 if flash_attn else 32


def padded_ctx(n_ctx: int, flash_attn: bool, engine: Engine = "ik") -> int:
    pad = kv_padding(flash_attn, engine)
    return (n_ctx + pad - 1) // pad * pad


def check_kv_type(name: str, engine: Engine, *, flag: str) -> str:
    """The engine's spelling of a cache type, or UsageError naming the accepted ones."""
    allowed = KV_CACHE_TYPES[engine]
    for a in allowed:
        if a.lower() == name.lower():
            return a
    raise UsageError(
        f"{flag} {name}: not a KV cache type of {engine}", hint=f"use one of {', '.join(allowed)}"
    )


def kv_cache(
    dims: ModelDims,
    *,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attn: bool = True,
    mla: int = 0,
    engine: Engine = "ik",
) -> KVCache:
    """Bytes of the KV cache of ``dims`` at ``n_ctx`` (before padding) with these settings."""
    cat = catalogue(engine)
    tk, tv = cat.get(type_k), cat.get(type_v)
    kv_size = padded_ctx(n_ctx, flash_attn, engine)
    use_mla = dims.is_mla and (mla > 0 or engine == "mainline")
    per_layer: list[int] = []
    k_total = v_total = 0
    # the NextN (MTP) layers have no cache unless MTP is on (neither engine enables it by default)
    n_kv_layers = dims.n_layer - dims.nextn_layers
    for _ in range(n_kv_layers):
        if use_mla and engine == "mainline":
            # mainline stores MLA as MQA over the latent: one K row of kv_lora + rope, no V cache
            k = tk.row_bytes(dims.kv_lora_rank + dims.n_rot) * kv_size
            v = 0
        elif use_mla:
            primary = tk if (flash_attn or mla == 1) else tv
            k = primary.row_bytes(dims.kv_lora_rank + dims.n_rot) * kv_size
            v = tv.row_bytes(dims.kv_lora_rank * kv_size) if (mla == 1 and not flash_attn) else 0
        else:
            k = tk.row_bytes(dims.head_dim_k) * dims.n_head_kv * kv_size
            v = tv.row_bytes(dims.head_dim_v * dims.n_head_kv * kv_size)
        per_layer.append(k + v)
        k_total += k
        v_total += v
    return KVCache(
        n_ctx=n_ctx,
        kv_size=kv_size,
        type_k=tk.name,
        type_v=tv.name,
        mla=(mla if engine == "ik" else 1) if dims.is_mla else 0,
        flash_attn=flash_attn,
        k_bytes=k_total,
        v_bytes=v_total,
        per_layer=tuple(per_layer),
    )
