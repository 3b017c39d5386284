"""The inventory stage's models: a model's tensors and the architecture facts later stages need.

Kept apart from the readers (``inventory.py``) and the synthesizer (``inventory_synth.py``),
which both build them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine

#: Converter layouts of MLA models (deepseek2): ik keeps attn_kv_b next to 2-D attn_k_b/attn_v_b,
#: mainline writes 3-D attn_k_b/attn_v_b only, legacy (both converters before MLA, spring 2025)
#: attn_kv_b only.
Layout = Literal["ik", "mainline", "legacy"]
#: GLM MTP-block variants (see inventory_synth.NextN).
NextN = Literal["full", "shared", "none"]


class TensorEntry(BaseModel):
    """One tensor of a model, as its GGUF header (or a synthesized listing) describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: ggml order: ne0 (the row length) first.
    shape: tuple[int, ...]
    #: Source type name in the catalogue's spelling ("bf16", "f32", "q4_1", "iq4_k").
    dtype: str
    #: 0-based shard index of a split set.
    shard: int = 0


class TensorInventory(BaseModel):
    """Every tensor of a model plus the architecture facts the planner and fit stages need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: A path, ``hf://org/repo/path.gguf``, or a shipped id.
    source: str
    #: ``general.architecture``: "llama", "deepseek2", "qwen3moe", "glm4moe", ...
    arch: str
    #: Converter layout where it matters (deepseek2: "ik" keeps ``attn_kv_b``), else None.
    layout: Layout | None
    hparams: dict[str, int | float | bool | str]
    tensors: tuple[TensorEntry, ...]
    #: The full GGUF KV of a real source (None when synthesized); needed for exact file bytes.
    kv: dict[str, Any] | None
    #: Size of the source header block (KV + tensor infos + padding) when known.
    metadata_bytes: int | None
    #: Bytes fetched over HTTP to read a remote source's headers (None for local/synthesized).
    bytes_fetched: int | None = None
    #: Number of files of a split set (1 for a single file).
    n_shards: int = 1
    #: The fork whose type ids a real GGUF uses (``gguf_header.detect_fork``): "ik" or "mainline"
    #: when something in the file belongs to one fork only, None when it reads the same in both.
    fork: Engine | None = None
    #: Why (``type id 139 (iq4_k) exists only in ik_llama.cpp`` ...).
    fork_evidence: tuple[str, ...] = ()
    #: Header block (KV + tensor infos + padding) of every shard of a real split set, in order;
    #: with the per-tensor padding this gives the exact bytes of the whole set.
    shard_metadata_bytes: tuple[int, ...] = ()

    def kv_value(self, key: str, default: Any = None) -> Any:
        """The plain value of a GGUF KV key of a real source (``kv`` holds typed ``GGUFValue``)."""
        if self.kv is None or key not in self.kv:
            return default
        v = self.kv[key]
        return v.plain() if hasattr(v, "plain") else v

    @property
    def n_params(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total
