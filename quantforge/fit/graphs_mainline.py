"""llama.cpp (mainline, b11434) reserve graphs on ``ggml_sim``: ``llm_graph_context`` and the models.

Mirrors ``src/llama-graph.cpp`` (``build_inp_embd`` with its ``ggml_build_forward_select`` of the
token / embedding / mixed input paths, ``build_attn`` with the ``ggml_set_rows`` KV stores,
``build_attn_mha``, ``build_moe_ffn``, ``build_ffn``, ``build_norm``) and ``src/models/``
(``llama``, ``qwen3moe``, ``glm4-moe``, ``deepseek2`` with MLA as MQA over the latent).
"""

from __future__ import annotations

from collections.abc import Sequence

from quantforge.fit.ggml_sim import FLAG_OUTPUT, Graph, Tensor, TypeInfo
from quantforge.fit.graph_base import GraphBuilder


class MainlineBuilder(GraphBuilder):
    def row(self, type_: str, n: int) -> int:
        blck, tsize = TypeInfo.get(type_, self.engine)
        return tsize * (n // blck)

    def set_rows(self, dst: Tensor, src: Tensor, idx: Tensor, name: str = "") -> Tensor:
        t = self.g.view(dst, dst.ne, dst.nb, op="SET_ROWS", name=name or dst.name + " (view)")
        t.op = "SET_ROWS"
        t.src = [src, idx, dst]
        return t

    def norm(self, x: Tensor, w: str | None, il: int) -> Tensor:
        g = self.g
        cur = g.rms_norm(x, name=f"norm-{il}")
        if w is not None:
            cur = g.mul(cur, self.W(w))
        return cur

    # ---- inputs ---------------------------------------------------------------------------
    def inp_embd_ml(self) -> Tensor:
        g, d, T = self.g, self.d, self.T
        tokens = g.input("i32", T, name="inp_tokens")
        embd_in = g.input("f32", d.n_embd, T, name="inp_embd")
        tok = g.get_rows(self.W("token_embd.weight"), tokens, name="embd")
        branches = [tok, embd_in]
        mixed_tokens = g.input("i32", T, name="inp_mixed_tokens")
        mixed_slots = g.input("i64", T, name="inp_mixed_slots")
        mixed_embd = g.input("f32", d.n_embd, T, name="inp_mixed_embd")
        dup = g._op("DUP", "f32", mixed_embd.ne, [mixed_embd], "dup")
        rows = g.get_rows(self.W("token_embd.weight"), mixed_tokens)
        branches.append(self.set_rows(dup, rows, mixed_slots))
        for b in branches:  # ggml_build_forward_select: every branch is in the graph
            g.expand(b)
        g.expand(tok)
        return tok

    def attn_inputs(self, mla: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        k_idxs = g.input("i64", T, name="attn_inp_k_idxs")
        v_idxs = None
        if not mla:
            n = T if cfg.flash_attn else T * d.head_dim_v * d.n_head_kv
            v_idxs = g.input("i64", n, name="attn_inp_v_idxs")
        mask = g.input("f16" if cfg.flash_attn else "f32", self.n_kv, T, 1, 1, name="attn_inp_kq_mask")
        # quantized caches are written Hadamard-rotated (llama_kv_cache: n_rot_k / n_rot_v)
        self.k_rot = self.v_rot = None
        if not mla:
            if TypeInfo.get(cfg.type_k, self.engine)[0] > 1 and d.head_dim_k % 64 == 0:
                n = 64
                while d.head_dim_k % (2 * n) == 0:
                    n *= 2
                self.k_rot = g.input("f32", n, n, name="attn_inp_k_rot")
            if TypeInfo.get(cfg.type_v, self.engine)[0] > 1 and d.head_dim_v % 64 == 0:
                self.v_rot = g.input("f32", 64, 64, name="attn_inp_v_rot")
        return k_idxs, v_idxs, mask

    def hadamard(self, cur: Tensor, rot: Tensor) -> Tensor:
        g = self.g
        n = rot.ne[0]
        nel = cur.ne[0] * cur.ne[1] * cur.ne[2] * cur.ne[3]
        contiguous = cur.nb == Tensor("", "NONE", cur.type, cur.ne, engine=self.engine).nb
        res = g.reshape(cur, n, nel // n) if contiguous else g.cont(cur, n, nel // n)
        res = g.mul_mat(rot, res)
        return g.reshape(res, *cur.ne)

    # ---- attention --------------------------------------------------------------------------
    def qkv(self, il: int, cur: Tensor, hk: int, n_head: int, n_head_kv: int) -> tuple[Tensor, Tensor,
                                                                                       Tensor]:
        g, T = self.g, self.T
        b = f"blk.{il}."
        q = g.mul_mat(self.W(b + "attn_q.weight"), cur, name=f"Qcur-{il}")
        if (bq := self.w(b + "attn_q.bias")) is not None:
            q = g.add(q, bq, name=f"Qcur-{il}")
        k = g.mul_mat(self.W(b + "attn_k.weight"), cur, name=f"Kcur-{il}")
        if (bk := self.w(b + "attn_k.bias")) is not None:
            k = g.add(k, bk, name=f"Kcur-{il}")
        v = g.mul_mat(self.W(b + "attn_v.weight"), cur, name=f"Vcur-{il}")
        if (bv := self.w(b + "attn_v.bias")) is not None:
            v = g.add(v, bv, name=f"Vcur-{il}")
        return g.reshape(q, hk, n_head, T), g.reshape(k, hk, n_head_kv, T), g.reshape(v, hk, n_head_kv, T)

    def attn_mha(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, v_mla: Tensor | None,
                 il: int) -> Tensor:
        g, cfg = self.g, self.cfg
        v_trans = v.nb[1] > v.nb[2]
        q = g.view_nd(q, (q.ne[0], q.ne[1], q.ne[2], 1), (q.nb[1], q.nb[2], q.nb[2] * q.ne[2]), 0)
        q = g.permute(q, 0, 2, 1, 3)
        k = g.permute(k, 0, 2, 1, 3)
        v = g.permute(v, 0, 2, 1, 3)
        if cfg.flash_attn:
            if v_trans:
                v = g.transpose(v)
            cur = g.flash_attn_ext(q, k, v, mask, name=f"fattn-{il}")
            if v_mla is not None:
                cur = g.permute(cur, 0, 2, 1, 3)
                cur = g.mul_mat(v_mla, cur, name=f"fattn_mla-{il}")
                cur = g.permute(cur, 0, 2, 1, 3)
                cur = g.cont(cur)
            cur = g.reshape(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            kq = g.mul_mat(k, q, name=f"kq-{il}")
            kq = g.soft_max(kq, mask, name=f"kq_soft_max-{il}")
            if not v_trans:
                v = g.cont(g.transpose(v), name=f"v_cont-{il}")
            kqv = g.mul_mat(v, kq, name=f"kqv-{il}")
            if v_mla is not None:
                kqv = g.mul_mat(v_mla, kqv, name=f"kqv_mla-{il}")
            cur = g.permute(kqv, 0, 2, 1, 3)
            cur = g.cont(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        g.expand(cur)
        return cur

    def attn_kv(self, il: int, q: Tensor, k: Tensor, v: Tensor, inputs: tuple[Tensor, Tensor | None, Tensor],
                wo: str) -> Tensor:  # fmt: skip
        g, d, cfg = self.g, self.d, self.cfg
        k_idxs, v_idxs, mask = inputs
        assert v_idxs is not None
        if self.k_rot is not None:
            q = self.hadamard(q, self.k_rot)
            k = self.hadamard(k, self.k_rot)
        if self.v_rot is not None:
            v = self.hadamard(v, self.v_rot)
        g.expand(q)
        g.expand(v)
        g.expand(k)
        hk, hv, nkv = d.head_dim_k, d.head_dim_v, d.n_head_kv
        kc = self.kv(il, "k", cfg.type_k, hk * nkv, self.n_kv)
        vc = self.kv(il, "v", cfg.type_v, hv * nkv, self.n_kv)
        k2 = g.view_nd(k, (hk * nkv, k.ne[2]), (k.nb[2],), 0)
        g.expand(self.set_rows(kc, k2, k_idxs))
        v_trans = not cfg.flash_attn
        if not v_trans:
            v2 = g.view_nd(v, (hv * nkv, v.ne[2]), (v.nb[2],), 0)
            g.expand(self.set_rows(vc, v2, v_idxs))
        else:
            v2 = g.reshape(v, hv * nkv, v.ne[2])
            vview = g.reshape(vc, 1, hv * nkv * self.n_kv)
            v2 = g.reshape(v2, 1, hv * nkv * v.ne[2])
            g.expand(self.set_rows(vview, v2, v_idxs))
        kr = self.row(cfg.type_k, hk)
        kview = g.view_nd(kc, (hk, nkv, self.n_kv, 1), (kr, kr * nkv, kr * nkv * self.n_kv), 0)
        if not v_trans:
            vr = self.row(cfg.type_v, hv)
            vview = g.view_nd(vc, (hv, nkv, self.n_kv, 1), (vr, vr * nkv, vr * nkv * self.n_kv), 0)
        else:
            es = self.row(cfg.type_v, 1)
            vview = g.view_nd(vc, (self.n_kv, nkv, hv, 1), (es * self.n_kv * hv, es * self.n_kv,
                                                            es * self.n_kv * hv * nkv), 0)
        cur = self.attn_mha(q, kview, vview, mask, None, il)
        if self.v_rot is not None:
            cur = self.hadamard(cur, self.v_rot)
        cur = g.mul_mat(self.W(wo), cur, name=f"attn_out-{il}")
        if (bo := self.w(wo.replace(".weight", ".bias"))) is not None:
            cur = g.add(cur, bo)
        return cur

    # ---- FFNs ---------------------------------------------------------------------------------
    def ffn(self, il: int, cur: Tensor, up: str, gate: str, down: str) -> Tensor:
        g = self.g
        tmp = g.mul_mat(self.W(up), cur, name=f"ffn_up-{il}")
        gt = g.mul_mat(self.W(gate), cur, name=f"ffn_gate-{il}")
        x = g._op("SWIGLU", "f32", gt.ne, [gt, tmp], f"ffn_swiglu-{il}")
        return g.mul_mat(self.W(down), x, name=f"ffn_down-{il}")

    def moe(self, il: int, cur: Tensor, *, gating: str, norm_w: bool, w_scale: float) -> Tensor:
        g, d = self.g, self.d
        b = f"blk.{il}."
        T = cur.ne[1]
        logits = g.mul_mat(self.W(b + "ffn_gate_inp.weight"), cur, name=f"ffn_moe_logits-{il}")
        if (gib := self.w(b + "ffn_gate_inp.bias")) is not None:
            logits = g.add(logits, gib)
        probs = g.soft_max(logits, name=f"ffn_moe_probs-{il}") if gating == "softmax" else g.unary(
            logits, name=f"ffn_moe_probs-{il}"
        )
        sel = probs
        if (pb := self.w(b + "exp_probs_b.bias")) is not None:
            sel = g.add(probs, pb, name=f"ffn_moe_probs_biased-{il}")
        n_groups = self.mw.expert_groups
        if n_groups > 1 and T > 0:
            per = d.n_expert // n_groups
            groups = g.reshape(sel, per, n_groups, T)
            gs = g.top_k(groups, 2)
            gs = g.get_rows(g.reshape(groups, 1, groups.ne[0], groups.ne[1], groups.ne[2]), gs)
            gs = g.sum_rows(g.reshape(gs, gs.ne[1], gs.ne[2], gs.ne[3]))
            gs = g.reshape(gs, gs.ne[1], gs.ne[2])
            eg = g.top_k(gs, self.mw.expert_groups_used)
            sel_rows = g.get_rows(groups, eg)
            filled = g._op("FILL", groups.type, groups.ne, [groups], "fill")
            sel = self.set_rows(filled, sel_rows, eg)
            sel = g.reshape(sel, d.n_expert, T)
        selected = g.top_k(sel, d.n_expert_used, name=f"ffn_moe_topk-{il}")
        p3 = g.reshape(probs, 1, d.n_expert, T)
        weights = g.get_rows(p3, selected, name=f"ffn_moe_weights-{il}")
        if norm_w:
            w2 = g.reshape(weights, d.n_expert_used, T)
            s = g.sum_rows(w2, name=f"ffn_moe_weights_sum-{il}")
            s = g._op("CLAMP", s.type, s.ne, [s], f"ffn_moe_weights_sum_clamped-{il}")
            w2 = g.div(w2, s, name=f"ffn_moe_weights_norm-{il}")
            weights = g.reshape(w2, 1, d.n_expert_used, T)
        if w_scale not in (0.0, 1.0):
            weights = g.scale(weights, name=f"ffn_moe_weights_scaled-{il}")
        g.expand(weights)
        x = g.reshape(cur, cur.ne[0], 1, T)
        up = g.mul_mat_id(self.W(b + "ffn_up_exps.weight"), x, selected, name=f"ffn_moe_up-{il}")
        gate = g.mul_mat_id(self.W(b + "ffn_gate_exps.weight"), x, selected, name=f"ffn_moe_gate-{il}")
        act = g._op("SWIGLU", "f32", gate.ne, [gate, up], f"ffn_moe_swiglu-{il}")
        experts = g.mul_mat_id(self.W(b + "ffn_down_exps.weight"), act, selected, name=f"ffn_moe_down-{il}")
        experts = g.mul(experts, weights, name=f"ffn_moe_weighted-{il}")
        g.expand(experts)
        n_embd = cur.ne[0]
        views = []
        for i in range(d.n_expert_used):
            v = g.view_nd(experts, (n_embd, T), (experts.nb[2],), i * experts.nb[1])
            g.expand(v)
            views.append(v)
        out = views[0]
        for v in views[1:]:
            out = g.add(out, v)
            g.expand(out)
        if d.n_expert_used == 1:
            out = g.cont(out)
        return out

    def output(self, cur: Tensor) -> Tensor:
        g = self.g
        cur = self.norm(cur, "output_norm.weight", -1)
        out_w = self.w("output.weight") or self.W("token_embd.weight")
        res = g.mul_mat(out_w, cur, name="result_output")
        res.flags |= FLAG_OUTPUT
        return res

    # ---- models ----------------------------------------------------------------------------
    def build(self, layers: Sequence[int]) -> Graph:
        d = self.d
        if d.is_mla:
            return self.build_deepseek2(layers)
        return self.build_gqa(layers)

    def build_gqa(self, layers: Sequence[int]) -> Graph:
        g, d = self.g, self.d
        arch = d.arch
        inpL = self.inp_embd_ml()
        pos = self.inp_pos()
        inputs = self.attn_inputs(False)
        out_ids = self.inp_out_ids()
        last = layers[-1]
        for il in layers:
            b = f"blk.{il}."
            inpSA = inpL
            cur = self.norm(inpL, b + "attn_norm.weight", il)
            q, k, v = self.qkv(il, cur, d.head_dim_k, d.n_head, d.n_head_kv)
            if self.w(b + "attn_q_norm.weight") is not None:
                q = self.norm(q, b + "attn_q_norm.weight", il)
            q = g.rope(q, pos, name=f"Qcur-{il}")
            if self.w(b + "attn_k_norm.weight") is not None:
                k = self.norm(k, b + "attn_k_norm.weight", il)
            k = g.rope(k, pos, name=f"Kcur-{il}")
            cur = self.attn_kv(il, q, k, v, inputs, b + "attn_output.weight")
            if il == last:
                cur = g.get_rows(cur, out_ids)
                inpSA = g.get_rows(inpSA, out_ids)
            ffn_inp = g.add(cur, inpSA, name=f"ffn_inp-{il}")
            if arch == "glm4moe":
                cur = self.norm(ffn_inp, b + "post_attention_norm.weight", il)
                if il < d.leading_dense:
                    cur = self.ffn(il, cur, b + "ffn_up.weight", b + "ffn_gate.weight", b + "ffn_down.weight")
                else:
                    routed = self.moe(il, cur, gating="sigmoid", norm_w=True,
                                      w_scale=self.mw.expert_weights_scale)
                    shared = self.ffn(il, cur, b + "ffn_up_shexp.weight", b + "ffn_gate_shexp.weight",
                                      b + "ffn_down_shexp.weight")  # fmt: skip
                    cur = g.add(routed, shared, name=f"ffn_out-{il}")
            elif self.w(b + "ffn_gate_inp.weight") is not None:
                cur = self.norm(ffn_inp, b + "ffn_norm.weight", il)
                cur = self.moe(il, cur, gating="softmax", norm_w=True, w_scale=self.mw.expert_weights_scale)
            else:
                cur = self.norm(ffn_inp, b + "ffn_norm.weight", il)
                cur = self.ffn(il, cur, b + "ffn_up.weight", b + "ffn_gate.weight", b + "ffn_down.weight")
            cur = g.add(cur, ffn_inp, name=f"l_out-{il}")
            inpL = cur
        res = self.output(inpL)
        g.expand(res)
        return g

    def build_deepseek2(self, layers: Sequence[int]) -> Graph:
        g, d, T, cfg = self.g, self.d, self.T, self.cfg
        rope, nope, lora, n_head = d.n_rot, d.head_dim_k - d.n_rot, d.kv_lora_rank, d.n_head
        inpL = self.inp_embd_ml()
        pos = self.inp_pos()
        k_idxs, _, mask = self.attn_inputs(True)
        out_ids = self.inp_out_ids()
        last = layers[-1]
        hk = d.head_dim_k  # nope + rope (the MLA head size; the cache width is lora + rope)
        for il in layers:
            b = f"blk.{il}."
            inpSA = inpL
            cur = self.norm(inpL, b + "attn_norm.weight", il)
            if self.w(b + "attn_q_a.weight") is not None:
                q = g.mul_mat(self.W(b + "attn_q_a.weight"), cur, name=f"q-{il}")
                q = self.norm(q, b + "attn_q_a_norm.weight", il)
                q = g.mul_mat(self.W(b + "attn_q_b.weight"), q, name=f"q-{il}")
            else:
                q = g.mul_mat(self.W(b + "attn_q.weight"), cur, name=f"q-{il}")
            q = g.reshape(q, hk, n_head, T)
            kvp = g.mul_mat(self.W(b + "attn_kv_a_mqa.weight"), cur, name=f"kv_cmpr_pe-{il}")
            kv_cmpr = g.view_nd(kvp, (lora, T), (self.row("f32", lora + rope),), 0)
            k_pe = g.view_nd(kvp, (rope, 1, T), (self.row("f32", lora + rope), self.row("f32", lora + rope)),
                             self.row("f32", lora))  # fmt: skip
            k_pe = g.rope(k_pe, pos, name=f"k_pe-{il}")
            kv_cmpr = self.norm(kv_cmpr, b + "attn_kv_a_norm.weight", il)
            q_nope = g.view_nd(q, (nope, n_head, T), (q.nb[1], q.nb[2]), 0)
            q_pe = g.view_nd(q, (rope, n_head, T), (q.nb[1], q.nb[2]), self.row("f32", nope))
            q_pe = g.rope(q_pe, pos, name=f"q_pe-{il}")
            q_nope = g.permute(q_nope, 0, 2, 1, 3)
            qa = g.mul_mat(self.W(b + "attn_k_b.weight"), q_nope, name=f"q_nope_absorbed-{il}")
            qa = g.permute(qa, 0, 2, 1, 3)
            qcur = g.concat(qa, q_pe, 0, name=f"Qcur-{il}")
            kv_cmpr = g.reshape(kv_cmpr, lora, 1, T)
            kcur = g.concat(kv_cmpr, k_pe, 0, name=f"Kcur-{il}")
            vcur = kv_cmpr
            # build_attn (K-only cache)
            g.expand(qcur)
            g.expand(vcur)
            g.expand(kcur)
            width = lora + rope
            kc = self.kv(il, "k", cfg.type_k, width, self.n_kv)
            k2 = g.view_nd(kcur, (width, T), (kcur.nb[2],), 0)
            g.expand(self.set_rows(kc, k2, k_idxs))
            kr = self.row(cfg.type_k, width)
            kview = g.view_nd(kc, (width, 1, self.n_kv, 1), (kr, kr, kr * self.n_kv), 0)
            vview = g.view_nd(kview, (lora, kview.ne[1], kview.ne[2], kview.ne[3]), (kview.nb[1], kview.nb[2],
                                                                                     kview.nb[3]), 0)
            cur = self.attn_mha(qcur, kview, vview, mask, self.W(b + "attn_v_b.weight"), il)
            cur = g.mul_mat(self.W(b + "attn_output.weight"), cur, name=f"attn_out-{il}")
            if il == last:
                cur = g.get_rows(cur, out_ids)
                inpSA = g.get_rows(inpSA, out_ids)
            ffn_inp = g.add(cur, inpSA, name=f"ffn_inp-{il}")
            cur = self.norm(ffn_inp, b + "ffn_norm.weight", il)
            if il < d.leading_dense:
                cur = self.ffn(il, cur, b + "ffn_up.weight", b + "ffn_gate.weight", b + "ffn_down.weight")
            else:
                moe = self.moe(il, cur, gating="sigmoid", norm_w=True, w_scale=self.mw.expert_weights_scale)
                sh = self.ffn(il, cur, b + "ffn_up_shexp.weight", b + "ffn_gate_shexp.weight",
                              b + "ffn_down_shexp.weight")
                cur = g.add(moe, sh, name=f"ffn_out-{il}")
            cur = g.add(cur, ffn_inp, name=f"l_out-{il}")
            inpL = cur
        res = self.output(inpL)
        g.expand(res)
        return g
