"""Synthesized inventories against real GGUF tensor lists (../shared/models, the SmolLM2 GGUF)."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pytest

from quantforge.errors import InventoryError
from quantforge.inventory import TensorInventory
from quantforge.inventory_synth import (
    MODELS_DIR,
    inventory_from_config_file,
    shipped_ids,
    shipped_inventory,
    shipped_models,
    synthesize_inventory,
)

Row = tuple[str, tuple[int, ...], str]


def read_tsv(path: Path) -> list[Row]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape, dtype, elements, nbytes = line.split("\t")
        dims = tuple(int(x) for x in shape.split(","))
        assert math.prod(dims) == int(elements)
        rows.append((name, dims, dtype))
    return rows


def rows_of(inv: TensorInventory) -> list[Row]:
    return [(t.name, t.shape, t.dtype) for t in inv.tensors]


def diff_report(real: list[Row], syn: list[Row]) -> str:
    r = {n: (s, d) for n, s, d in real}
    s = {n: (sh, d) for n, sh, d in syn}
    missing = [n for n in r if n not in s][:5]
    extra = [n for n in s if n not in r][:5]
    changed = [f"{n}: real {r[n]} synth {s[n]}" for n in r if n in s and r[n] != s[n]][:5]
    return f"missing {missing}; extra {extra}; differing {changed}; counts real {len(real)} synth {len(syn)}"


def assert_same_tensors(real: list[Row], syn: list[Row]) -> None:
    assert len({n for n, _, _ in syn}) == len(syn), "duplicate names in the synthesized list"
    assert len(real) == len(syn) and {n: (s, d) for n, s, d in real} == {n: (s, d) for n, s, d in syn}, (
        diff_report(real, syn)
    )


def per_block(rows: list[Row]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for name, _, _ in rows:
        m = re.match(r"blk\.(\d+)\.(.*)", name)
        if m:
            out[m.group(1)].append(m.group(2))
    return out


# (shipped id, engine, real listing, tensor count, parameter count from base-models.json)
REAL_LISTINGS = [
    ("deepseek-ai/DeepSeek-R1-0528", "mainline", "DeepSeek-V3.1-Terminus.bf16.tsv", 1086, 671026419200),
    ("deepseek-ai/DeepSeek-V3-0324", "mainline", "DeepSeek-V3.1-Terminus.bf16.tsv", 1086, 671026419200),
    ("moonshotai/Kimi-K2-Instruct", "mainline", "Kimi-K2-Thinking.bf16.tsv", 1096, 1026408232448),
    ("Qwen/Qwen3-235B-A22B", None, "Qwen3-VL-235B-A22B-Thinking.bf16.tsv", 1131, 235093634560),
    ("zai-org/GLM-4.5", None, "GLM-4.5.bf16.tsv", 1761, 358337791296),
    ("zai-org/GLM-4.6", None, "GLM-4.6.bf16.tsv", 1759, 356785898816),
    ("zai-org/GLM-4.7", None, "GLM-4.7.bf16.tsv", 1761, 358337791296),
    ("zai-org/GLM-4.5-Air", None, "GLM-4.5-Air.bf16.tsv", 803, 110468824832),
]


@pytest.mark.parametrize(("model_id", "engine", "listing", "count", "n_params"), REAL_LISTINGS)
def test_shipped_inventory_equals_real_bf16_listing(
    shared_dir: Path, model_id: str, engine: str | None, listing: str, count: int, n_params: int
) -> None:
    real = read_tsv(shared_dir / "models" / listing)
    inv = shipped_inventory(model_id, engine=engine)  # type: ignore[arg-type]
    syn = rows_of(inv)
    assert_same_tensors(real, syn)
    assert len(syn) == count
    assert sum(math.prod(s) for _, s, _ in syn) == n_params
    assert inv.kv is None and inv.source == shipped_models()[model_id.lower()].id


def test_converter_order_within_blocks_glm47(shared_dir: Path) -> None:
    # GLM-4.7's checkpoint keeps each layer in one shard: every block's tensors come out in
    # the converter's order (HF names sorted, merged experts after the last expert).
    real = per_block(read_tsv(shared_dir / "models" / "GLM-4.7.bf16.tsv"))
    syn = per_block(rows_of(shipped_inventory("zai-org/GLM-4.7")))
    assert real == syn


def test_converter_order_within_dense_blocks_deepseek_kimi(shared_dir: Path) -> None:
    ds_real = per_block(read_tsv(shared_dir / "models" / "DeepSeek-V3.1-Terminus.bf16.tsv"))
    ds_syn = per_block(rows_of(shipped_inventory("deepseek-ai/DeepSeek-V3.1-Terminus", engine="mainline")))
    for b in ("0", "1", "2"):
        assert ds_real[b] == ds_syn[b]
    kimi_real = per_block(read_tsv(shared_dir / "models" / "Kimi-K2-Thinking.bf16.tsv"))
    kimi_syn = per_block(rows_of(shipped_inventory("moonshotai/Kimi-K2-Instruct")))
    assert kimi_real["0"] == kimi_syn["0"]
    # Layer-major, embeddings first, final norm last.
    names = [t.name for t in shipped_inventory("deepseek-ai/DeepSeek-R1-0528").tensors]
    assert names[0] == "token_embd.weight" and names[-2:] == ["output.weight", "output_norm.weight"]
    assert names.index("blk.2.attn_q_b.weight") < names.index("blk.10.attn_norm.weight")


def test_deepseek_ik_layout_keeps_kv_b_and_adds_2d_k_b_v_b() -> None:
    ik = shipped_inventory("deepseek-ai/DeepSeek-R1-0528", engine="ik")
    main = shipped_inventory("deepseek-ai/DeepSeek-R1-0528", engine="mainline")
    assert ik.layout == "ik" and main.layout == "mainline"
    assert len(ik.tensors) == 1147 and len(main.tensors) == 1086
    assert sum(math.prod(t.shape) for t in ik.tensors) == 672049829376
    shapes = {t.name: t.shape for t in ik.tensors}
    assert shapes["blk.0.attn_kv_b.weight"] == (512, 32768)
    assert shapes["blk.0.attn_k_b.weight"] == (128, 65536)
    assert shapes["blk.0.attn_v_b.weight"] == (512, 16384)
    main_shapes = {t.name: t.shape for t in main.tensors}
    assert main_shapes["blk.60.attn_k_b.weight"] == (128, 512, 128)
    assert main_shapes["blk.60.attn_v_b.weight"] == (512, 128, 128)
    assert "blk.0.attn_kv_b.weight" not in main_shapes
    # Same tensors otherwise, in the same places; ik writes kv_b, k_b, v_b in that order.
    assert [n for n in shapes if "attn_kv_b" not in n] == list(main_shapes)
    blk0 = [t.name for t in ik.tensors if t.name.startswith("blk.0.attn_")]
    i = blk0.index("blk.0.attn_kv_b.weight")
    assert blk0[i : i + 3] == ["blk.0.attn_kv_b.weight", "blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight"]
    assert not any(t.name.startswith("blk.61.") for t in ik.tensors)  # MTP layer not exported
    assert len(shipped_inventory("moonshotai/Kimi-K2-Instruct", engine="ik").tensors) == 1157
    f32 = [t for t in main.tensors if t.dtype == "f32"]
    assert len(f32) == 361
    assert {t.dtype for t in main.tensors} == {"bf16", "f32"}


def test_hparams_use_gguf_keys_for_kv_cache_sizing() -> None:
    r1 = shipped_inventory("deepseek-ai/DeepSeek-R1-0528", engine="mainline").hparams
    assert r1["block_count"] == 61 and r1["leading_dense_block_count"] == 3
    assert r1["attention.kv_lora_rank"] == 512 and r1["rope.dimension_count"] == 64
    assert r1["attention.q_lora_rank"] == 1536
    # mainline writes MLA as one KV head of kv_lora_rank + rope dims.
    assert (r1["attention.head_count_kv"], r1["attention.key_length"], r1["attention.value_length"]) == (
        1,
        576,
        512,
    )
    assert (r1["attention.key_length_mla"], r1["attention.value_length_mla"]) == (192, 128)
    assert (r1["expert_count"], r1["expert_used_count"], r1["expert_shared_count"]) == (256, 8, 1)
    assert r1["expert_feed_forward_length"] == 2048 and r1["vocab_size"] == 129280
    assert r1["context_length"] == 163840 and r1["expert_gating_func"] == 2
    ik = shipped_inventory("deepseek-ai/DeepSeek-R1-0528", engine="ik").hparams
    assert (ik["attention.head_count_kv"], ik["attention.key_length"], ik["attention.value_length"]) == (
        128,
        192,
        128,
    )
    kimi = shipped_inventory("moonshotai/Kimi-K2-Instruct").hparams
    assert (kimi["expert_count"], kimi["leading_dense_block_count"], kimi["attention.head_count"]) == (
        384,
        1,
        64,
    )
    assert kimi["vocab_size"] == 163840
    q = shipped_inventory("Qwen/Qwen3-235B-A22B").hparams
    assert (q["block_count"], q["attention.head_count_kv"], q["attention.key_length"]) == (94, 4, 128)
    assert (q["expert_count"], q["expert_used_count"], q["expert_feed_forward_length"]) == (128, 8, 1536)
    glm = shipped_inventory("zai-org/GLM-4.5").hparams
    assert (glm["block_count"], glm["nextn_predict_layers"], glm["rope.dimension_count"]) == (93, 1, 64)
    assert (glm["attention.head_count_kv"], glm["attention.key_length"]) == (8, 128)
    air = shipped_inventory("zai-org/GLM-4.5-Air").hparams
    assert (air["block_count"], air["leading_dense_block_count"], air["expert_count"]) == (47, 1, 128)


def test_qwen3_30b_a3b_and_f32_counts() -> None:
    inv = shipped_inventory("Qwen/Qwen3-30B-A3B")
    assert len(inv.tensors) == 579 == 48 * 12 + 3
    shapes = {t.name: t.shape for t in inv.tensors}
    assert shapes["blk.47.ffn_down_exps.weight"] == (768, 2048, 128)
    assert shapes["blk.0.attn_q.weight"] == (2048, 4096)
    assert shapes["blk.0.attn_k.weight"] == (2048, 512)
    assert shapes["blk.0.ffn_gate_inp.weight"] == (2048, 128)
    big = shipped_inventory("Qwen/Qwen3-235B-A22B")
    assert sum(t.dtype == "f32" for t in big.tensors) == 471


def test_smollm2_equals_the_real_gguf_headers(smol_q4_1: Path, smol_f16: Path) -> None:
    from gguf import GGUFReader

    from quantforge.gguf_header import read_header

    inv = shipped_inventory("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert inv.arch == "llama" and inv.layout is None and len(inv.tensors) == 272
    syn = rows_of(inv)
    q4 = GGUFReader(str(smol_q4_1))
    # Names, shapes and order of the real Q4_1 file (one safetensors file: sorted HF names).
    assert [(t.name, tuple(int(x) for x in t.shape)) for t in q4.tensors] == [(n, s) for n, s, _ in syn]
    # And exactly the F16 base quantforge builds from: the F32 norms (type 0), F16 (1) for the rest.
    f16 = read_header(smol_f16)
    assert [(t.name, t.shape, {0: "f32", 1: "f16"}[t.type_id]) for t in f16.tensors] == syn
    names = [n for n, _, _ in syn]
    assert names.index("blk.10.attn_norm.weight") < names.index("blk.2.attn_norm.weight")
    assert "output.weight" not in names  # tied embeddings
    kv = {k.removeprefix("llama."): f16.get(k) for k in f16.kv if k.startswith("llama.")}
    assert set(inv.hparams) >= set(kv)
    for key, value in kv.items():
        assert inv.hparams[key] == pytest.approx(value), key
    # The header size is an estimate; it lands within 0.5 % of the real one (1,785,664 bytes).
    assert f16.data_offset == 1785664
    assert (
        inv.metadata_bytes is not None and abs(inv.metadata_bytes - f16.data_offset) / f16.data_offset < 0.005
    )


def test_metadata_estimate_is_plausible_for_big_models() -> None:
    for model_id in shipped_ids():
        meta = shipped_inventory(model_id).metadata_bytes
        assert meta is not None and meta % 32 == 0
        if model_id != "HuggingFaceTB/SmolLM2-135M-Instruct":
            assert 3_000_000 < meta < 15_000_000, (model_id, meta)


# ---- synthesis from configs ----------------------------------------------------------


def test_dense_qwen2_qwen3_llama3_layouts() -> None:
    qwen25 = {
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
        "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    }  # fmt: skip
    inv = synthesize_inventory(qwen25, engine="ik", source="qwen2.5-0.5b", order="single_file")
    shapes = {t.name: (t.shape, t.dtype) for t in inv.tensors}
    assert len(inv.tensors) == 24 * 12 + 2 == 290
    assert shapes["blk.0.attn_q.bias"] == ((896,), "f32")
    assert shapes["blk.0.attn_k.weight"] == ((896, 128), "bf16")
    assert shapes["blk.23.ffn_down.weight"] == ((4864, 896), "bf16")
    assert "output.weight" not in shapes and inv.arch == "qwen2"

    qwen3 = {
        "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
        "vocab_size": 151936, "tie_word_embeddings": True,
    }  # fmt: skip
    inv = synthesize_inventory(qwen3, engine="mainline", source="qwen3-0.6b")
    shapes = {t.name: t.shape for t in inv.tensors}
    assert len(inv.tensors) == 28 * 11 + 2 == 310
    assert shapes["blk.0.attn_q.weight"] == (1024, 2048)  # head_dim * heads, not hidden
    assert shapes["blk.0.attn_output.weight"] == (2048, 1024)
    assert shapes["blk.0.attn_q_norm.weight"] == (128,) and "blk.0.attn_q.bias" not in shapes
    assert inv.hparams["attention.key_length"] == 128

    llama32 = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
        "tie_word_embeddings": True, "rope_scaling": {"rope_type": "llama3", "factor": 32.0},
    }  # fmt: skip
    inv = synthesize_inventory(llama32, engine="ik", source="llama-3.2-1b", order="single_file")
    assert len(inv.tensors) == 1 + 16 * 9 + 2 == 147
    assert (inv.tensors[0].name, inv.tensors[0].shape, inv.tensors[0].dtype) == (
        "rope_freqs.weight",
        (32,),
        "f32",
    )
    untied = {**llama32, "tie_word_embeddings": False}
    sharded = synthesize_inventory(untied, engine="ik", source="x", order="sharded").tensors
    assert sharded[-2].name == "output.weight" and sharded[-2].shape == (2048, 128256)
    # In one safetensors file "lm_head.weight" sorts before every "model." name.
    single = synthesize_inventory(untied, engine="ik", source="x").tensors
    assert [t.name for t in single[:3]] == ["rope_freqs.weight", "output.weight", "token_embd.weight"]


def test_order_single_file_vs_sharded() -> None:
    cfg = {k: v for k, v in shipped_models()["huggingfacetb/smollm2-135m-instruct"].config.items()}
    single = [t.name for t in synthesize_inventory(cfg, engine="ik", source="s", order="single_file").tensors]
    sharded = [t.name for t in synthesize_inventory(cfg, engine="ik", source="s", order="sharded").tensors]
    assert sorted(single) == sorted(sharded)
    assert single.index("blk.10.ffn_up.weight") < single.index("blk.2.attn_norm.weight")
    assert sharded.index("blk.2.attn_v.weight") < sharded.index("blk.10.attn_norm.weight")
    # Without a hint, a small model (<= 5 GB) is taken as one safetensors file.
    guessed = [t.name for t in synthesize_inventory(cfg, engine="ik", source="s").tensors]
    assert guessed == single


def test_inventory_from_config_file(tmp_path: Path) -> None:
    raw = json.loads((MODELS_DIR / "moonshotai--Kimi-K2-Instruct.json").read_text())
    raw.pop("quantforge")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(raw))
    inv = inventory_from_config_file(cfg, engine="ik")
    assert inv.source == str(cfg) and inv.layout == "ik"
    assert [t.name for t in inv.tensors] == [
        t.name for t in shipped_inventory("moonshotai/Kimi-K2-Instruct", engine="ik").tensors
    ]
    # A single-file checkpoint beside the config switches to its sorted order.
    smol = {k: v for k, v in shipped_models()["smollm2-135m"].config.items()}
    d = tmp_path / "smol"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(smol))
    (d / "model.safetensors.index.json").write_text("{}")
    names = [t.name for t in inventory_from_config_file(d / "config.json", engine="ik").tensors]
    assert names.index("blk.2.attn_v.weight") < names.index("blk.10.attn_norm.weight")


def test_shipped_lookup_aliases_case_and_cache() -> None:
    assert shipped_ids() == [
        "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen3-235B-A22B", "Qwen/Qwen3-30B-A3B",
        "Qwen/Qwen3-4B-Instruct-2507", "deepseek-ai/DeepSeek-R1-0528", "deepseek-ai/DeepSeek-V3-0324",
        "moonshotai/Kimi-K2-Instruct", "zai-org/GLM-4.5", "zai-org/GLM-4.5-Air", "zai-org/GLM-4.6",
        "zai-org/GLM-4.7",
    ]  # fmt: skip
    a = shipped_inventory("moonshotai/Kimi-K2-Instruct")
    assert shipped_inventory("MOONSHOTAI/kimi-k2-instruct") is a
    assert shipped_inventory("hf://moonshotai/Kimi-K2-Instruct", engine="mainline") is a
    assert shipped_inventory("moonshotai/Kimi-K2-Thinking").source == "moonshotai/Kimi-K2-Instruct"
    # Non-deepseek architectures have one layout for both engines.
    assert rows_of(shipped_inventory("zai-org/GLM-4.5", engine="ik")) == rows_of(
        shipped_inventory("zai-org/GLM-4.5")
    )


# ---- bad input -----------------------------------------------------------------------


def test_unknown_shipped_id_lists_known_and_nearest() -> None:
    with pytest.raises(InventoryError) as exc:
        shipped_inventory("deepseek-ai/DeepSeek-R1-0529")
    line = exc.value.one_line()
    assert exc.value.exit_code == 2
    assert line.startswith(
        "deepseek-ai/DeepSeek-R1-0529: no shipped inventory for 'deepseek-ai/DeepSeek-R1-0529'"
    )
    assert "did you mean deepseek-ai/DeepSeek-R1-0528?" in line
    assert "zai-org/GLM-4.5-Air" in line and "config.json" in line
    with pytest.raises(InventoryError, match=r"did you mean Qwen/Qwen3-235B-A22B\?"):
        shipped_inventory("Qwen3-235B-A22B")


def test_unsupported_architecture_names_the_supported_ones() -> None:
    with pytest.raises(InventoryError) as exc:
        synthesize_inventory(
            {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3"}, engine="ik", source="cfg.json"
        )
    line = exc.value.one_line()
    assert line.startswith(
        "cfg.json: architectures: cannot synthesize a tensor list for architectures ['Gemma3ForCausalLM']"
    )
    assert "DeepseekV3ForCausalLM" in line and "glm4_moe" in line and "qwen3_moe" in line
    with pytest.raises(
        InventoryError, match=r"cfg.json: model_type: cannot synthesize a tensor list for model_type 'mamba'"
    ):
        synthesize_inventory({"model_type": "mamba"}, engine="ik", source="cfg.json")


def test_missing_or_bad_fields_are_named(tmp_path: Path) -> None:
    cfg = dict(shipped_models()["deepseek-ai/deepseek-r1-0528"].config)
    del cfg["kv_lora_rank"]
    with pytest.raises(InventoryError) as exc:
        synthesize_inventory(cfg, engine="ik", source="r1/config.json")
    assert exc.value.one_line() == (
        "r1/config.json: kv_lora_rank: config.json lacks the field 'kv_lora_rank' "
        "(give the model's complete config.json from Hugging Face)"
    )
    with pytest.raises(
        InventoryError,
        match=r"x: hidden_size: config.json field 'hidden_size' must be a non-negative integer, not '4096'",
    ):
        synthesize_inventory({"model_type": "qwen3", "hidden_size": "4096"}, engine="ik", source="x")
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "model_type": "llama",\n  "hidden_size": 576,,\n}')
    with pytest.raises(InventoryError) as exc:
        inventory_from_config_file(bad, engine="ik")
    assert exc.value.where == f"{bad}:3:22"
    with pytest.raises(InventoryError, match="config.json not found"):
        inventory_from_config_file(tmp_path / "nope" / "config.json", engine="ik")


def test_cli_unknown_model_id_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from quantforge.cli import main

    assert main(["inventory", "moonshotai/Kimi-K3-Instruct"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "quantforge: error: moonshotai/Kimi-K3-Instruct: no shipped inventory for "
        "'moonshotai/Kimi-K3-Instruct' "
        "(did you mean moonshotai/Kimi-K2-Instruct? shipped: HuggingFaceTB/SmolLM2-135M-Instruct, "
    )


def test_cli_lists_a_shipped_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    from quantforge.cli import main

    assert main(["inventory", "deepseek-ai/DeepSeek-R1-0528", "--engine", "ik", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    text = json.dumps(data)
    assert "blk.0.attn_kv_b.weight" in text and "deepseek2" in text
