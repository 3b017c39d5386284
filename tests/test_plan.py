"""Expansion, lint and emission on the real SmolLM2 inventory and a small MoE inventory.

The exactness against the real binaries lives in ``test_plan_differential.py``; these tests
pin each rule and each lint finding on a small recipe.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantforge.errors import RecipeError
from quantforge.inventory import TensorEntry, TensorInventory, load_inventory
from quantforge.plan import (
    MIXTURE,
    collapse,
    expand,
    group_totals,
    layer_totals,
    lint,
    quantize_command,
    read_imatrix_meta,
    shell_join,
    tensor_group,
)
from quantforge.plan._engine import skip_reason
from quantforge.recipe import parse_recipe


@pytest.fixture(scope="module")
def smol(smol_f16: Path) -> TensorInventory:
    return load_inventory(smol_f16)


def _moe_inventory() -> TensorInventory:
    """A small deepseek2-like inventory (data only): 2 layers, 4 experts, 196 rows in one tensor."""
    t: list[TensorEntry] = [TensorEntry(name="token_embd.weight", shape=(512, 1000), dtype="bf16")]
    for i in range(2):
        p = f"blk.{i}."
        t += [
            TensorEntry(name=p + "attn_norm.weight", shape=(512,), dtype="f32"),
            TensorEntry(name=p + "attn_q.weight", shape=(512, 512), dtype="bf16"),
            TensorEntry(name=p + "attn_kv_a_mqa.weight", shape=(512, 196), dtype="bf16"),
            TensorEntry(name=p + "ffn_gate_inp.weight", shape=(512, 4), dtype="f32"),
            TensorEntry(name=p + "ffn_up_exps.weight", shape=(512, 256, 4), dtype="bf16"),
            TensorEntry(name=p + "ffn_gate_exps.weight", shape=(512, 256, 4), dtype="bf16"),
            TensorEntry(name=p + "ffn_down_exps.weight", shape=(256, 512, 4), dtype="bf16"),
            TensorEntry(name=p + "ffn_up_shexp.weight", shape=(512, 256), dtype="bf16"),
            TensorEntry(name=p + "exp_probs_b.bias", shape=(4,), dtype="f32"),
        ]
    t += [TensorEntry(name="output_norm.weight", shape=(512,), dtype="f32"),
          TensorEntry(name="output.weight", shape=(512, 1000), dtype="bf16")]  # fmt: skip
    return TensorInventory(
        source="moe-test", arch="deepseek2", layout="ik",
        hparams={"block_count": 2, "expert_count": 4, "head_count": 8, "head_count_kv": 8},
        tensors=tuple(t), kv=None, metadata_bytes=None,
    )  # fmt: skip


def _recipe(
    rules: str = "", *, engine: str = "ik", ftype: str = "IQ4_K", default: str = "iq4_k", extra: str = ""
):  # type: ignore[no-untyped-def]
    text = (
        f'[model]\nbase = "x.gguf"\nengine = "{engine}"\n{extra}\n[[quant]]\nname = "v"\nftype = "{ftype}"\n'
        f'default = "{default}"\nrules = [\n{rules}\n]\n'
    )
    return parse_recipe(text, path="t.toml")


def _codes(findings) -> list[str]:  # type: ignore[no-untyped-def]
    return [f.code for f in findings]


# -- engine rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "reason"),
    [
        ("blk.0.attn_norm.weight", (576,), "f32", "not quantized: 1-D"),
        ("blk.0.ffn_gate_inp.weight", (512, 4), "f32", "not quantized: expert router (ffn_gate_inp)"),
        ("blk.0.attn_q_a_norm.weight", (512, 2), "f32", "not quantized: norm"),
        ("blk.0.exp_probs_b.bias", (4, 4), "f32", "not quantized: not a .weight"),
        ("blk.0.ffn_down_exps.weight", (256, 512, 1), "bf16", None),
        ("blk.0.attn_k.weight", (576, 1, 1), "f16", "not quantized: 1-D"),
        ("blk.0.attn_k.weight", (576, 192), "f16", None),
    ],
)
def test_skip_reason(name: str, shape: tuple[int, ...], dtype: str, reason: str | None) -> None:
    assert skip_reason("ik", name, shape, dtype) == reason


def test_groups() -> None:
    assert tensor_group("token_embd.weight") == "token_embd"
    assert tensor_group("output.weight") == "output"
    assert tensor_group("blk.3.attn_kv_b.weight") == "attention"
    assert tensor_group("blk.3.ffn_down_shexp.weight") == "shared_experts"
    assert tensor_group("blk.3.ffn_down_exps.weight") == "routed_experts"
    assert tensor_group("blk.3.ffn_down.weight") == "dense_ffn"
    assert tensor_group("blk.3.ffn_norm.weight") == "norms"
    assert tensor_group("rope_freqs.weight") == "other"


def test_expand_smol_numbers(smol: TensorInventory) -> None:
    plan = expand(_recipe('{match="ffn_down", type="q6_K"},'), None, smol, imatrix=False)
    assert plan.n_params == 134_515_008
    assert len(plan.tensors) == 272
    assert plan.bpw == pytest.approx(8 * plan.tensor_bytes / plan.n_params)
    down = next(t for t in plan.tensors if t.name == "blk.7.ffn_down.weight")
    assert (down.type, down.bytes, down.rule, down.layer, down.group) == (
        "q6_K",
        725_760,
        "rules[0]",
        7,
        "dense_ffn",
    )
    q = next(t for t in plan.tensors if t.name == "blk.7.attn_q.weight")
    assert (q.requested_type, q.type, q.rule) == ("iq4_k", "q5_0", "default")
    assert q.note == "fallback: 576 columns not divisible by 256 for iq4_k"
    norm = next(t for t in plan.tensors if t.name == "blk.7.attn_norm.weight")
    assert (norm.requested_type, norm.type, norm.rule, norm.bytes) == (
        None,
        "f32",
        "not quantized: 1-D",
        2304,
    )
    assert sum(group_totals(plan).values()) == plan.tensor_bytes
    assert len(layer_totals(plan)) == 30
    assert plan.file_bytes_exact and plan.file_bytes is not None


def test_collapse_rows(smol: TensorInventory) -> None:
    rows = collapse(
        expand(_recipe('{match="ffn_down", layers="0-9", type="q6_K"},'), None, smol, imatrix=False)
    )
    by = {r.pattern: r for r in rows}
    assert by["blk.[0-9].ffn_down.weight"].count == 10
    assert by["blk.[0-9].ffn_down.weight"].type == "q6_K"
    assert by["blk.[10-29].ffn_down.weight"].type == "iq4_k"
    assert by["blk.[0-29].ffn_up.weight"].count == 30
    assert by["token_embd.weight"].count == 1


def test_moe_rules_experts_and_deinterleave() -> None:
    inv = _moe_inventory()
    plan = expand(
        _recipe('{match="exps", type="iq4_k_r4"},{match="attn_kv_a_mqa", type="q8_0_r8"},'), None, inv
    )
    by = {t.name: t for t in plan.tensors}
    assert by["blk.0.ffn_up_exps.weight"].type == "iq4_k_r4"
    assert by["blk.0.ffn_up_exps.weight"].bytes == 4 * 256 * (512 // 256 * 144)
    # 196 rows do not divide by 8: the engine silently writes the base type
    assert by["blk.0.attn_kv_a_mqa.weight"].type == "q8_0"
    assert by["blk.0.ffn_gate_inp.weight"].type == "f32"
    assert by["output.weight"].type == "iq4_k"
    assert by["blk.1.ffn_up_shexp.weight"].group == "shared_experts"
    assert not plan.file_bytes_exact


def test_imatrix_meta(smol_imatrix: Path) -> None:
    m = read_imatrix_meta(smol_imatrix)
    assert (len(m.entries), m.chunks, m.dataset) == (210, 40, "calib.txt")
    assert "blk.0.ffn_down.weight" in m.entries


def test_imatrix_meta_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.imatrix"
    bad.write_bytes(b"\xff\xff\xff\x7fjunk")
    with pytest.raises(Exception, match="imatrix"):
        read_imatrix_meta(bad)


def test_imatrix_path_changes_the_size(smol: TensorInventory, smol_imatrix: Path) -> None:
    r = _recipe()
    a = expand(r, None, smol, imatrix=str(smol_imatrix))
    b = expand(r, None, smol, imatrix=False)
    # quantize.imatrix.{file,dataset,entries_count,chunks_count} are added to the header
    extra = (
        (8 + 21 + 4 + 8 + len(str(smol_imatrix))) + (8 + 24 + 4 + 8 + 9) + (8 + 30 + 4 + 4) + (8 + 29 + 4 + 4)
    )
    assert a.header_bytes - b.header_bytes in range(extra - 31, extra + 32)


# -- emission ------------------------------------------------------------------------------------


def test_ik_emission_and_command(smol: TensorInventory) -> None:
    plan = expand(
        _recipe('{match="ffn_down", type="Q6_K"},{match="attn_", layers="0-2,29", type="q8_0"},'), None, smol
    )
    assert plan.quantize_args == ["--custom-q", r"ffn_down=q6_K,blk\.([0-2]|29)\.attn_=q8_0,.*=iq4_k"]
    cmd = quantize_command(
        plan,
        binary="/b/llama-quantize",
        input_path="in.gguf",
        output_path="out.gguf",
        imatrix="i.dat",
        threads=2,
    )
    assert cmd == [
        "/b/llama-quantize",
        "--imatrix",
        "i.dat",
        "--custom-q",
        plan.quantize_args[1],
        "in.gguf",
        "out.gguf",
        "IQ4_K",
        "2",
    ]
    assert shell_join(cmd).startswith("/b/llama-quantize --imatrix i.dat --custom-q 'ffn_down=q6_K,")


def test_mainline_emission(smol: TensorInventory) -> None:
    plan = expand(
        _recipe('{match="ffn_down", type="q6_k"},', engine="mainline", ftype="Q4_K_M", default="q4_K"),
        None,
        smol,
    )
    assert plan.quantize_args == ["--tensor-type", "ffn_down=q6_K", "--tensor-type", ".*=q4_K"]


def test_ik_comma_in_regex_cannot_be_emitted(smol: TensorInventory) -> None:
    with pytest.raises(RecipeError, match="splits rules at ','") as exc:
        expand(_recipe(r'{match="blk\\.[0-9]{1,2}\\.ffn_down", type="q6_K"},'), None, smol)
    assert exc.value.where == "t.toml:10 quant[v].rules[0]"


def test_mainline_uppercase_regex_cannot_be_emitted(smol: TensorInventory) -> None:
    with pytest.raises(RecipeError, match="lower-cases"):
        expand(
            _recipe(
                r'{match="ffn_down\\S*", type="q6_K"},', engine="mainline", ftype="Q4_K_M", default="q4_K"
            ),
            None,
            smol,
        )


def test_equals_in_regex_cannot_be_emitted(smol: TensorInventory) -> None:
    with pytest.raises(RecipeError, match="cannot contain '='"):
        expand(_recipe('{match="ffn_(?=down)", type="q6_K"},'), None, smol)


# -- lint: one test per finding ----------------------------------------------------------------


def test_lint_clean(smol: TensorInventory) -> None:
    assert lint(_recipe('{match="ffn_down", type="q6_K"},', default="q8_0"), None, smol) == []


def test_lint_matches_nothing(smol: TensorInventory) -> None:
    f = lint(_recipe('{match="ffn_down_exps", type="q6_K"},', default="q8_0"), None, smol)
    assert _codes(f) == ["matches-nothing"]
    assert f[0].where == "t.toml:10 quant[v].rules[0]"


def test_lint_shadowed(smol: TensorInventory) -> None:
    f = lint(
        _recipe('{match="ffn_", type="q8_0"},{match="ffn_down", type="q6_K"},', default="q8_0"), None, smol
    )
    assert _codes(f) == ["shadowed"]
    assert f[0].count == 30 and f[0].examples[0] == "blk.0.ffn_down.weight"


def test_lint_fallback(smol: TensorInventory) -> None:
    f = lint(_recipe('{match="attn_", type="iq4_ks"},', default="q8_0"), None, smol)
    assert _codes(f) == ["fallback"]
    assert f[0].message == "iq4_ks falls back to iq4_nl on 120 tensors (row length not a multiple of 256)"
    assert f[0].count == 120 and len(f[0].examples) == 5


def test_lint_r4_on_token_embd(smol: TensorInventory) -> None:
    f = lint(_recipe('{match="token_embd", type="q8_0_r8"},', default="q8_0"), None, smol)
    assert _codes(f) == ["interleaved-token-embd"]
    assert "q8_0_r8 is written as q8_0" in f[0].message


def test_lint_needs_imatrix(smol: TensorInventory) -> None:
    f = lint(_recipe('{match="ffn_down", type="iq2_xxs"},', default="q8_0"), None, smol, imatrix=False)
    assert _codes(f) == ["needs-imatrix"]
    assert f[0].severity == "error" and f[0].count == 30


def test_lint_needs_imatrix_satisfied(smol: TensorInventory, smol_imatrix: Path) -> None:
    assert (
        lint(
            _recipe('{match="ffn_down", type="iq2_xxs"},', default="q8_0"),
            None,
            smol,
            imatrix=str(smol_imatrix),
        )
        == []
    )


def test_lint_fmoe_mismatch() -> None:
    r = _recipe('{match="ffn_up_exps", type="iq3_k"},{match="ffn_gate_exps", type="iq4_k"},', default="q8_0")
    f = lint(r, None, _moe_inventory())
    assert "fmoe-mismatch" in _codes(f)
    assert next(x for x in f if x.code == "fmoe-mismatch").examples == ("blk.0", "blk.1")


def test_lint_no_cuda_kernel_on_gpu() -> None:
    r = _recipe('{match="exps", type="q4_k_r4", place="gpu"},', default="q8_0")
    f = lint(r, None, _moe_inventory())
    assert _codes(f) == ["no-cuda-kernel"]
    assert f[0].count == 6


def test_lint_deinterleaved() -> None:
    f = lint(_recipe('{match="attn_kv_a_mqa", type="q8_0_r8"},', default="q8_0"), None, _moe_inventory())
    assert _codes(f) == ["deinterleaved"]
    assert f[0].message == "q8_0_r8 becomes q8_0 on 2 tensors (row count not a multiple of 8)"


def test_lint_ftype_not_quantized(smol: TensorInventory) -> None:
    f = lint(_recipe(ftype="F16", default="q8_0"), None, smol)
    assert _codes(f)[0] == "ftype-not-quantized" and f[0].severity == "error"


def test_lint_not_emittable(smol: TensorInventory) -> None:
    f = lint(_recipe(r'{match="blk\\.[0-9]{1,2}\\.ffn_down", type="q6_K"},', default="q8_0"), None, smol)
    assert _codes(f) == ["not-emittable"]


def test_lint_mixture_without_default(smol: TensorInventory) -> None:
    r = _recipe('{match="ffn_down", type="q6_K"},', default="q8_0")
    r = r.model_copy(update={"quants": (r.quants[0].model_copy(update={"default": MIXTURE}),)})
    f = lint(r, None, smol)
    assert _codes(f)[0] == "no-default"
    assert f[0].count == 181  # 120 attn + 60 ffn_gate/ffn_up + token_embd


def test_lint_ignores_rules_overridden_through_extends(smol: TensorInventory) -> None:
    text = """[model]
base = "x.gguf"
engine = "ik"
[[quant]]
name = "big"
ftype = "IQ4_K"
default = "q8_0"
rules = [{ match = "ffn_down", type = "q6_K" }]
[[quant]]
name = "small"
extends = "big"
rules = [{ match = "ffn_down", type = "iq4_k" }]
"""
    r = parse_recipe(text, path="t.toml")
    assert lint(r, "small", smol) == []
    plan = expand(r, "small", smol)
    assert plan.quantize_args == ["--custom-q", "ffn_down=iq4_k,ffn_down=q6_K,.*=q8_0"]


def test_lint_trusts_a_declared_imatrix(smol: TensorInventory) -> None:
    r = _recipe(
        '{match="ffn_down", type="iq2_xxs"},', default="q8_0", extra='[imatrix]\ncorpus = "calib.txt"\n'
    )
    assert lint(r, None, smol) == []
    assert not expand(r, None, smol).file_bytes_exact  # the imatrix KV strings are not known yet


def test_python_only_regex_cannot_be_emitted(smol: TensorInventory) -> None:
    with pytest.raises(RecipeError, match="std::regex"):
        expand(_recipe('{match="(?<=blk\\\\.0\\\\.)ffn_down", type="q6_K"},'), None, smol)
