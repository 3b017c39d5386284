"""Tensor inventories synthesized from a Hugging Face ``config.json``, and the shipped ones.

Planning a 700 GB model should not need the model: its GGUF tensor list follows from the
architecture's ``config.json`` and the converter (``convert_hf_to_gguf.py``) that would
write it. This module replays what each engine's converter does, tensor by tensor:

* names and shapes (ggml order, ``ne0`` first) per architecture: ``llama``, ``qwen2``,
  ``qwen3``, ``qwen3moe``, ``deepseek2`` (DeepSeek-V2/V3/R1, Kimi-K2) and ``glm4moe``;
* source dtypes by the converters' rule: 1-D tensors, ``*_norm.weight``, ``ffn_gate_inp``
  and tensors whose HF name does not end in ``.weight`` (``exp_probs_b.bias``) are F32,
  every other tensor has the checkpoint dtype (BF16 unless told otherwise);
* the deepseek2 layouts, which differ by engine: ik_llama.cpp's converter keeps
  ``attn_kv_b`` and adds 2-D ``attn_k_b``/``attn_v_b`` (1147 tensors for DeepSeek-V3);
  mainline llama.cpp writes 3-D ``attn_k_b``/``attn_v_b`` and no ``attn_kv_b`` (1086).
  Both skip DeepSeek's MTP layer; glm4moe exports its MTP ("nextn") block;
* the order the converters emit: they walk the checkpoint's safetensors files in sorted
  order and each file's tensors sorted by HF name, and write a merged expert tensor when
  the last expert of its layer is seen. A single-file checkpoint (SmolLM2) is therefore
  sorted by HF name as strings (``blk.0, blk.1, blk.10, ...``); a sharded one follows its
  shard layout, which ``config.json`` does not describe. For sharded checkpoints we emit
  the layer-major order (embeddings, blocks 0..N-1 each sorted by HF name, ``lm_head``,
  final norm), which is what a layer-per-shard checkpoint gives; real files can interleave
  layers differently (Kimi-K2-Thinking's BF16 map lists layers out of order). The order
  does not change any size: every tensor's data is padded to the alignment on its own.

``hparams`` use GGUF key suffixes (``attention.head_count_kv``...) with the values the
converter of that layout writes, plus the values llama.cpp derives when a key is absent
(``attention.key_length``, ``rope.dimension_count``, ``vocab_size``), so the fit stage never
has to know which converter omitted what.

``metadata_bytes`` of a synthesized inventory is an *estimate* (``kv is None`` marks every
synthesized inventory): the tensor-info block is computed exactly, the KV block (dominated
by the tokenizer's token and merge arrays) is estimated from the vocabulary size.

Shipped models (``quantforge/data/models/*.json``) are trimmed ``config.json`` files plus a
``quantforge`` section (aliases, tokenizer facts for the metadata estimate); they are
addressed by Hugging Face id, so planning works offline.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from quantforge.constants import DATA_DIR, GGUF_DEFAULT_ALIGNMENT
from quantforge.errors import InventoryError
from quantforge.inventory import Engine, Layout, NextN, TensorEntry, TensorInventory

#: Folder of the shipped model configs.
MODELS_DIR = DATA_DIR / "models"

#: HF ``architectures[0]`` -> GGUF architecture, as the converters register them.
HF_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "DeepseekV2ForCausalLM": "deepseek2",
    "DeepseekV3ForCausalLM": "deepseek2",
    "Glm4MoeForCausalLM": "glm4moe",
    "GptOssForCausalLM": "gpt-oss",
    "BailingMoeV2ForCausalLM": "bailingmoe2",
    "Qwen3NextForCausalLM": "qwen3next",
}
#: HF ``model_type`` -> GGUF architecture (used when ``architectures`` is missing).
HF_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek2",
    "kimi_k2": "deepseek2",
    "glm4_moe": "glm4moe",
    "gpt_oss": "gpt-oss",
    "bailing_moe_v2": "bailingmoe2",
    "qwen3_next": "qwen3next",
}
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "qwen3moe", "deepseek2", "glm4moe", "gpt-oss", "bailingmoe2", "qwen3next")

Order = Literal["single_file", "sharded"]
#: The MTP ("NextN") block of GLM-4.x GGUFs (``inventory.NextN``): "full" with its own embed_tokens
#: and shared_head_head copies (1761 tensors for GLM-4.5/4.7), "shared" without them (the checkpoint
#: shares the main embeddings and head: GLM-4.6, 1759), "none" converted without it (--no-mtp).
NEXTN_VARIANTS: tuple[NextN, ...] = ("full", "shared", "none")

#: transformers' default ``max_shard_size`` ("5GB"): a checkpoint at most this big is one file.
_SINGLE_FILE_MAX_BYTES = 5 * 1000**3

# Estimate of the GGUF KV block: each token string costs an 8-byte length + its bytes + a
# 4-byte token type; each merge an 8-byte length + its bytes. The averages are those of
# SmolLM2's byte-level BPE vocabulary (7.5 and 8.5 bytes); large multilingual vocabularies
# run a little longer, which the shipped entries state for themselves.
_AVG_TOKEN_BYTES = 7.5
_AVG_MERGE_BYTES = 8.5
_KV_FIXED_BYTES = 2048  # general.* and <arch>.* scalars, special token ids


@dataclass(frozen=True, slots=True)
class _T:
    """One GGUF tensor the converter writes, with the HF name that triggers it."""

    hf: str  # HF tensor name (the sort key the converter's iteration order follows)
    name: str  # GGUF name
    shape: tuple[int, ...]  # ggml order
    f32: bool  # forced F32 by the converter's rules
    dtype: str | None = None  # a type the converter writes as it is (gpt-oss' MXFP4 experts)


# ---------------------------------------------------------------------------------------
# config access


class _Config:
    """``config.json`` values with errors that name the missing field."""

    def __init__(self, raw: Mapping[str, Any], *, source: str) -> None:
        self.raw = raw
        self.source = source

    def req(self, *keys: str) -> Any:
        for key in keys:
            value = self.raw.get(key)
            if value is not None:
                return value
        raise InventoryError(
            f"config.json lacks the field {keys[0]!r}",
            where=f"{self.source}: {keys[0]}",
            hint="give the model's complete config.json from Hugging Face",
        )

    def num(self, *keys: str) -> int:
        value = self.req(*keys)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InventoryError(
                f"config.json field {keys[0]!r} must be a non-negative integer, not {value!r}",
                where=f"{self.source}: {keys[0]}",
                hint="give the model's complete config.json from Hugging Face",
            )
        return value

    def opt(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value


def detect_arch(config: Mapping[str, Any], *, source: str) -> str:
    """The GGUF architecture the converters would choose for ``config``."""
    archs = config.get("architectures") or []
    if isinstance(archs, list):
        for hf_arch in archs:
            if hf_arch in HF_ARCHITECTURES:
                return HF_ARCHITECTURES[hf_arch]
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type]
    what = f"architectures {archs!r}" if archs else f"model_type {model_type!r}"
    raise InventoryError(
        f"cannot synthesize a tensor list for {what}",
        where=f"{source}: {'architectures' if archs else 'model_type'}",
        hint=(
            "supported: "
            + ", ".join(sorted(HF_ARCHITECTURES))
            + " (model_type "
            + ", ".join(sorted(HF_MODEL_TYPES))
            + "); for other models give a GGUF file or hf:// URL"
        ),
    )


# ---------------------------------------------------------------------------------------
# per-architecture tensor lists


def _mat(hf: str, name: str, *shape: int) -> _T:
    return _T(hf, name, tuple(shape), f32=False)


def _vec(hf: str, name: str, n: int) -> _T:
    return _T(hf, name, (n,), f32=True)


def _globals(c: _Config, hidden: int, vocab: int, *, tied: bool) -> tuple[list[_T], list[_T]]:
    """Token embeddings (first) and final norm + lm_head (last)."""
    head = [_mat("model.embed_tokens.weight", "token_embd.weight", hidden, vocab)]
    tail = [_vec("model.norm.weight", "output_norm.weight", hidden)]
    if not tied:
        tail.insert(0, _mat("lm_head.weight", "output.weight", hidden, vocab))
    return head, tail


def _dense_ffn(p: str, b: str, hidden: int, ff: int) -> list[_T]:
    return [
        _mat(f"{p}mlp.down_proj.weight", f"{b}ffn_down.weight", ff, hidden),
        _mat(f"{p}mlp.gate_proj.weight", f"{b}ffn_gate.weight", hidden, ff),
        _mat(f"{p}mlp.up_proj.weight", f"{b}ffn_up.weight", hidden, ff),
    ]


def _experts(p: str, b: str, hidden: int, ff: int, n: int) -> list[_T]:
    # The merged tensors are written when the last expert tensor of the layer is read:
    # after every "mlp.experts.<i>..." name and before "mlp.gate..." in sorted order.
    key = f"{p}mlp.experts.~"
    return [
        _mat(key, f"{b}ffn_down_exps.weight", ff, hidden, n),
        _mat(key, f"{b}ffn_gate_exps.weight", hidden, ff, n),
        _mat(key, f"{b}ffn_up_exps.weight", hidden, ff, n),
    ]


def _gqa_attention(
    p: str,
    b: str,
    hidden: int,
    n_head: int,
    n_kv: int,
    head_dim: int,
    *,
    qk_norm: bool,
    qkv_bias: bool,
    o_bias: bool = False,
) -> list[_T]:
    q, kv = n_head * head_dim, n_kv * head_dim
    out = [
        _mat(f"{p}self_attn.k_proj.weight", f"{b}attn_k.weight", hidden, kv),
        _mat(f"{p}self_attn.o_proj.weight", f"{b}attn_output.weight", q, hidden),
        _mat(f"{p}self_attn.q_proj.weight", f"{b}attn_q.weight", hidden, q),
        _mat(f"{p}self_attn.v_proj.weight", f"{b}attn_v.weight", hidden, kv),
    ]
    if qk_norm:
        out += [
            _vec(f"{p}self_attn.k_norm.weight", f"{b}attn_k_norm.weight", head_dim),
            _vec(f"{p}self_attn.q_norm.weight", f"{b}attn_q_norm.weight", head_dim),
        ]
    if qkv_bias:
        out += [
            _vec(f"{p}self_attn.k_proj.bias", f"{b}attn_k.bias", kv),
            _vec(f"{p}self_attn.q_proj.bias", f"{b}attn_q.bias", q),
            _vec(f"{p}self_attn.v_proj.bias", f"{b}attn_v.bias", kv),
        ]
    if o_bias:
        out.append(_vec(f"{p}self_attn.o_proj.bias", f"{b}attn_output.bias", hidden))
    return out


@dataclass
class _Synth:
    arch: str
    layout: Layout | None
    hparams: dict[str, int | float | bool | str]
    head: list[_T]
    blocks: list[list[_T]]
    tail: list[_T]


def _common_hparams(
    c: _Config, *, n_blocks: int, hidden: int, n_head: int, n_kv: int, vocab: int
) -> dict[str, Any]:
    hp: dict[str, Any] = {
        "block_count": n_blocks,
        "embedding_length": hidden,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_kv,
        "vocab_size": vocab,
    }
    if (ctx := c.opt("max_position_embeddings")) is not None:
        hp["context_length"] = int(ctx)
    if (ff := c.opt("intermediate_size")) is not None:
        hp["feed_forward_length"] = int(ff)
    if (theta := c.opt("rope_theta")) is not None:
        hp["rope.freq_base"] = float(theta)
    if (eps := c.opt("rms_norm_eps")) is not None:
        hp["attention.layer_norm_rms_epsilon"] = float(eps)
    if (used := c.opt("num_experts_per_tok")) is not None:
        hp["expert_used_count"] = int(used)
    return hp


def _synth_dense(c: _Config, arch: str) -> _Synth:
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    ff = c.num("intermediate_size")
    vocab = c.num("vocab_size")
    head_dim = int(c.opt("head_dim", hidden // n_head if n_head else 0))
    tied = bool(c.opt("tie_word_embeddings", False))
    qk_norm = arch == "qwen3"
    qkv_bias = arch == "qwen2" or (arch == "llama" and bool(c.opt("attention_bias", False)))
    o_bias = arch == "llama" and bool(c.opt("attention_bias", False))
    head, tail = _globals(c, hidden, vocab, tied=tied)
    rope = c.opt("rope_scaling")
    if arch == "llama" and isinstance(rope, dict) and str(rope.get("rope_type", "")).lower() == "llama3":
        # LlamaModel.generate_extra_tensors: the llama3 frequency factors, written first.
        head.insert(0, _vec("", "rope_freqs.weight", head_dim // 2))
    blocks = []
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        blocks.append(
            [
                _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
                _vec(f"{p}post_attention_layernorm.weight", f"{b}ffn_norm.weight", hidden),
                *_dense_ffn(p, b, hidden, ff),
                *_gqa_attention(
                    p, b, hidden, n_head, n_kv, head_dim, qk_norm=qk_norm, qkv_bias=qkv_bias, o_bias=o_bias
                ),
            ]
        )
    hp = _common_hparams(c, n_blocks=n_layer, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp["attention.key_length"] = head_dim
    hp["attention.value_length"] = head_dim
    hp["rope.dimension_count"] = head_dim
    return _Synth(arch, None, hp, head, blocks, tail)


def _synth_qwen3moe(c: _Config) -> _Synth:
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    vocab = c.num("vocab_size")
    n_exp = c.num("num_experts")
    moe_ff = c.num("moe_intermediate_size")
    head_dim = int(c.opt("head_dim", hidden // n_head if n_head else 0))
    if c.opt("mlp_only_layers") or int(c.opt("decoder_sparse_step", 1)) != 1:
        raise InventoryError(
            "qwen3moe with dense layers (mlp_only_layers / decoder_sparse_step) is not supported by llama.cpp",
            where=f"{c.source}: mlp_only_layers",
            hint="give the GGUF itself if one exists",
        )
    head, tail = _globals(c, hidden, vocab, tied=bool(c.opt("tie_word_embeddings", False)))
    blocks = []
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        blocks.append(
            [
                _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
                _vec(f"{p}post_attention_layernorm.weight", f"{b}ffn_norm.weight", hidden),
                _T(f"{p}mlp.gate.weight", f"{b}ffn_gate_inp.weight", (hidden, n_exp), f32=True),
                *_experts(p, b, hidden, moe_ff, n_exp),
                *_gqa_attention(p, b, hidden, n_head, n_kv, head_dim, qk_norm=True, qkv_bias=False),
            ]
        )
    hp = _common_hparams(c, n_blocks=n_layer, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp.update(
        {
            "expert_count": n_exp,
            "expert_feed_forward_length": moe_ff,
            "attention.key_length": head_dim,
            "attention.value_length": head_dim,
            "rope.dimension_count": head_dim,
        }
    )
    return _Synth("qwen3moe", None, hp, head, blocks, tail)


def _moe_shared_block(
    c: _Config, p: str, b: str, hidden: int, *, n_exp: int, moe_ff: int, n_shared: int, score_bias: bool
) -> list[_T]:
    out = [
        _T(f"{p}mlp.gate.weight", f"{b}ffn_gate_inp.weight", (hidden, n_exp), f32=True),
        *_experts(p, b, hidden, moe_ff, n_exp),
    ]
    if score_bias:
        # "e_score_correction_bias" is renamed "e_score_correction.bias": not ".weight" -> F32.
        out.append(_vec(f"{p}mlp.gate.e_score_correction_bias", f"{b}exp_probs_b.bias", n_exp))
    if n_shared:
        sh = moe_ff * n_shared
        out += [
            _mat(f"{p}mlp.shared_experts.down_proj.weight", f"{b}ffn_down_shexp.weight", sh, hidden),
            _mat(f"{p}mlp.shared_experts.gate_proj.weight", f"{b}ffn_gate_shexp.weight", hidden, sh),
            _mat(f"{p}mlp.shared_experts.up_proj.weight", f"{b}ffn_up_shexp.weight", hidden, sh),
        ]
    return out


def _synth_deepseek2(c: _Config, layout: Layout) -> _Synth:
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    vocab = c.num("vocab_size")
    kv_lora = c.num("kv_lora_rank")
    q_lora = c.opt("q_lora_rank")
    nope = c.num("qk_nope_head_dim")
    rope = c.num("qk_rope_head_dim")
    v_dim = c.num("v_head_dim")
    ff = c.num("intermediate_size")
    n_exp = int(c.opt("n_routed_experts", 0))
    moe_ff = c.num("moe_intermediate_size") if n_exp else 0
    n_shared = int(c.opt("n_shared_experts", 0))
    first_dense = int(c.opt("first_k_dense_replace", 0 if n_exp else n_layer))
    freq = int(c.opt("moe_layer_freq", 1)) or 1
    # DeepSeek-V3's router has a score-correction bias (topk_method "noaux_tc"); V2's has not.
    topk = c.opt("topk_method")
    score_bias = topk == "noaux_tc" or (topk is None and c.opt("model_type") in ("deepseek_v3", "kimi_k2"))
    head, tail = _globals(c, hidden, vocab, tied=bool(c.opt("tie_word_embeddings", False)))
    blocks = []
    # MTP layers (index >= num_hidden_layers) are skipped by both converters.
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t = [
            _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
            _vec(f"{p}post_attention_layernorm.weight", f"{b}ffn_norm.weight", hidden),
            _vec(f"{p}self_attn.kv_a_layernorm.weight", f"{b}attn_kv_a_norm.weight", kv_lora),
            _mat(
                f"{p}self_attn.kv_a_proj_with_mqa.weight", f"{b}attn_kv_a_mqa.weight", hidden, kv_lora + rope
            ),
            _mat(f"{p}self_attn.o_proj.weight", f"{b}attn_output.weight", n_head * v_dim, hidden),
        ]
        kvb = f"{p}self_attn.kv_b_proj.weight"
        if layout == "legacy":
            # Both converters before MLA (spring 2025): kv_b as it is, the engine splits it at load.
            t.append(_mat(kvb, f"{b}attn_kv_b.weight", kv_lora, n_kv * (nope + v_dim)))
        elif layout == "ik":
            # ik keeps kv_b and adds k_b (transposed) and v_b flattened to 2-D.
            t += [
                _mat(kvb, f"{b}attn_kv_b.weight", kv_lora, n_kv * (nope + v_dim)),
                _mat(kvb, f"{b}attn_k_b.weight", nope, n_kv * kv_lora),
                _mat(kvb, f"{b}attn_v_b.weight", kv_lora, n_kv * v_dim),
            ]
        else:
            t += [
                _mat(kvb, f"{b}attn_k_b.weight", nope, kv_lora, n_kv),
                _mat(kvb, f"{b}attn_v_b.weight", kv_lora, v_dim, n_kv),
            ]
        if q_lora:
            t += [
                _vec(f"{p}self_attn.q_a_layernorm.weight", f"{b}attn_q_a_norm.weight", int(q_lora)),
                _mat(f"{p}self_attn.q_a_proj.weight", f"{b}attn_q_a.weight", hidden, int(q_lora)),
                _mat(
                    f"{p}self_attn.q_b_proj.weight",
                    f"{b}attn_q_b.weight",
                    int(q_lora),
                    n_head * (nope + rope),
                ),
            ]
        else:
            t.append(_mat(f"{p}self_attn.q_proj.weight", f"{b}attn_q.weight", hidden, n_head * (nope + rope)))
        if n_exp and i >= first_dense and i % freq == 0:
            t += _moe_shared_block(
                c, p, b, hidden, n_exp=n_exp, moe_ff=moe_ff, n_shared=n_shared, score_bias=score_bias
            )
        else:
            t += _dense_ffn(p, b, hidden, ff)
        blocks.append(t)
    hp = _common_hparams(c, n_blocks=n_layer, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp.update(
        {
            "leading_dense_block_count": first_dense,
            "attention.kv_lora_rank": kv_lora,
            "rope.dimension_count": rope,
            "expert_feed_forward_length": moe_ff or ff,
            "expert_count": n_exp,
            "expert_shared_count": n_shared,
        }
    )
    if q_lora:
        hp["attention.q_lora_rank"] = int(q_lora)
    if layout == "mainline":
        # Mainline writes MLA as MQA over the compressed cache: one KV head of 576/512.
        hp["attention.head_count_kv"] = 1
        hp["attention.key_length"] = kv_lora + rope
        hp["attention.value_length"] = kv_lora
        hp["attention.key_length_mla"] = nope + rope
        hp["attention.value_length_mla"] = v_dim
    else:
        hp["attention.key_length"] = nope + rope
        hp["attention.value_length"] = v_dim
    if (scale := c.opt("routed_scaling_factor")) is not None:
        hp["expert_weights_scale"] = float(scale)
    if c.opt("norm_topk_prob") is not None:
        hp["expert_weights_norm"] = bool(c.opt("norm_topk_prob"))
    gating = {"softmax": 1, "sigmoid": 2}.get(str(c.opt("scoring_func", "")))
    if gating is not None:
        hp["expert_gating_func"] = gating
    return _Synth("deepseek2", layout, hp, head, blocks, tail)


def _synth_glm4moe(c: _Config, nextn: NextN) -> _Synth:
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_nextn = 0 if nextn == "none" else int(c.opt("num_nextn_predict_layers", 0))
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    vocab = c.num("vocab_size")
    ff = c.num("intermediate_size")
    n_exp = c.num("n_routed_experts")
    moe_ff = c.num("moe_intermediate_size")
    n_shared = int(c.opt("n_shared_experts", 0))
    first_dense = int(c.opt("first_k_dense_replace", 0))
    head_dim = int(c.opt("head_dim", hidden // n_head if n_head else 0))
    qk_norm = bool(c.opt("use_qk_norm", False))
    bias = bool(c.opt("attention_bias", False))
    head, tail = _globals(c, hidden, vocab, tied=bool(c.opt("tie_word_embeddings", False)))
    blocks = []
    # GLM4_MOE writes num_hidden_layers + nextn blocks; the MTP block is a full MoE layer
    # plus the nextn projection, its own embeddings and head.
    for i in range(n_layer + n_nextn):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t = [
            _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
            _vec(f"{p}post_attention_layernorm.weight", f"{b}post_attention_norm.weight", hidden),
            *_gqa_attention(p, b, hidden, n_head, n_kv, head_dim, qk_norm=qk_norm, qkv_bias=bias),
        ]
        if i >= first_dense:
            t += _moe_shared_block(
                c, p, b, hidden, n_exp=n_exp, moe_ff=moe_ff, n_shared=n_shared, score_bias=True
            )
        else:
            t += _dense_ffn(p, b, hidden, ff)
        if i >= n_layer:
            t += [
                _mat(f"{p}eh_proj.weight", f"{b}nextn.eh_proj.weight", 2 * hidden, hidden),
                _vec(f"{p}enorm.weight", f"{b}nextn.enorm.weight", hidden),
                _vec(f"{p}hnorm.weight", f"{b}nextn.hnorm.weight", hidden),
                _vec(f"{p}shared_head.norm.weight", f"{b}nextn.shared_head_norm.weight", hidden),
            ]
            if nextn == "full":
                # Checkpoints that store the MTP layer's own copies of the embeddings and head
                # (GLM-4.5, GLM-4.7); GLM-4.6's shares model.embed_tokens / lm_head instead.
                t += [
                    _mat(f"{p}embed_tokens.weight", f"{b}nextn.embed_tokens.weight", hidden, vocab),
                    _mat(f"{p}shared_head.head.weight", f"{b}nextn.shared_head_head.weight", hidden, vocab),
                ]
        blocks.append(t)
    hp = _common_hparams(c, n_blocks=n_layer + n_nextn, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp.update(
        {
            "rope.dimension_count": int(head_dim * float(c.opt("partial_rotary_factor", 0.5))),
            "attention.key_length": head_dim,
            "attention.value_length": head_dim,
            "expert_count": n_exp,
            "expert_feed_forward_length": moe_ff,
            "expert_shared_count": n_shared,
            "leading_dense_block_count": first_dense,
            "expert_gating_func": 2,
            "nextn_predict_layers": n_nextn,
        }
    )
    if (scale := c.opt("routed_scaling_factor")) is not None:
        hp["expert_weights_scale"] = float(scale)
    if c.opt("norm_topk_prob") is not None:
        hp["expert_weights_norm"] = bool(c.opt("norm_topk_prob"))
    return _Synth("glm4moe", None, hp, head, blocks, tail)


def _synth_gpt_oss(c: _Config) -> _Synth:
    """gpt-oss (convert_hf_to_gguf GptOssModel; llama.cpp src/models/openai-moe.cpp,
    ik_llama.cpp LLM_ARCH_OPENAI_MOE): MXFP4 experts written as they are, before everything else
    (``generate_extra_tensors``), q/k/v/o biases, per-head attention sinks."""
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    head_dim = int(c.opt("head_dim", hidden // n_head if n_head else 0))
    ff = c.num("intermediate_size")
    n_exp = c.num("num_local_experts", "num_experts")
    vocab = c.num("vocab_size")
    experts: list[_T] = []
    for i in range(n_layer):
        b = f"blk.{i}."
        experts += [
            _T("", f"{b}ffn_down_exps.weight", (ff, hidden, n_exp), f32=False, dtype="mxfp4"),
            _T("", f"{b}ffn_gate_exps.weight", (hidden, ff, n_exp), f32=False, dtype="mxfp4"),
            _T("", f"{b}ffn_up_exps.weight", (hidden, ff, n_exp), f32=False, dtype="mxfp4"),
        ]
    head, tail = _globals(c, hidden, vocab, tied=bool(c.opt("tie_word_embeddings", False)))
    head = [*experts, *head]
    blocks = []
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t = [
            _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
            _vec(f"{p}post_attention_layernorm.weight", f"{b}post_attention_norm.weight", hidden),
            *_gqa_attention(p, b, hidden, n_head, n_kv, head_dim, qk_norm=False, qkv_bias=True, o_bias=True),
            _vec(f"{p}self_attn.sinks", f"{b}attn_sinks.weight", n_head),
            _T(f"{p}mlp.router.weight", f"{b}ffn_gate_inp.weight", (hidden, n_exp), f32=True),
            _vec(f"{p}mlp.router.bias", f"{b}ffn_gate_inp.bias", n_exp),
            _T(f"{p}mlp.experts.down_proj_bias", f"{b}ffn_down_exps.bias", (hidden, n_exp), f32=True),
            _T(f"{p}mlp.experts.gate_up_proj_bias", f"{b}ffn_gate_exps.bias", (ff, n_exp), f32=True),
            _T(f"{p}mlp.experts.gate_up_proj_bias", f"{b}ffn_up_exps.bias", (ff, n_exp), f32=True),
        ]
        blocks.append(t)
    hp = _common_hparams(c, n_blocks=n_layer, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp.update({
        "expert_count": n_exp,
        "expert_feed_forward_length": ff,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "rope.dimension_count": head_dim,
    })  # fmt: skip
    if (used := c.opt("experts_per_token", c.opt("num_experts_per_tok"))) is not None:
        hp["expert_used_count"] = int(used)
    if (window := c.opt("sliding_window")) is not None:
        hp["attention.sliding_window"] = int(window)
    return _Synth("gpt-oss", None, hp, head, blocks, tail)


def _synth_bailingmoe2(c: _Config, nextn: NextN) -> _Synth:
    """Ling 2.0 / Ring (convert_hf_to_gguf BailingMoeV2Model; llama.cpp src/models/bailingmoe2.cpp):
    fused qkv, q/k norms, leading dense layers, sigmoid routing with an expert bias, a shared
    expert, and NextN (MTP) layers after the main ones."""
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_nextn = 0 if nextn == "none" else int(c.opt("num_nextn_predict_layers", 0))
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    head_dim = int(c.opt("head_dim", hidden // n_head if n_head else 0))
    ff = c.num("intermediate_size")
    n_exp = c.num("num_experts", "num_local_experts")
    moe_ff = c.num("moe_intermediate_size")
    n_shared = int(c.opt("num_shared_experts", 0))
    sh_ff = int(c.opt("moe_shared_expert_intermediate_size", moe_ff * n_shared))
    first_dense = int(c.opt("first_k_dense_replace", 0))
    vocab = c.num("vocab_size")
    head = [_mat("model.word_embeddings.weight", "token_embd.weight", hidden, vocab)]
    tail = [_vec("model.norm.weight", "output_norm.weight", hidden)]
    if not bool(c.opt("tie_word_embeddings", False)):
        tail.insert(0, _mat("lm_head.weight", "output.weight", hidden, vocab))
    blocks = []
    for i in range(n_layer + n_nextn):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t = [
            _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
            _mat(f"{p}attention.query_key_value.weight", f"{b}attn_qkv.weight", hidden,
                 (n_head + 2 * n_kv) * head_dim),
            _mat(f"{p}attention.dense.weight", f"{b}attn_output.weight", n_head * head_dim, hidden),
            _vec(f"{p}attention.query_layernorm.weight", f"{b}attn_q_norm.weight", head_dim),
            _vec(f"{p}attention.key_layernorm.weight", f"{b}attn_k_norm.weight", head_dim),
            _vec(f"{p}post_attention_layernorm.weight", f"{b}ffn_norm.weight", hidden),
        ]  # fmt: skip
        if i >= first_dense:
            t += [
                _T(f"{p}mlp.gate.weight", f"{b}ffn_gate_inp.weight", (hidden, n_exp), f32=True),
                _vec(f"{p}mlp.gate.expert_bias", f"{b}exp_probs_b.bias", n_exp),
                *_experts(p, b, hidden, moe_ff, n_exp),
            ]
            if n_shared:
                t += [
                    _mat(f"{p}mlp.shared_experts.down_proj.weight", f"{b}ffn_down_shexp.weight", sh_ff, hidden),
                    _mat(f"{p}mlp.shared_experts.gate_proj.weight", f"{b}ffn_gate_shexp.weight", hidden, sh_ff),
                    _mat(f"{p}mlp.shared_experts.up_proj.weight", f"{b}ffn_up_shexp.weight", hidden, sh_ff),
                ]
        else:
            t += _dense_ffn(p, b, hidden, ff)
        if i >= n_layer:
            t += [
                _mat(f"{p}eh_proj.weight", f"{b}nextn.eh_proj.weight", 2 * hidden, hidden),
                _vec(f"{p}enorm.weight", f"{b}nextn.enorm.weight", hidden),
                _vec(f"{p}hnorm.weight", f"{b}nextn.hnorm.weight", hidden),
                _vec(f"{p}final_layernorm.weight", f"{b}layer_output_norm.weight", hidden),
            ]
        blocks.append(t)
    hp = _common_hparams(c, n_blocks=n_layer + n_nextn, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp.update({
        "rope.dimension_count": int(head_dim * float(c.opt("partial_rotary_factor", 0.5))),
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "leading_dense_block_count": first_dense,
        "expert_count": n_exp,
        "expert_feed_forward_length": moe_ff,
        "expert_shared_feed_forward_length": sh_ff,
        "expert_shared_count": n_shared,
        "expert_gating_func": 2,
    })  # fmt: skip
    if (scale := c.opt("routed_scaling_factor")) is not None:
        hp["expert_weights_scale"] = float(scale)
    if c.opt("norm_topk_prob") is not None:
        hp["expert_weights_norm"] = bool(c.opt("norm_topk_prob"))
    if (groups := c.opt("n_group")) is not None:
        hp["expert_group_count"] = int(groups)
    if (used_groups := c.opt("topk_group")) is not None:
        hp["expert_group_used_count"] = int(used_groups)
    if n_nextn:
        hp["nextn_predict_layers"] = n_nextn
    return _Synth("bailingmoe2", None, hp, head, blocks, tail)


def _synth_qwen3next(c: _Config) -> _Synth:
    """Qwen3-Next (convert_hf_to_gguf Qwen3NextModel; llama.cpp src/models/qwen3next.cpp): every
    ``full_attention_interval``-th layer full gated attention, the others Gated DeltaNet linear
    attention (qkv/gate projections, short conv, per-head A and dt), all MoE with a gated shared expert."""
    hidden = c.num("hidden_size")
    n_layer = c.num("num_hidden_layers")
    n_head = c.num("num_attention_heads")
    n_kv = int(c.opt("num_key_value_heads", n_head))
    head_dim = int(c.opt("head_dim", hidden // n_head if n_head else 0))
    n_exp = c.num("num_experts")
    moe_ff = c.num("moe_intermediate_size")
    sh_ff = int(c.opt("shared_expert_intermediate_size", 0))
    vocab = c.num("vocab_size")
    interval = int(c.opt("full_attention_interval", 4)) or 4
    k_heads, v_heads = c.num("linear_num_key_heads"), c.num("linear_num_value_heads")
    k_dim, v_dim = c.num("linear_key_head_dim"), c.num("linear_value_head_dim")
    conv = int(c.opt("linear_conv_kernel_dim", 4))
    key_dim, value_dim = k_dim * k_heads, v_dim * v_heads
    head, tail = _globals(c, hidden, vocab, tied=bool(c.opt("tie_word_embeddings", False)))
    blocks = []
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t = [
            _vec(f"{p}input_layernorm.weight", f"{b}attn_norm.weight", hidden),
            _vec(f"{p}post_attention_layernorm.weight", f"{b}post_attention_norm.weight", hidden),
            _T(f"{p}mlp.gate.weight", f"{b}ffn_gate_inp.weight", (hidden, n_exp), f32=True),
            *_experts(p, b, hidden, moe_ff, n_exp),
            _T(f"{p}mlp.shared_expert_gate.weight", f"{b}ffn_gate_inp_shexp.weight", (hidden,), f32=True),
            _mat(f"{p}mlp.shared_expert.down_proj.weight", f"{b}ffn_down_shexp.weight", sh_ff, hidden),
            _mat(f"{p}mlp.shared_expert.gate_proj.weight", f"{b}ffn_gate_shexp.weight", hidden, sh_ff),
            _mat(f"{p}mlp.shared_expert.up_proj.weight", f"{b}ffn_up_shexp.weight", hidden, sh_ff),
        ]
        if (i + 1) % interval == 0:
            # full attention: q carries its output gate (2 x n_head x head_dim)
            t += [
                _mat(f"{p}self_attn.q_proj.weight", f"{b}attn_q.weight", hidden, 2 * n_head * head_dim),
                _mat(f"{p}self_attn.k_proj.weight", f"{b}attn_k.weight", hidden, n_kv * head_dim),
                _mat(f"{p}self_attn.v_proj.weight", f"{b}attn_v.weight", hidden, n_kv * head_dim),
                _mat(f"{p}self_attn.o_proj.weight", f"{b}attn_output.weight", n_head * head_dim, hidden),
                _vec(f"{p}self_attn.q_norm.weight", f"{b}attn_q_norm.weight", head_dim),
                _vec(f"{p}self_attn.k_norm.weight", f"{b}attn_k_norm.weight", head_dim),
            ]
        else:
            t += [
                _mat(f"{p}linear_attn.in_proj_qkvz.weight", f"{b}attn_qkv.weight", hidden, 2 * key_dim + value_dim),
                _mat(f"{p}linear_attn.in_proj_qkvz.weight", f"{b}attn_gate.weight", hidden, value_dim),
                _T(f"{p}linear_attn.conv1d.weight", f"{b}ssm_conv1d.weight", (conv, 2 * key_dim + value_dim), f32=True),
                _vec(f"{p}linear_attn.dt_bias", f"{b}ssm_dt.bias", v_heads),
                _vec(f"{p}linear_attn.A_log", f"{b}ssm_a", v_heads),
                _mat(f"{p}linear_attn.in_proj_ba.weight", f"{b}ssm_ba.weight", hidden, 2 * v_heads),
                _vec(f"{p}linear_attn.norm.weight", f"{b}ssm_norm.weight", v_dim),
                _mat(f"{p}linear_attn.out_proj.weight", f"{b}ssm_out.weight", value_dim, hidden),
            ]
        blocks.append(t)
    hp = _common_hparams(c, n_blocks=n_layer, hidden=hidden, n_head=n_head, n_kv=n_kv, vocab=vocab)
    hp.update({
        "expert_count": n_exp,
        "expert_feed_forward_length": moe_ff,
        "expert_shared_feed_forward_length": sh_ff,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "rope.dimension_count": int(head_dim * float(c.opt("partial_rotary_factor", 0.25))),
        "ssm.conv_kernel": conv,
        "ssm.state_size": k_dim,
        "ssm.group_count": k_heads,
        "ssm.time_step_rank": v_heads,
        "ssm.inner_size": value_dim,
        "full_attention_interval": interval,
    })  # fmt: skip
    return _Synth("qwen3next", None, hp, head, blocks, tail)


# ---------------------------------------------------------------------------------------
# ordering, dtypes, metadata estimate


def _ordered(s: _Synth, order: Order) -> Iterator[_T]:
    """The converter's emission order (see the module docstring)."""
    if order == "single_file":
        extra = [t for t in s.head if not t.hf]  # generated tensors come before the checkpoint's
        rest = [t for t in (*s.head, *(t for blk in s.blocks for t in blk), *s.tail) if t.hf]
        yield from extra
        # Stable sort: tensors split from one HF tensor keep the converter's order.
        yield from sorted(rest, key=lambda t: t.hf)
        return
    yield from s.head
    for blk in s.blocks:
        yield from sorted(blk, key=lambda t: t.hf)
    yield from sorted(s.tail, key=lambda t: t.hf)


def _tensor_info_bytes(tensors: tuple[TensorEntry, ...]) -> int:
    # name (u64 length + bytes), n_dims u32, ne[] u64 each, type u32, offset u64
    return sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)


def estimate_metadata_bytes(
    tensors: tuple[TensorEntry, ...],
    *,
    vocab: int,
    merges: int | None = None,
    avg_token_bytes: float = _AVG_TOKEN_BYTES,
    avg_merge_bytes: float = _AVG_MERGE_BYTES,
    chat_template_bytes: int = 4096,
) -> int:
    """Estimated GGUF header size: KV block (estimated) + tensor infos (exact) + padding."""
    n_merges = max(vocab - 256, 0) if merges is None else merges
    kv = (
        24  # magic, version, tensor count, kv count
        + _KV_FIXED_BYTES
        + chat_template_bytes
        + round(vocab * (8 + avg_token_bytes + 4))
        + round(n_merges * (8 + avg_merge_bytes))
    )
    total = kv + _tensor_info_bytes(tensors)
    return -(-total // GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT


def synthesize_inventory(
    config: Mapping[str, Any],
    *,
    engine: Layout,
    source: str,
    dtype: str = "bf16",
    order: Order | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    nextn: NextN = "full",
) -> TensorInventory:
    """The GGUF tensor inventory ``engine``'s converter would write for ``config`` (for deepseek2
    also "legacy": either converter before MLA, attn_kv_b only).

    ``dtype`` is the checkpoint's type for tensors the converter does not force to F32.
    ``order``: ``"single_file"`` (one safetensors file: sorted by HF name), ``"sharded"``
    (layer-major), or None to guess from the size (transformers writes one file up to 5 GB).
    ``tokenizer`` may give ``merges``, ``avg_token_bytes``, ``avg_merge_bytes`` and
    ``chat_template_bytes`` for the metadata estimate.
    """
    if not isinstance(config, Mapping):
        raise InventoryError(
            "config.json is not a JSON object", where=source, hint="give the model's config.json"
        )
    text_config = config.get("text_config")
    if "hidden_size" not in config and isinstance(text_config, Mapping):
        raise InventoryError(
            "multimodal configs (text_config) are not supported",
            where=f"{source}: text_config",
            hint="give the text model's config.json, or the GGUF itself",
        )
    c = _Config(config, source=source)
    arch = detect_arch(config, source=source)
    if arch in ("llama", "qwen2", "qwen3"):
        s = _synth_dense(c, arch)
    elif arch == "qwen3moe":
        s = _synth_qwen3moe(c)
    elif arch == "deepseek2":
        s = _synth_deepseek2(c, engine)
    elif arch == "gpt-oss":
        s = _synth_gpt_oss(c)
    elif arch == "bailingmoe2":
        s = _synth_bailingmoe2(c, nextn)
    elif arch == "qwen3next":
        s = _synth_qwen3next(c)
    else:
        s = _synth_glm4moe(c, nextn)
    all_t = [*s.head, *(t for blk in s.blocks for t in blk), *s.tail]
    if order is None:
        n_bytes = sum(_numel(t.shape) * (4 if t.f32 else 2) for t in all_t)
        order = "single_file" if n_bytes <= _SINGLE_FILE_MAX_BYTES else "sharded"
    # model_construct: the fields are built here from checked ints and fixed names, and
    # skipping validation keeps a 1,800-tensor inventory at a few milliseconds.
    tensors = tuple(
        TensorEntry.model_construct(
            name=t.name,
            shape=t.shape,
            dtype=t.dtype or ("f32" if (t.f32 or t.name.endswith("_norm.weight")) else dtype),
            shard=0,
        )
        for t in _ordered(s, order)
    )
    vocab = int(s.hparams["vocab_size"])
    tok = dict(tokenizer or {})
    meta = estimate_metadata_bytes(
        tensors,
        vocab=vocab,
        merges=tok.get("merges"),
        avg_token_bytes=float(tok.get("avg_token_bytes", _AVG_TOKEN_BYTES)),
        avg_merge_bytes=float(tok.get("avg_merge_bytes", _AVG_MERGE_BYTES)),
        chat_template_bytes=int(tok.get("chat_template_bytes", 4096)),
    )
    return TensorInventory(
        source=source,
        arch=s.arch,
        layout=s.layout,
        hparams=s.hparams,
        tensors=tensors,
        kv=None,
        metadata_bytes=meta,
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _read_json(path: Path, *, what: str) -> Any:
    from quantforge.paths import MAX_JSON_BYTES, read_input_json

    if not path.exists() and not path.is_symlink():
        raise InventoryError(f"{what} not found", where=str(path), hint="check the path")
    return read_input_json(path, what=what, max_bytes=MAX_JSON_BYTES, error=InventoryError)


def inventory_from_config_file(path: str | Path, *, engine: Layout, nextn: NextN | None = None) -> TensorInventory:
    """Synthesize the inventory of a user-given ``config.json``.

    The order follows the files beside it: ``model.safetensors`` (one file) or an index
    (sharded); without either, the size decides.
    """
    p = Path(path)
    config = _read_json(p, what="config.json")
    order: Order | None = None
    if (p.parent / "model.safetensors.index.json").is_file():
        order = "sharded"
    elif (p.parent / "model.safetensors").is_file():
        order = "single_file"
    return synthesize_inventory(config, engine=engine, source=str(p), order=order, nextn=nextn or "full")


# ---------------------------------------------------------------------------------------
# shipped models


@dataclass(frozen=True)
class ShippedModel:
    """A model whose trimmed config.json ships with quantforge."""

    id: str
    aliases: tuple[str, ...]
    config: dict[str, Any]
    dtype: str
    order: Order
    tokenizer: dict[str, Any]
    file: Path
    #: The NextN variant of the published BF16 GGUF (GLM-4.x), when the model has an MTP block.
    nextn: NextN = "full"


@lru_cache(maxsize=1)
def shipped_models() -> dict[str, ShippedModel]:
    """Every shipped model, keyed by lower-cased HF id and alias."""
    out: dict[str, ShippedModel] = {}
    for f in sorted(MODELS_DIR.glob("*.json")):
        raw = _read_json(f, what="shipped model config")
        meta = raw.get("quantforge", {})
        config = {k: v for k, v in raw.items() if k != "quantforge"}
        m = ShippedModel(
            id=meta["id"],
            aliases=tuple(meta.get("aliases", ())),
            config=config,
            dtype=meta.get("dtype", "bf16"),
            order=meta.get("order", "sharded"),
            tokenizer=dict(meta.get("tokenizer", {})),
            file=f,
            nextn=meta.get("nextn", "full"),
        )
        for key in (m.id, *m.aliases):
            out[key.lower()] = m
    return out


def shipped_ids() -> list[str]:
    """The primary HF ids of the shipped models, sorted."""
    return sorted({m.id for m in shipped_models().values()})


def _default_layout(engine: Engine | None) -> Layout:
    # The mainline layout loads in both engines; ik callers pass engine="ik".
    return engine or "mainline"


@lru_cache(maxsize=64)
def _shipped_cached(key: str, layout: Layout, nextn: NextN | None) -> TensorInventory:
    m = shipped_models()[key]
    return synthesize_inventory(
        m.config, engine=layout, source=m.id, dtype=m.dtype, order=m.order, tokenizer=m.tokenizer,
        nextn=nextn or m.nextn,
    )  # fmt: skip


def shipped_inventory(
    model_id: str, *, engine: Engine | None = None, layout: Layout | None = None, nextn: NextN | None = None
) -> TensorInventory:
    """The offline inventory of a shipped model, by Hugging Face id (or alias), cached.

    ``layout`` picks the converter layout where the engines differ (deepseek2); without it the
    ``engine``'s usual layout, and with neither the mainline layout, which both engines load.
    """
    key = model_id.strip().removeprefix("hf://").strip("/").lower()
    models = shipped_models()
    if key not in models:
        known = shipped_ids()
        names = sorted(models)
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.4)
        if not near:
            # Match on the repo name alone ("DeepSeek-R1-0528" for "deepseek-ai/DeepSeek-R1-0528").
            tail = key.rsplit("/", 1)[-1]
            near = [n for n in names if n.rsplit("/", 1)[-1] == tail] or difflib.get_close_matches(
                tail, names, n=1, cutoff=0.3
            )
        guess = f"did you mean {models[near[0]].id}? " if near else ""
        raise InventoryError(
            f"no shipped inventory for {model_id!r}",
            where=model_id,
            hint=f"{guess}shipped: {', '.join(known)}; or give a GGUF path, hf://org/repo/file.gguf, or a config.json",
        )
    return _shipped_cached(key, layout or _default_layout(engine), nextn)


__all__ = [
    "HF_ARCHITECTURES",
    "NEXTN_VARIANTS",
    "NextN",
    "HF_MODEL_TYPES",
    "SUPPORTED_ARCHS",
    "ShippedModel",
    "detect_arch",
    "estimate_metadata_bytes",
    "inventory_from_config_file",
    "shipped_ids",
    "shipped_inventory",
    "shipped_models",
    "synthesize_inventory",
]
