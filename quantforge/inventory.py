"""Tensor inventories: what tensors a model has (names, ggml shapes, source dtypes, shards).

An inventory is read from a local GGUF (one file or a ``-0000K-of-0000N`` split set), from a
GGUF on Hugging Face (``hf://org/repo[@rev]/path.gguf``, only the header bytes fetched with
HTTP range requests), or, for an HF id or shipped name, synthesized by
``quantforge.inventory_synth``. Only the headers are ever read: inventories of 700 GB models
cost a few megabytes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# Same alias as ``quantforge.catalogue.Engine`` (the catalogue owns it); spelled here so the
# contract models import without loading the catalogue's tables.
Engine = Literal["ik", "mainline"]


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
    layout: Engine | None
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
