"""What the engines' graph builders share (``graphs.py`` for ik_llama.cpp, ``graphs_mainline.py``).

``ModelWeights`` names the weights a graph reads, ``GraphConfig`` the run settings that shape
it, and ``GraphBuilder`` creates the model's tensors and the inputs every architecture has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from quantforge.catalogue import Engine
from quantforge.fit.dims import ModelDims
from quantforge.fit.ggml_sim import Graph, Tensor

KQ_MASK_PAD = 16


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class WeightInfo:
    type: str
    shape: tuple[int, ...]
    buffer: str  # "w:CUDA0", "w:CPU", "w:CUDA_Host" ...
    row_meta: int = 0


@dataclass
class ModelWeights:
    """The weights a graph reads: ``weights[name]`` for every tensor of the layers built."""

    dims: ModelDims
    weights: Mapping[str, WeightInfo]
    kv_buffer: Mapping[int, str]  # layer -> "kv:CUDA0" / "kv:CPU"
    layout: Engine = "ik"  # deepseek2: which converter's tensors (ik keeps attn_kv_b, 2-D k_b/v_b)
    expert_weights_scale: float = 1.0  # routed-expert weight scale (DeepSeek-V3 2.5): a SCALE node when != 1
    expert_groups: int = 0  # mainline: expert_group_count (DeepSeek-V3 8) selects groups first
    expert_groups_used: int = 0


@dataclass(frozen=True)
class GraphConfig:
    n_tokens: int  # the u-batch
    n_kv: int  # the padded context
    flash_attn: bool
    type_k: str = "f16"
    type_v: str = "f16"
    mla: int = 0
    amb: int = 0  # ik -amb (MiB)
    n_outputs: int | None = None  # None: every token (the worst case)
    cpu_only: bool = False  # a build/run without GPU backends (ik casts MLA K/V to the cache type then)
    fused_moe: bool = True  # ik -fmoe (default on; -no-fmoe turns it off)


@dataclass
class Built:
    graph: Graph
    fixed: dict[int, int] = field(default_factory=dict)


class GraphBuilder:
    """What both engines' builders share: the model's tensors, the KV views, the common inputs."""

    def __init__(self, mw: ModelWeights, cfg: GraphConfig, engine: Engine) -> None:
        self.mw = mw
        self.d = mw.dims
        self.cfg = cfg
        self.g = Graph(engine)
        self.engine = engine
        self.T = cfg.n_tokens
        self.n_kv = cfg.n_kv
        self.n_out = cfg.n_outputs if cfg.n_outputs is not None else cfg.n_tokens
        self._w: dict[str, Tensor] = {}
        self._kv: dict[tuple[int, str], Tensor] = {}

    # ---- tensors of the model ------------------------------------------------------------
    def w(self, name: str) -> Tensor | None:
        t = self._w.get(name)
        if t is not None:
            return t
        info = self.mw.weights.get(name)
        if info is None:
            return None
        t = self.g.weight(name, info.type, *info.shape, buffer=info.buffer, row_meta=info.row_meta)
        self._w[name] = t
        return t

    def W(self, name: str) -> Tensor:  # noqa: N802 - a weight that must exist
        t = self.w(name)
        if t is None:
            raise KeyError(name)
        return t

    def kv(self, il: int, which: str, type_: str, *ne: int) -> Tensor:
        key = (il, which)
        t = self._kv.get(key)
        if t is None:
            t = Tensor(f"cache_{which}_l{il}", "NONE", type_, ne, buffer=self.mw.kv_buffer[il],
                       engine=self.engine)
            self._kv[key] = t
        return t

    # ---- common inputs --------------------------------------------------------------------
    def inp_embd(self) -> Tensor:
        g = self.g
        tok = g.input("i32", self.T, name="inp_tokens")
        return g.get_rows(self.W("token_embd.weight"), tok, name="inp_embd")

    def inp_pos(self) -> Tensor:
        return self.g.input("i32", self.T, name="inp_pos")

    def kq_mask(self) -> Tensor:
        t = "f16" if self.cfg.flash_attn else "f32"
        return self.g.input(t, self.n_kv, _pad(self.T, KQ_MASK_PAD), name="KQ_mask")

    def inp_out_ids(self) -> Tensor:
        return self.g.input("i32", self.n_out, name="inp_out_ids")
