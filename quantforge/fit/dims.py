"""The architecture facts memory planning needs, read from an inventory's ``hparams``.

``hparams`` keys are GGUF KV names with or without the ``{arch}.`` prefix
(``deepseek2.attention.kv_lora_rank`` or ``attention.kv_lora_rank`` or ``kv_lora_rank``);
all three spellings are accepted so that real GGUF headers and synthesized inventories agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine
from quantforge.errors import InventoryError

#: Architectures whose attention is DeepSeek's multi-head latent attention (MLA).
MLA_ARCHS = frozenset({"deepseek2", "deepseek3", "kimi_k2", "glm_dsa"})


@dataclass(frozen=True)
class ModelExtras:
    """Model facts beyond ``ModelDims`` that change the graph."""

    layout: Engine = "ik"
    expert_weights_scale: float = 1.0
    expert_groups: int = 0
    expert_groups_used: int = 0


class ModelDims(BaseModel):
    """Shapes that size the KV cache and the compute buffers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ff: int = 0  # dense FFN width (0: none)
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_expert_shared: int = 0
    leading_dense: int = 0
    nextn_layers: int = 0
    kv_lora_rank: int = 0  # MLA: c^KV width
    n_rot: int = 0  # MLA: rope part of K (qk_rope_head_dim)
    n_ctx_train: int = 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0 and self.arch in MLA_ARCHS

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def n_embd_k_gqa(self) -> int:
        return self.head_dim_k * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int:
        return self.head_dim_v * self.n_head_kv


def _norm(arch: str, hp: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in hp.items():
        key = k[len(arch) + 1 :] if k.startswith(arch + ".") else k
        for variant in (key, key.replace(".", "_"), key.rsplit(".", 1)[-1]):
            out.setdefault(variant, v)
    return out


def _int(h: Mapping[str, Any], *names: str, default: int | None = None) -> int:
    for n in names:
        v = h.get(n)
        if v is None:
            continue
        if isinstance(v, (list, tuple)):  # per-layer arrays (head_count_kv of some archs): the max
            v = max(int(x) for x in v) if v else 0
        return int(v)
    if default is None:
        raise InventoryError(f"hparams lack {names[0]}", hint="the inventory must carry the model's hparams")
    return default


def dims_from_hparams(arch: str, hparams: Mapping[str, Any]) -> ModelDims:
    """``ModelDims`` of a model from its inventory's ``arch`` and ``hparams``."""
    h = _norm(arch, hparams)
    n_embd = _int(h, "embedding_length", "hidden_size")
    n_head = _int(h, "head_count", "attention_head_count", "num_attention_heads")
    n_head_kv = _int(h, "head_count_kv", "attention_head_count_kv", "num_key_value_heads", default=n_head)
    head_k = _int(h, "key_length", "attention_key_length", "head_dim", default=n_embd // max(n_head, 1))
    head_v = _int(h, "value_length", "attention_value_length", "head_dim", default=head_k)
    return ModelDims(
        arch=arch,
        n_layer=_int(h, "block_count", "num_hidden_layers"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_vocab=_int(h, "vocab_size", "n_vocab", default=32000),
        n_ff=_int(h, "feed_forward_length", "intermediate_size", default=0),
        n_expert=_int(h, "expert_count", "n_routed_experts", "num_experts", default=0),
        n_expert_used=_int(h, "expert_used_count", "num_experts_per_tok", default=0),
        n_ff_exp=_int(h, "expert_feed_forward_length", "moe_intermediate_size", default=0),
        n_expert_shared=_int(h, "expert_shared_count", "n_shared_experts", default=0),
        leading_dense=_int(h, "leading_dense_block_count", "first_k_dense_replace", default=0),
        nextn_layers=_int(h, "nextn_predict_layers", "num_nextn_predict_layers", default=0),
        kv_lora_rank=_int(h, "kv_lora_rank", "attention_kv_lora_rank", default=0),
        n_rot=_int(h, "rope_dimension_count", "dimension_count", "qk_rope_head_dim", "rope_dims", default=0),
        n_ctx_train=_int(h, "context_length", "max_position_embeddings", default=0),
    )


def extras_from_hparams(arch: str, hparams: Mapping[str, Any], *, layout: str = "ik") -> ModelExtras:
    """The graph-shaping facts beyond ``ModelDims``: the routed-expert weight scale and expert groups."""
    h = _norm(arch, hparams)
    scale = h.get("expert_weights_scale")
    return ModelExtras(
        layout="mainline" if layout == "mainline" else "ik",
        expert_weights_scale=float(scale) if scale is not None else 1.0,
        expert_groups=_int(h, "expert_group_count", default=0),
        expert_groups_used=_int(h, "expert_group_used_count", default=0),
    )
