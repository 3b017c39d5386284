"""The engines' compute graphs, rebuilt on ``ggml_sim`` to size compute buffers exactly.

Each builder writes the worst-case graph an engine reserves its compute buffers with (``n_tokens``
= the u-batch, ``n_kv`` = the whole cache, every token an output), in the engine's own node order:
the same ops, shapes, views and ``ggml_build_forward_expand`` calls as

* ik_llama.cpp at 8337e4cd3: ``build_qwen3moe`` / ``build_glm4_moe`` (``build_std_attention``,
  ``llm_build_kv``/``llm_build_kqv``, ``llm_build_std_moe_ffn``, ``llm_build_moe_ffn`` with the
  fused up/gate and multi-add ops, ``llm_build_ffn``), ``build_deepseek2`` (every MLA path:
  ``-mla 1/2/3``, with and without flash attention, the ``-amb`` head chunking) and ``build_llama``;
* llama.cpp (mainline, b11434): ``llm_build_qwen3moe``, ``llm_build_glm4_moe``,
  ``llm_build_deepseek2`` and ``llm_build_llama`` over ``llm_graph_context`` (``build_attn`` /
  ``build_attn_mha``, ``build_moe_ffn``, ``build_ffn``).

Only tensors matter here, not values; the graphs were checked node by node against the
``GGML_SCHED_DEBUG`` dumps of both engines (``docs/memory-validation.md``).

A model is given as ``ModelWeights``: the dims, and per layer the weight tensors that exist
(type, shape, buffer). Only the layers named in ``layers`` are built, which keeps the graphs small:
compute buffers depend on the kinds of layers present (dense / MoE, where their weights live, the
last layer), not on how many there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quantforge.catalogue import Engine
from quantforge.fit.dims import ModelDims
from quantforge.fit.ggml_sim import FLAG_OUTPUT, Graph, Tensor

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


class _Builder:
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
            t = Tensor(f"cache_{which}_l{il}", "NONE", type_, ne, buffer=self.mw.kv_buffer[il], engine=self.engine)
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


# =======================================================================================
# ik_llama.cpp


class IkBuilder(_Builder):
    def norm(self, x: Tensor, w: str, name: str) -> Tensor:
        return self.g.fused_rms_norm(x, self.W(w), name=name)

    # -- GQA attention (build_std_attention without graph split) ---------------------------
    def std_attention(self, il: int, inp: Tensor, inp_pos: Tensor, kq_mask: Tensor, out_ids: Tensor | None,
                      *, add_input: bool = True) -> Tensor:  # fmt: skip
        g, d, T = self.g, self.d, self.T
        b = f"blk.{il}."
        cur = self.norm(inp, b + "attn_norm.weight", f"attn_norm-{il}")
        q = g.mul_mat(self.W(b + "attn_q.weight"), cur, name=f"Qcur-{il}")
        k = g.mul_mat(self.W(b + "attn_k.weight"), cur, name=f"Kcur-{il}")
        v = g.mul_mat(self.W(b + "attn_v.weight"), cur, name=f"Vcur-{il}")
        g.expand(q)
        g.expand(k)
        g.expand(v)
        for name, ref in (("attn_q.bias", "q"), ("attn_k.bias", "k"), ("attn_v.bias", "v")):
            bias = self.w(b + name)
            if bias is None:
                continue
            if ref == "q":
                q = g.add(q, bias, name=f"Qcur-{il}")
                g.expand(q)
            elif ref == "k":
                k = g.add(k, bias, name=f"Kcur-{il}")
                g.expand(k)
            else:
                v = g.add(v, bias, name=f"Vcur-{il}")
                g.expand(v)
        hk, _hv = d.head_dim_k, d.head_dim_v
        q = g.reshape(q, hk, q.ne[0] // hk, T)
        if self.w(b + "attn_q_norm.weight") is not None:
            q = self.norm(q, b + "attn_q_norm.weight", f"Qcur_normed-{il}")
        k = g.reshape(k, hk, k.ne[0] // hk, T)
        if self.w(b + "attn_k_norm.weight") is not None:
            k = self.norm(k, b + "attn_k_norm.weight", f"Kcur_normed-{il}")
        q = g.rope(q, inp_pos, name=f"Qcur_roped-{il}")
        k = g.rope(k, inp_pos, name=f"Kcur_roped-{il}")
        cur = self.build_kv(il, k, v, q, kq_mask, wo=b + "attn_output.weight")
        if out_ids is not None:
            cur = g.get_rows(cur, out_ids, name=f"sa_get_rows-{il}")
            if add_input:
                inp = g.get_rows(inp, out_ids, name=f"sainp_get_rows-{il}")
        if add_input:
            cur = g.add(cur, inp)
        return cur

    def build_kv(self, il: int, k_cur: Tensor, v_cur: Tensor, q_cur: Tensor, kq_mask: Tensor, *, wo: str) -> Tensor:
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        g.expand(q_cur)
        g.expand(k_cur)
        g.expand(v_cur)
        n_head_kv = d.n_head_kv
        hk, hv = d.head_dim_k, d.head_dim_v
        nvg = hv * n_head_kv
        kc = self.kv(il, "k", cfg.type_k, hk * n_head_kv, self.n_kv)
        vc = self.kv(il, "v", cfg.type_v, nvg * self.n_kv)
        k_row = kc.nb[1] // n_head_kv  # ggml_row_size(type_k, hk)
        kview = g.view_nd(kc, (hk, T * n_head_kv), (k_row,), 0)
        g.expand(g.cpy(k_cur, kview))
        v_trans = not cfg.flash_attn
        if not v_trans:
            vview = g.view(vc, (T * nvg,), None, 0)
            g.expand(g.cpy(v_cur, vview))
        else:
            esz = vc.nb[0]
            vview = g.view_nd(vc, (T, nvg), (self.n_kv * esz,), 0)
            g.expand(g.cpy(g.transpose(v_cur), vview))
        return self.build_kqv(il, q_cur, kq_mask, kc, vc, wo=wo)

    def build_kqv(self, il: int, q_cur: Tensor, kq_mask: Tensor, kc: Tensor, vc: Tensor, *, wo: str) -> Tensor:
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        n_head, n_head_kv = d.n_head, d.n_head_kv
        hk, hv = d.head_dim_k, d.head_dim_v
        q = g.permute(q_cur, 0, 2, 1, 3)
        k_row = kc.nb[1] // n_head_kv
        k = g.view_nd(kc, (hk, self.n_kv, n_head_kv), (k_row * n_head_kv, k_row), 0)
        if cfg.flash_attn:
            v_row = vc.nb[0] * hv  # row size of the V type for hv elements
            vrow_full = self._row(cfg.type_v, hv * n_head_kv)
            v_row = self._row(cfg.type_v, hv)
            v = g.view_nd(vc, (hv, self.n_kv, n_head_kv), (vrow_full, v_row), 0)
            cur = g.flash_attn_ext(q, k, v, kq_mask, name=f"fa-{il}")
            cur = g.reshape(cur, hv * n_head, T)
        else:
            esz = vc.nb[0]
            v = g.view_nd(vc, (self.n_kv, hv, n_head_kv), (esz * self.n_kv, esz * self.n_kv * hv), 0)
            kq_size = k.ne[1] * q.ne[1] * q.ne[2] * 4 >> 20
            if cfg.amb == 0 or cfg.amb >= kq_size or k.ne[2] != q.ne[2] or v.ne[2] != q.ne[2]:
                kq = g.mul_mat(k, q, name=f"kq-{il}")
                kq = g.soft_max(kq, kq_mask, name=f"kq_soft_max_ext-{il}")
                kqv = g.mul_mat(v, kq, name=f"kqv-{il}")
            else:
                kqv = None
                for h in range(q.ne[2]):
                    k_i = g.view_nd(k, (k.ne[0], k.ne[1], 1), (k.nb[1], k.nb[2]), k.nb[2] * h)
                    q_i = g.view_nd(q, (q.ne[0], q.ne[1], 1), (q.nb[1], q.nb[2]), q.nb[2] * h)
                    kq_i = g.soft_max(g.mul_mat(k_i, q_i), kq_mask)
                    v_i = g.view_nd(v, (v.ne[0], v.ne[1], 1), (v.nb[1], v.nb[2]), v.nb[2] * h)
                    kqv_i = g.mul_mat(v_i, kq_i)
                    kqv = kqv_i if kqv is None else g.concat(kqv, kqv_i, 2)
            assert kqv is not None
            merged = g.permute(kqv, 0, 2, 1, 3)
            cur = g.cont(merged, hv * n_head, T, name=f"kqv_merged_cont-{il}")
        g.expand(cur)
        cur = g.mul_mat(self.W(wo), cur, name=f"kqv_out-{il}")
        bo = self.w(wo.replace(".weight", ".bias"))
        if bo is not None:
            cur = g.add(cur, bo)
        return cur

    def _row(self, type_: str, n: int) -> int:
        from quantforge.fit.ggml_sim import TypeInfo

        blck, tsize = TypeInfo.get(type_, self.engine)
        return tsize * (n // blck)

    # -- FFNs ---------------------------------------------------------------------------
    def ffn(self, il: int, inp: Tensor, *, norm: str | None, up: str, gate: str, down: str,
            add_input: bool = False, name: str = "ffn") -> Tensor:  # fmt: skip
        g = self.g
        cur = inp
        if norm is not None:
            cur = self.norm(cur, norm, f"ffn_norm-{il}")
        wu, wg, wd = self.W(up), self.W(gate), self.W(down)
        if wu.quantized and wu.type == wg.type and wu.ne == wg.ne:
            cur = g.fused_up_gate(wu, wg, cur, name=f"{name}_up_gate-{il}")
        else:
            u = g.mul_mat(wu, cur)
            gt = g.mul_mat(wg, cur)
            cur = g.fused_mul_unary(gt, u, name=f"{name}_up_gate-{il}")
        cur = g.mul_mat(wd, cur, name=f"{name}_down-{il}")
        if add_input:
            cur = g.add(cur, inp)
        return cur

    def moe(self, il: int, cur: Tensor, *, gating: str, norm_w: bool, w_scale: float, add_input: bool,
            inp: Tensor | None = None) -> Tensor:  # fmt: skip
        g, d = self.g, self.d
        b = f"blk.{il}."
        T = cur.ne[1]
        logits = g.mul_mat(self.W(b + "ffn_gate_inp.weight"), cur, name=f"ffn_moe_logits-{il}")
        gib = self.w(b + "ffn_gate_inp.bias")
        if gib is not None:
            logits = g.add(logits, gib)
        probs = g.soft_max(logits, name=f"ffn_moe_probs-{il}") if gating == "softmax" else g.unary(
            logits, name=f"ffn_moe_probs-{il}"
        )
        sel_probs = probs
        bias = self.w(b + "exp_probs_b.bias")
        if bias is not None:
            sel_probs = g.add(probs, bias, name=f"ffn_moe_probs_biased-{il}")
        selected = g.top_k(sel_probs, d.n_expert_used, name=f"ffn_moe_topk-{il}")
        weights = g.get_rows(g.reshape(probs, 1, d.n_expert, T), selected, name=f"ffn_moe_weights-{il}")
        if norm_w:
            w2 = g.reshape(weights, d.n_expert_used, T)
            ssum = g.sum_rows(w2, name=f"ffn_moe_weights_sum-{il}")
            w2 = g.div(w2, ssum, name=f"ffn_moe_weights_norm-{il}")
            weights = g.reshape(w2, 1, d.n_expert_used, T)
        if abs(w_scale - 1) > 1e-5:
            weights = g.scale(weights, name=f"ffn_moe_weights_scaled-{il}")
        g.expand(weights)
        x = g.reshape(cur, cur.ne[0], 1, T)
        up, gate, down = self.W(b + "ffn_up_exps.weight"), self.W(b + "ffn_gate_exps.weight"), self.W(
            b + "ffn_down_exps.weight"
        )
        if self.cfg.fused_moe and up.type == gate.type:
            par = g.moe_up_gate(up, gate, x, selected, name=f"ffn_moe_gate_par-{il}")
        else:
            u = g.mul_mat_id(up, x, selected, name=f"ffn_moe_up-{il}")
            gt = g.mul_mat_id(gate, x, selected, name=f"ffn_moe_gate-{il}")
            g.expand(u)
            g.expand(gt)
            par = g.fused_mul_unary(gt, u, name=f"ffn_moe_gate_par-{il}")
        experts = g.mul_mat_id(down, par, selected, name=f"ffn_moe_down-{il}")
        experts = g.mul_multi_add(experts, weights, name=f"ffn_moe_weighted-{il}")
        if add_input:
            assert inp is not None
            experts = g.add(experts, inp)
        return experts

    def std_moe_ffn(self, il: int, inp: Tensor, *, gating: str, norm_w: bool, w_scale: float,
                    add_input: bool) -> Tensor:  # fmt: skip
        g = self.g
        b = f"blk.{il}."
        cur = self.norm(inp, b + "ffn_norm.weight" if self.w(b + "ffn_norm.weight") is not None
                        else b + "post_attention_norm.weight", f"ffn_inp_normed-{il}")  # fmt: skip
        routed = self.moe(il, cur, gating=gating, norm_w=norm_w, w_scale=w_scale, add_input=False)
        if add_input:
            routed = g.add(routed, inp, name=f"routed_out_with_inp-{il}")
        g.expand(routed)
        if self.w(b + "ffn_up_shexp.weight") is not None:
            shared = self.ffn(il, cur, norm=None, up=b + "ffn_up_shexp.weight", gate=b + "ffn_gate_shexp.weight",
                              down=b + "ffn_down_shexp.weight", name="shexp")  # fmt: skip
            return g.add(routed, shared, name=f"ffn_out-{il}")
        return routed

    def output(self, cur: Tensor) -> Tensor:
        g = self.g
        cur = self.norm(cur, "output_norm.weight", "result_norm")
        out_w = self.w("output.weight") or self.W("token_embd.weight")
        res = g.mul_mat(out_w, cur, name="result_output")
        res.flags |= FLAG_OUTPUT
        return res

    # -- architectures -------------------------------------------------------------------
    def build_gqa_moe(self, layers: Sequence[int]) -> Graph:
        """qwen3moe (inp_out_ids made at the last layer) and glm4moe (made first, dense leading layers)."""
        g, d = self.g, self.d
        glm = d.arch == "glm4moe"
        if glm:
            pos = self.inp_pos()
            inpL = self.inp_embd()
            mask = self.kq_mask()
            out_ids = self.inp_out_ids() if self.T > 1 else None
        else:
            inpL = self.inp_embd()
            pos = self.inp_pos()
            mask = self.kq_mask()
            out_ids = None
        last = layers[-1]
        for il in layers:
            if not glm and il == last and self.T > 1:
                out_ids = self.inp_out_ids()
            cur = self.std_attention(il, inpL, pos, mask, out_ids if il == last else None, add_input=True)
            if glm and il < d.leading_dense:
                b = f"blk.{il}."
                cur = self.ffn(il, cur, norm=b + "post_attention_norm.weight", up=b + "ffn_up.weight",
                               gate=b + "ffn_gate.weight", down=b + "ffn_down.weight", add_input=True)  # fmt: skip
            elif glm:
                cur = self.std_moe_ffn(il, cur, gating="sigmoid", norm_w=True, w_scale=self._w_scale(), add_input=True)
            else:
                cur = self.std_moe_ffn(il, cur, gating="softmax", norm_w=True, w_scale=1.0, add_input=True)
            inpL = cur
        res = self.output(inpL)
        g.expand(res)
        return g

    def _w_scale(self) -> float:
        return self.mw.expert_weights_scale

    def build_llama(self, layers: Sequence[int]) -> Graph:
        g = self.g
        inpL = self.inp_embd()
        pos = self.inp_pos()
        mask = self.kq_mask()
        last = layers[-1]
        for il in layers:
            b = f"blk.{il}."
            out_ids = self.inp_out_ids() if il == last and self.T > 1 else None
            cur = self.std_attention(il, inpL, pos, mask, out_ids, add_input=True)
            cur = self.ffn(il, cur, norm=b + "ffn_norm.weight", up=b + "ffn_up.weight", gate=b + "ffn_gate.weight",
                           down=b + "ffn_down.weight", add_input=True)  # fmt: skip
            inpL = cur
        res = self.output(inpL)
        g.expand(res)
        return g

    # -- DeepSeek-V2/V3, Kimi-K2 (MLA) ------------------------------------------------------
    def mla_attention(self, il: int, inp: Tensor, pos: Tensor, mask: Tensor, pp_opt: bool) -> Tensor:
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        b = f"blk.{il}."
        rope, nope = d.n_rot, d.head_dim_k - d.n_rot
        lora, _hv, n_head = d.kv_lora_rank, d.head_dim_v, d.n_head
        cur = self.norm(inp, b + "attn_norm.weight", f"attn_norm-{il}")
        if self.w(b + "attn_q_a.weight") is not None:
            q = g.mul_mat(self.W(b + "attn_q_a.weight"), cur, name=f"q-{il}")
            kvrc = g.mul_mat(self.W(b + "attn_kv_a_mqa.weight"), cur, name=f"kv_rope_compressed-{il}")
            g.expand(q)
            g.expand(kvrc)
            q = self.norm(q, b + "attn_q_a_norm.weight", f"q-{il}")
            q = g.mul_mat(self.W(b + "attn_q_b.weight"), q, name=f"q-{il}")
        else:
            q = g.mul_mat(self.W(b + "attn_q.weight"), cur, name=f"q-{il}")
            kvrc = g.mul_mat(self.W(b + "attn_kv_a_mqa.weight"), cur, name=f"kv_rope_compressed-{il}")
            g.expand(q)
            g.expand(kvrc)
        hk = d.head_dim_k
        q_nope = g.view_nd(q, (nope, n_head, T), (4 * hk, 4 * hk * n_head), 0)
        q_rope = g.view_nd(q, (rope, n_head, T), (4 * hk, 4 * hk * n_head), 4 * nope)
        k_rope = g.view_nd(kvrc, (rope, 1, T), (kvrc.nb[1], kvrc.nb[1]), 4 * lora)
        kv_comp = g.view_nd(kvrc, (lora, T), (kvrc.nb[1],), 0)
        g.expand(q_rope)
        g.expand(k_rope)
        q_rope = g.rope(q_rope, pos, name=f"q_rope-{il}")
        k_rope = g.rope(k_rope, pos, name=f"k_rope-{il}")
        g.expand(q_rope)
        g.expand(k_rope)
        kv_comp = self.norm(kv_comp, b + "attn_kv_a_norm.weight", f"kv_compressed-{il}")
        width = lora + rope
        primary = cfg.type_k if (cfg.flash_attn or cfg.mla == 1) else cfg.type_v
        kc = self.kv(il, "k", primary, width, self.n_kv)
        kv_trans = None
        if cfg.mla == 1 and not cfg.flash_attn:
            vc = self.kv(il, "v", cfg.type_v, lora * self.n_kv)
            vrow = self._row(cfg.type_v, self.n_kv)
            view = g.view_nd(vc, (T, lora), (vrow,), 0)
            g.expand(g.cpy(g.transpose(kv_comp), view))
            kv_trans = g.view_nd(vc, (self.n_kv, lora), (vrow,), 0)
        kvr = g.concat(g.permute(k_rope, 0, 2, 1, 3), kv_comp, 0, name=f"kvr-{il}")
        row = kc.nb[1]
        g.expand(g.cpy(kvr, g.view_nd(kc, (width, T), (row,), 0)))
        kv_cache = g.view_nd(kc, (width, self.n_kv), (row,), 0)
        if cfg.mla > 1 and cfg.flash_attn and pp_opt:
            cur = self._mla_pp(il, kc, q, q_rope, q_nope, mask)
        else:
            cur = self._mla_absorbed(il, kc, kv_cache, kv_trans, q_nope, q_rope, mask, pp_opt)
        g.expand(cur)
        return g.mul_mat(self.W(b + "attn_output.weight"), cur, name=f"kqv_out-{il}")

    def _mla_pp(self, il: int, kc: Tensor, q: Tensor, q_rope: Tensor, q_nope: Tensor, mask: Tensor) -> Tensor:
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        b = f"blk.{il}."
        rope, nope, lora, hv, n_head = d.n_rot, d.head_dim_k - d.n_rot, d.kv_lora_rank, d.head_dim_v, d.n_head
        kv_nope = g.view_nd(kc, (lora, self.n_kv), (kc.nb[1],), self._row(kc.type, rope))
        wkv_b = self.W(b + "attn_kv_b.weight")
        kv_f32_size = wkv_b.ne[1] * self.n_kv * 4 >> 20
        n_max = n_head
        if cfg.amb > 0 and kv_f32_size > cfg.amb:
            n_max = 1
            for niter in range(2, n_head):
                if n_head % niter == 0 and kv_f32_size // niter <= cfg.amb:
                    n_max = n_head // niter
                    break
        n_per_head = wkv_b.ne[1] // n_head
        kv_rope = g.view_nd(kc, (rope, self.n_kv, 1), (kc.nb[1], kc.nb[2]), 0)
        kv_type = kc.type if cfg.cpu_only else "f16"
        if kv_rope.type == kv_type:
            k_rope = g.repeat(kv_rope, (rope, self.n_kv, n_max, 1), name=f"k_rope-{il}")
        else:
            k_rope = g.repeat(g.cast(kv_rope, "f16"), (rope, self.n_kv, n_max, 1), name=f"k_rope-{il}")
        qc = g.concat(q_rope, q_nope, 0)
        qc = g.permute(qc, 0, 2, 1, 3)
        g.expand(qc)
        cur = None
        for it in range(n_head // n_max):
            wv = g.view_nd(wkv_b, (wkv_b.ne[0], n_per_head * n_max), (wkv_b.nb[1],), wkv_b.nb[1] * n_per_head * n_max * it)
            kv_f32 = g.mul_mat(wv, kv_nope, name=f"kv_f32-{il}")
            rs = 4 * n_max * (nope + hv)
            v_f32 = g.view_nd(kv_f32, (hv, self.n_kv, n_max), (rs, 4 * (nope + hv)), 4 * nope)
            k_nope_f32 = g.view_nd(kv_f32, (nope, self.n_kv, n_max), (rs, 4 * (nope + hv)), 0)
            v = g.cast(v_f32, kv_type, name=f"v-{il}")
            k_nope = g.cast(k_nope_f32, kv_type, name=f"k_nope-{il}")
            g.expand(k_nope)
            g.expand(v)
            k = g.concat(k_rope, k_nope, 0, name=f"k-{il}")
            g.expand(k)
            q_it = g.view_nd(qc, (qc.ne[0], qc.ne[1], n_max), (qc.nb[1], qc.nb[2]), qc.nb[2] * n_max * it)
            kqv = g.flash_attn_ext(q_it, k, v, mask, name=f"kqv-{il}")
            r = g.reshape(kqv, hv * n_max, T)
            cur = r if cur is None else g.concat(cur, r, 0)
            g.expand(cur)
        assert cur is not None
        return cur

    def _mla_absorbed(self, il: int, kc: Tensor, kv_cache: Tensor, kv_trans: Tensor | None, q_nope: Tensor,
                      q_rope: Tensor, mask: Tensor, pp_opt: bool) -> Tensor:  # fmt: skip
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        b = f"blk.{il}."
        rope, nope, lora, hv, n_head = d.n_rot, d.head_dim_k - d.n_rot, d.kv_lora_rank, d.head_dim_v, d.n_head
        wk_b = self.W(b + "attn_k_b.weight")
        if wk_b.ne[1] != lora:
            wk_b = g.reshape(wk_b, nope, lora, n_head)
        qn = g.permute(q_nope, 0, 2, 1, 3)
        q_nope2 = g.mul_mat(wk_b, qn, name=f"q_nope2-{il}")
        q = g.concat(g.permute(q_rope, 0, 2, 1, 3), q_nope2, 0, name=f"q-{il}")
        if cfg.flash_attn and cfg.mla in (1, 3):
            kv_lora = g.view_nd(kc, (lora, self.n_kv), (kc.nb[1],), self._row(kc.type, rope))
            kqv_c = g.flash_attn_ext(q, kv_cache, kv_lora, mask, name=f"kqv_compressed-{il}")
            kqv_c = g.permute(kqv_c, 0, 2, 1, 3)
        else:
            if cfg.mla > 1:
                kv_lora = g.view_nd(kc, (lora, self.n_kv), (kc.nb[1],), self._row(kc.type, rope))
                kv_trans = g.cont(g.transpose(kv_lora), name=f"kv_cache_trans-{il}")
            assert kv_trans is not None
            kq_size = kv_cache.ne[1] * q.ne[1] * q.ne[2] * 4 >> 20
            if cfg.amb <= 0 or cfg.amb >= kq_size:
                if not pp_opt:
                    q = g.permute(q, 0, 2, 1, 3)
                kq = g.mul_mat(kv_cache, q, name=f"kq-{il}")
                if not pp_opt:
                    kq = g.cont(g.permute(kq, 0, 2, 1, 3), name=f"kq_perm-{il}")
                kq = g.soft_max(kq, mask, name=f"kq_soft_max_ext-{il}")
                if not pp_opt:
                    kq = g.permute(kq, 0, 2, 1, 3)
                kqv_c = g.mul_mat(kv_trans, kq, name=f"kqv_compressed-{il}")
                if not pp_opt:
                    kqv_c = g.permute(kqv_c, 0, 2, 1, 3)
            else:
                n_step = min(-(-kq_size // cfg.amb), q.ne[2])
                n_per = -(-q.ne[2] // n_step)
                kqv_c = None
                h = 0
                while h < q.ne[2]:
                    this = n_per if h + n_per <= q.ne[2] else q.ne[2] - h
                    q_i = g.view_nd(q, (q.ne[0], q.ne[1], this), (q.nb[1], q.nb[2]), q.nb[2] * h)
                    kq_i = g.soft_max(g.mul_mat(kv_cache, q_i), mask)
                    kqv_i = g.mul_mat(kv_trans, kq_i)
                    kqv_c = kqv_i if kqv_c is None else g.concat(kqv_c, kqv_i, 2)
                    g.expand(kqv_c)
                    h += n_per
                assert kqv_c is not None
        wv_b = self.W(b + "attn_v_b.weight")
        if wv_b.ne[1] != hv:
            wv_b = g.reshape(wv_b, lora, hv, n_head)
        kqv = g.mul_mat(wv_b, kqv_c, name=f"kqv-{il}")
        if T > 1:
            kqv = g.cont(g.permute(kqv, 0, 2, 1, 3), name=f"kqv_perm-{il}")
        return g.reshape(kqv, hv * n_head, T)

    def build_deepseek2(self, layers: Sequence[int]) -> Graph:
        g, d, cfg = self.g, self.d, self.cfg
        inpL = self.inp_embd()
        pos = self.inp_pos()
        mask = self.kq_mask()
        pp_opt = self.T >= 128 and cfg.mla > 1
        last = layers[-1]
        for il in layers:
            b = f"blk.{il}."
            inpSA = inpL
            cur = self.mla_attention(il, inpL, pos, mask, pp_opt)
            if il == last:
                ids = self.inp_out_ids()
                cur = g.get_rows(cur, ids, name=f"last_attn-{il}")
                inpSA = g.get_rows(inpSA, ids, name=f"last_ffn_inp-{il}")
            ffn_inp = g.add(cur, inpSA, name=f"ffn_inp-{il}")
            cur = self.norm(ffn_inp, b + "ffn_norm.weight", f"ffn_norm-{il}")
            if il < d.leading_dense:
                cur = self.ffn(il, cur, norm=None, up=b + "ffn_up.weight", gate=b + "ffn_gate.weight",
                               down=b + "ffn_down.weight")  # fmt: skip
            else:
                moe_out = self.moe(il, cur, gating="sigmoid", norm_w=True, w_scale=self._w_scale(), add_input=False)
                shexp = self.ffn(il, cur, norm=None, up=b + "ffn_up_shexp.weight", gate=b + "ffn_gate_shexp.weight",
                                 down=b + "ffn_down_shexp.weight", name="shexp")  # fmt: skip
                cur = g.add(moe_out, shexp, name=f"ffn_out-{il}")
            cur = g.add(cur, ffn_inp, name=f"l_out-{il}")
            inpL = cur
        res = self.output(inpL)
        g.expand(res)
        return g


def build_graph(engine: Engine, mw: ModelWeights, cfg: GraphConfig, layers: Sequence[int]) -> Graph:
    """The reserve graph of ``engine`` for the model's ``layers`` (in order; the last one makes the outputs)."""
    arch = mw.dims.arch
    if engine == "ik":
        b = IkBuilder(mw, cfg, engine)
        if mw.dims.is_mla:
            return b.build_deepseek2(layers)
        if arch in ("qwen3moe", "glm4moe"):
            return b.build_gqa_moe(layers)
        return b.build_llama(layers)
    from quantforge.fit.graphs_mainline import MainlineBuilder

    m = MainlineBuilder(mw, cfg, engine)
    return m.build(layers)
