"""Recipe dialects in and out, on real published examples (tests/data/dialects, sources cited).

Each example is imported into a recipe, planned, compared with the size its publisher printed,
exported back into its dialect and re-imported: the rules and every tensor's planned type must
survive the round trip. The mainline dialect is also run through the real llama-quantize.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.cli import main
from quantforge.errors import UsageError
from quantforge.gguf_header import read_header
from quantforge.inventory import load_inventory
from quantforge.plan import expand, lint, quantize_command, recipe_inventory
from quantforge.publish.dialects import (
    detect_dialect,
    export_dialect,
    import_dialect,
    parse_dialect,
    rules_of,
)
from quantforge.recipe import parse_recipe

DATA = Path(__file__).parent / "data" / "dialects"
# https://huggingface.co/lmganon123/DeepSeek-V3-0324_IK_GGUF_Q2: "IQ2_XXS 169.590 GiB (2.168 BPW)" (ubergarm's
# recipe)
LMGANON = DATA / "lmganon123-DeepSeek-V3-0324-IQ2_XXS.custom-q.sh"
# https://huggingface.co/sokann/DeepSeek-V3-0324-GGUF: "The file size is 132998282944 bytes, or 123.864 GiB."
SOKANN = DATA / "sokann-DeepSeek-V3-0324-IQ1_S_R4.custom-q.txt"
# https://github.com/Thireus/GGUF-Tool-Suite/blob/main/recipe_examples/ik_harmonized_recipes/
#   DeepSeek-R1-0528.THIREUS-3.1023bpw-3.3467ppl.242GB-GGUF_11GB-GPU_230GB-CPU.569b7f6_eba5f00.recipe
#   "# GPU+CPU Total: 242.53 GiB (83.2%)", "# -Average BPW: 3.1023" (row metadata not counted)
THIREUS = (
    DATA / "DeepSeek-R1-0528.THIREUS-3.1023bpw-3.3467ppl.242GB-GGUF_11GB-GPU_230GB-CPU.569b7f6_eba5f00.recipe"
)


def _recipe(res, tmp_path: Path):  # type: ignore[no-untyped-def]
    p = tmp_path / "imported.toml"
    p.write_text(res.text)
    return parse_recipe(res.text, path=str(p))


def test_dialects_are_detected() -> None:
    assert detect_dialect(LMGANON.read_text(), LMGANON.name) == "custom-q"
    assert detect_dialect(SOKANN.read_text(), SOKANN.name) == "custom-q"
    assert detect_dialect(THIREUS.read_text(), THIREUS.name) == "thireus"
    assert detect_dialect("llama-quantize --tensor-type attn_q=q8_0 in.gguf out.gguf Q4_K_M") == "tensor-type"
    assert detect_dialect("attn_q=q8_0\nffn_down=q6_k\n") == "tensor-type-file"
    assert detect_dialect("attn_k=q8_0,.*=iq4_ks") == "custom-q"


def test_published_custom_q_plans_to_its_published_size_and_round_trips(tmp_path: Path) -> None:
    res = import_dialect(str(LMGANON), model="deepseek-ai/DeepSeek-V3-0324", layout="ik", ftype="IQ2_XXS")
    assert (res.dialect, res.engine, res.rules, res.dropped) == ("custom-q", "ik", 25, ())
    recipe = _recipe(res, tmp_path)
    plan = expand(recipe, None, recipe_inventory(recipe), imatrix=False)
    assert f"{plan.tensor_bytes / 2**30:.3f} GiB ({plan.bpw:.3f} BPW)" == "169.590 GiB (2.168 BPW)"
    assert {t.rule for t in plan.tensors if t.requested_type} <= {
        f"rules[{i}]" for i in range(25)
    }  # nothing unmatched
    # out: exactly the --custom-q argument the shell pipeline of the card makes; in again: the same rules
    exported = export_dialect(recipe, None, "custom-q")
    original = rules_of(LMGANON.read_text(), "custom-q")
    assert rules_of(exported, "custom-q") == original
    one_line = tmp_path / "one-line.txt"
    one_line.write_text(exported)
    again = _recipe(import_dialect(str(one_line), model="deepseek-ai/DeepSeek-V3-0324", layout="ik",
                                   ftype="IQ2_XXS"), tmp_path)  # fmt: skip
    assert [(r.pattern, r.type) for r in again.quants[0].rules] == [
        (r.pattern, r.type) for r in recipe.quants[0].rules
    ]


def test_published_custom_q_with_norm_rules_matches_the_file_bytes(tmp_path: Path) -> None:
    res = import_dialect(str(SOKANN), model="deepseek-ai/DeepSeek-V3-0324", layout="ik", ftype="IQ1_S_R4")
    # output_norm, ffn_norm and exp_probs_b rules meet only tensors llama-quantize copies as they are.
    assert len(res.dropped) == 7 and res.dropped[0] == r"output_norm\.weight=iq4_ks"
    recipe = _recipe(res, tmp_path)
    plan = expand(recipe, None, recipe_inventory(recipe), imatrix=False)
    assert plan.file_bytes is not None
    assert abs(plan.file_bytes - 132_998_282_944) / 132_998_282_944 < 1e-4
    assert f"{plan.file_bytes / 2**30:.3f}" == "123.864"
    codes = [f.code for f in lint(recipe, None, recipe_inventory(recipe))]
    # The published rule list starts with 'output\.weight', which also catches every attn_output
    # (harmless here: the attn_ rules give them the same iq4_ks); lint says so.
    assert codes.count("multi-kind") == 1 and "matches-nothing" not in codes


def test_thireus_recipe_plans_its_summary_and_round_trips(tmp_path: Path) -> None:
    res = import_dialect(str(THIREUS), model="deepseek-ai/DeepSeek-R1-0528", layout="ik")
    assert res.dialect == "thireus" and res.engine == "ik" and len(res.dropped) == 7  # the =f32 lines
    recipe = _recipe(res, tmp_path)
    inv = recipe_inventory(recipe)
    plan = expand(recipe, None, inv, imatrix=False)
    # Thireus' totals leave ik's per-row scales out: they are the weight bytes.
    assert f"{plan.weight_bytes / 2**30:.2f}" == "242.53"
    assert f"{plan.bpw:.4f}" == "3.1023"
    assert plan.row_meta_bytes > 0.18 * 2**30
    text = export_dialect(recipe, None, "thireus", plan=plan)
    out = tmp_path / "again.recipe"
    out.write_text(text)
    again = _recipe(import_dialect(str(out), model="deepseek-ai/DeepSeek-R1-0528", layout="ik"), tmp_path)
    replan = expand(again, None, inv, imatrix=False)
    assert {t.name: t.type for t in replan.tensors} == {t.name: t.type for t in plan.tensors}
    assert replan.tensor_bytes == plan.tensor_bytes


def test_mainline_tensor_type_through_the_real_llama_quantize(
    smol_f16: Path, mainline_bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # llama-quantize's own documented example (`--help`, and the Debian manual page
    # https://dyn.manpages.debian.org/unstable/llama.cpp-tools/llama-quantize.1.en.html):
    # "example: --tensor-type attn_q=q8_0", with an upper-case spelling the tool lower-cases.
    cmd = tmp_path / "cmd.txt"
    cmd.write_text(
        "llama-quantize --tensor-type ATTN_Q=q8_0 --tensor-type ffn_down=q6_K model-f16.gguf out.gguf "
        "Q4_K_M\n"
    )
    res = import_dialect(str(cmd), model=str(smol_f16), engine="mainline", ftype="Q4_K_M")
    recipe = _recipe(res, tmp_path)
    assert [(r.pattern, r.type) for r in recipe.quants[0].rules] == [("attn_q", "q8_0"), ("ffn_down", "q6_K")]
    inv = load_inventory(smol_f16, engine="mainline")
    plan = expand(recipe, None, inv, imatrix=False)
    args = quantize_command(plan, binary=mainline_bin_dir / "llama-quantize", input_path=smol_f16,
                            output_path=tmp_path / "out.gguf", threads=2)  # fmt: skip
    assert args[1:5] == ["--tensor-type", "attn_q=q8_0", "--tensor-type", "ffn_down=q6_K"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = {
        t.name: catalogue("mainline").by_id(t.type_id).name
        for t in read_header(tmp_path / "out.gguf").tensors
    }  # type: ignore[union-attr]
    assert written == {t.name: t.type for t in plan.tensors}
    assert (tmp_path / "out.gguf").stat().st_size == plan.file_bytes
    # --tensor-type-file out and in again: the same rules
    assert main(["recipe", "export", str(tmp_path / "imported.toml"), "--dialect", "tensor-type-file"]) == 0
    file_text = capsys.readouterr().out
    assert file_text == "attn_q=q8_0\nffn_down=q6_K\n"
    assert rules_of(file_text, "tensor-type-file") == [("attn_q", "q8_0"), ("ffn_down", "q6_K")]
    assert main(["recipe", "export", str(tmp_path / "imported.toml"), "--dialect", "tensor-type"]) == 0
    assert capsys.readouterr().out == "--tensor-type attn_q=q8_0 --tensor-type ffn_down=q6_K\n"


def test_cli_import_of_a_rule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v3.toml"
    assert main(["recipe", "import", str(LMGANON), "--model", "deepseek-ai/DeepSeek-V3-0324", "--layout",
                 "ik",
                 "--ftype", "IQ2_XXS", "-o", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"wrote {out}: 25 rule(s) from a custom-q file, engine ik")
    assert main(["recipe", "show", str(out), "--json"]) == 0
    assert '"tensor_gib": 169.59' in capsys.readouterr().out
    assert main(["recipe", "import", str(LMGANON)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the model it is for" in err[0]


def test_a_bad_rule_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a regex=type rule") as e:
        parse_dialect("attn_=q8_0\n# comment\nffn_down q6_K\n", "custom-q", where="x.txt")
    assert e.value.where == "x.txt:3"
