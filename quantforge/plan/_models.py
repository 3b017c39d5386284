"""The plan's models: what a variant expanded against an inventory is, tensor by tensor."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine

Group = Literal[
    "token_embd", "output", "attention", "shared_experts", "routed_experts", "dense_ffn", "norms", "other"
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class TensorPlan(BaseModel):
    """One tensor of the planned output."""

    model_config = _FROZEN

    name: str
    shape: tuple[int, ...]
    source_dtype: str
    requested_type: str | None  # what the rule/default asked for (None: never quantized)
    type: str  # what llama-quantize really writes (after fallbacks, _rN -> base)
    bytes: int
    rule: str  # "rules[3]" | "default" | "mixture" | "not quantized: 1-D" | ...
    note: str | None = None  # why type != requested_type
    place: Literal["cpu", "gpu"] | None = None
    group: Group
    layer: int | None = None


class QuantPlan(BaseModel):
    """A variant expanded against an inventory."""

    model_config = _FROZEN

    name: str
    engine: Engine
    ftype: str
    tensors: tuple[TensorPlan, ...]
    n_params: int
    tensor_bytes: int
    file_bytes: int | None
    file_bytes_exact: bool
    bpw: float  # tensor bits / total elements, as publishers print it
    quantize_args: list[str]  # rule arguments (--custom-q … / --tensor-type …) without paths
    header_bytes: int | None = None
    imatrix: str | None = None  # the imatrix path the size prediction assumed (its KV string)
    source: str | None = None
    #: ik's per-row metadata (the scales of iq4_ks, iq2_kl, ...) counted in ``tensor_bytes``;
    #: gguf-py's and Thireus' sizes leave it out.
    row_meta_bytes: int = 0

    @property
    def weight_bytes(self) -> int:
        """Tensor data without the per-row metadata (what gguf-py's ``GGML_QUANT_SIZES`` give)."""
        return self.tensor_bytes - self.row_meta_bytes


class LintFinding(BaseModel):
    model_config = _FROZEN

    severity: Literal["error", "warning"]
    code: str
    message: str
    where: str | None = None
    count: int = 0
    examples: tuple[str, ...] = ()


class CollapsedRow(BaseModel):
    """Tensors that differ only in their layer number, for the human view."""

    model_config = _FROZEN

    pattern: str  # "blk.[3-60].ffn_down_exps.weight" or a plain name
    count: int
    type: str
    requested_type: str | None
    bytes: int
    group: str
    note: str | None = None
