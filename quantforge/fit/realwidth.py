"""Real-width validation models: GGUFs with a big model's exact widths and only a few layers.

Compute buffers and KV caches depend on the widths (``n_embd``, heads, experts, vocabulary),
not on the number of layers or on the weights' values. A model with DeepSeek-V3's or
Qwen3-235B's real widths and three to five layers loads on one GPU, and everything the loaders
log per buffer can be compared with the planner at the widths users run.

The tensors are those of the shipped model's converter (``inventory_synth``, the same names,
shapes and order as the real BF16 GGUFs), cut to ``n_dense`` dense + ``n_moe`` MoE layers (plus
GLM's NextN layer when asked); 2-D weights are ``q8_0`` and routed experts ``q4_0`` (or the
types given), norms and router weights ``f32``. The tokenizer is synthetic (a SentencePiece
vocabulary of the real size: ``<unk>``, ``<s>``, ``</s>``, 256 byte tokens, then ``t<N>``).

The data is all zero bytes, which are valid blocks of every type (a zero scale), so the file is
written as its header and then extended with ``truncate``: a 15 GB model takes a few MB of disk
(sparse) and milliseconds to make, and reads as zeros. ``write_header`` writes only the header
(to carry to a machine without quantforge), ``extend_to_size`` is the ``truncate`` step.
"""

from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import InputError
from quantforge.fsutil import atomic_write_bytes
from quantforge.gguf_header import (
    DEFAULT_ALIGNMENT,
    GGUFHeader,
    GGUFTensorInfo,
    GGUFValue,
    ValueType,
    header_bytes,
    read_header,
)
from quantforge.inventory import TensorInventory
from quantforge.inventory_synth import MODELS_DIR, synthesize_inventory

U32, F32, BOOL = ValueType.UINT32, ValueType.FLOAT32, ValueType.BOOL
STR, ARR = ValueType.STRING, ValueType.ARRAY
I32 = ValueType.INT32

#: The shipped configs real-width models are made from (file stem under ``data/models``).
REALWIDTH_MODELS: dict[str, str] = {
    "deepseek-v3": "deepseek-ai--DeepSeek-V3-0324",
    "kimi-k2": "moonshotai--Kimi-K2-Instruct",
    "qwen3-235b": "Qwen--Qwen3-235B-A22B",
    "qwen3-30b": "Qwen--Qwen3-30B-A3B",
    "glm-4.5": "zai-org--GLM-4.5",
    "glm-4.5-air": "zai-org--GLM-4.5-Air",
}

# general.file_type of the result (LLAMA_FTYPE_MOSTLY_Q8_0); only informative.
_FTYPE_Q8_0 = 7


@dataclass(frozen=True)
class RealWidthSpec:
    """One validation model: which architecture, which layout, how many layers of each kind."""

    model: str  # key of REALWIDTH_MODELS
    layout: Engine = "ik"  # deepseek2: ik keeps attn_kv_b, mainline has 3-D k_b/v_b
    n_dense: int = 1
    n_moe: int = 2
    nextn: bool = False  # GLM: keep the NextN (MTP) layer the converters export
    expert_type: str = "q4_0"
    weight_type: str = "q8_0"

    @property
    def stem(self) -> str:
        parts = [self.model, self.layout, f"d{self.n_dense}m{self.n_moe}"]
        if self.nextn:
            parts.append("nextn")
        if (self.expert_type, self.weight_type) != ("q4_0", "q8_0"):
            parts.append(f"{self.weight_type}-{self.expert_type}")
        return "-".join(parts)


def _config(spec: RealWidthSpec) -> dict[str, object]:
    if spec.model not in REALWIDTH_MODELS:
        raise InputError(
            f"no real-width model {spec.model!r}", where="model",
            hint=f"use one of {', '.join(REALWIDTH_MODELS)}"
        )
    raw = json.loads((MODELS_DIR / f"{REALWIDTH_MODELS[spec.model]}.json").read_text())
    cfg: dict[str, object] = copy.deepcopy({k: v for k, v in raw.items() if k != "quantforge"})
    mt = str(cfg.get("model_type"))
    if spec.n_dense < 0 or spec.n_moe < 0 or spec.n_dense + spec.n_moe == 0:
        raise InputError("a real-width model needs at least one layer", where="n_dense/n_moe")
    cfg["num_hidden_layers"] = spec.n_dense + spec.n_moe
    if mt in ("deepseek_v3", "kimi_k2", "deepseek_v2", "glm4_moe"):
        cfg["first_k_dense_replace"] = spec.n_dense
    elif spec.n_dense:
        raise InputError(f"{spec.model} has no dense layers", where="n_dense", hint="use n_dense = 0")
    if mt == "glm4_moe":
        cfg["num_nextn_predict_layers"] = 1 if spec.nextn else 0
    return cfg


#: The models of the real-width GPU validation (``docs/gpu-logs/realwidth/runs.tsv`` names them by
#: these keys): DeepSeek-V3 in both layouts, Kimi-K2 in both, Qwen3-235B-A22B, Qwen3-30B-A3B,
#: GLM-4.5 with its NextN layer and GLM-4.5-Air.
VALIDATION_MODELS: dict[str, RealWidthSpec] = {
    "ds": RealWidthSpec("deepseek-v3", "ik", 1, 2),
    "dsm": RealWidthSpec("deepseek-v3", "mainline", 1, 2),
    "kimi": RealWidthSpec("kimi-k2", "ik", 1, 1),
    "kimim": RealWidthSpec("kimi-k2", "mainline", 1, 1),
    "q235": RealWidthSpec("qwen3-235b", "ik", 0, 3),
    "q30": RealWidthSpec("qwen3-30b", "ik", 0, 3),
    "glm": RealWidthSpec("glm-4.5", "ik", 1, 2, nextn=True),
    "air": RealWidthSpec("glm-4.5-air", "ik", 1, 2),
}

#: sha256 of the headers the GPU runs loaded (the data after them was all zeros): regenerating them
#: must give the same bytes.
VALIDATION_HEADER_SHA256: dict[str, str] = {
    "ds": "9068800aa219aecdfd2d75b92ece35429b4ff1beea44d4e5e1902963292be618",
    "dsm": "aaa623087a0eb307ba1479ddf318b8310d7271611c12e08c7f8ee34dd6fccb41",
    "kimi": "b24b0fb1cc306cfd362b9fd33770b8412de4d84da8289cf7ec60f59f7082c860",
    "kimim": "d78a3b23573b6d71a6063be639c53720cd3eb46ff10fe008a6264465fb055dbc",
    "q235": "af11402b6b653953e470d4d07bd55f1b5501f7c27733088c718d9739c6420027",
    "q30": "7b236061940c333b954e00dc25c1c5a71c068c0d07807a1de8a71dda5caf4bd3",
    "glm": "4678489dbdca07eaeeb07ba13511e2cb526606c762149edfbd07805c31248614",
    "air": "764f53f0ae54a31c9d1e570a9d6eda66f8935b90a3581597613ca99da49f9ed1",
}


def realwidth_inventory(spec: RealWidthSpec) -> TensorInventory:
    """The BF16 inventory of the cut model, as its converter would write it."""
    return synthesize_inventory(_config(spec), engine=spec.layout, source=spec.stem, order="sharded")


def _tensor_type(name: str, shape: tuple[int, ...], src_dtype: str, spec: RealWidthSpec) -> str:
    if src_dtype == "f32" or len(shape) == 1 or "ffn_gate_inp" in name:
        return "f32"
    if "_exps." in name:
        return spec.expert_type
    return spec.weight_type


def _value(v: int | float | bool | str) -> GGUFValue:
    if isinstance(v, bool):
        return GGUFValue.of(v, BOOL)
    if isinstance(v, int):
        return GGUFValue.of(v, U32)
    if isinstance(v, float):
        return GGUFValue.of(v, F32)
    return GGUFValue.of(v, STR)


def _tokenizer(n_vocab: int) -> list[tuple[str, GGUFValue]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(len(tokens), n_vocab)]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)
    return [
        ("tokenizer.ggml.model", GGUFValue.of("llama", STR)),
        ("tokenizer.ggml.tokens", GGUFValue.of(tokens, ARR, STR)),
        ("tokenizer.ggml.scores", GGUFValue.of([0.0] * n_vocab, ARR, F32)),
        ("tokenizer.ggml.token_type", GGUFValue.of(types, ARR, I32)),
        ("tokenizer.ggml.bos_token_id", GGUFValue.of(1, U32)),
        ("tokenizer.ggml.eos_token_id", GGUFValue.of(2, U32)),
        ("tokenizer.ggml.unknown_token_id", GGUFValue.of(0, U32)),
        ("tokenizer.ggml.add_bos_token", GGUFValue.of(True, BOOL)),
    ]


def _pad(n: int) -> int:
    return (n + DEFAULT_ALIGNMENT - 1) // DEFAULT_ALIGNMENT * DEFAULT_ALIGNMENT


def realwidth_layout(spec: RealWidthSpec) -> tuple[bytes, int, list[GGUFTensorInfo]]:
    """The header bytes, the whole file's size and the tensor infos of the model."""
    inv = realwidth_inventory(spec)
    cat = catalogue("ik")
    arch = inv.arch
    hp = dict(inv.hparams)
    n_vocab = int(hp["vocab_size"])
    kv: list[tuple[str, GGUFValue]] = [
        ("general.architecture", GGUFValue.of(arch, STR)),
        ("general.type", GGUFValue.of("model", STR)),
        ("general.name", GGUFValue.of(f"quantforge real-width {spec.stem}", STR)),
        ("general.file_type", GGUFValue.of(_FTYPE_Q8_0, U32)),
    ]
    for key, value in hp.items():
        kv.append((f"{arch}.{key}", _value(value)))
    if arch == "deepseek2":
        # keys the loaders read that config.json has no field for
        hp_keys = {k for k, _ in kv}
        if f"{arch}.expert_gating_func" not in hp_keys:
            kv.append((f"{arch}.expert_gating_func", GGUFValue.of(2, U32)))
    kv += _tokenizer(n_vocab)
    infos: list[GGUFTensorInfo] = []
    offset = 0
    for t in inv.tensors:
        tname = _tensor_type(t.name, tuple(t.shape), t.dtype, spec)
        qt = cat.get(tname)
        infos.append(GGUFTensorInfo(name=t.name, shape=tuple(t.shape), type_id=qt.type_id, offset=offset))
        offset += _pad(qt.tensor_bytes(t.shape))
    head = header_bytes(kv, infos, DEFAULT_ALIGNMENT)
    return head, len(head) + offset, infos


def write_header(spec: RealWidthSpec, path: str | os.PathLike[str], *, force: bool = False) -> int:
    """Write only the header of the model to ``path``; returns the size the whole file must have."""
    out = Path(path)
    if out.exists() and not force:
        raise InputError("refusing to overwrite an existing file", where=str(out), hint="pass force=True")
    head, size, _ = realwidth_layout(spec)
    atomic_write_bytes(out, head, what="model header")
    return size


def extend_to_size(path: str | os.PathLike[str], size: int) -> None:
    """Extend a header-only file to its full size with zero bytes (sparse where the filesystem can)."""
    with open(path, "r+b") as f:
        f.truncate(size)


def write_realwidth(spec: RealWidthSpec, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write the whole (sparse, zero-data) model to ``path``."""
    out = Path(path)
    size = write_header(spec, out, force=force)
    extend_to_size(out, size)
    return out


def realwidth_header(spec: RealWidthSpec) -> GGUFHeader:
    """The parsed header of the model (what the planner reads of it), without writing a file."""
    head, size, _ = realwidth_layout(spec)
    return read_header(io.BytesIO(head), size=size, where=spec.stem)
