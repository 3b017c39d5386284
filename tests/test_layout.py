"""Layouts: a recipe plans the converter layout it names or the file has, not its engine's.

DeepSeek/Kimi (deepseek2) GGUFs come in two layouts: ik_llama.cpp's converter keeps
``attn_kv_b`` next to 2-D ``attn_k_b``/``attn_v_b`` (1147 tensors for V3/R1), mainline's writes
3-D ``attn_k_b``/``attn_v_b`` and no ``attn_kv_b`` (1086). ik loads both; mainline only its own.
Many published BF16s (V3.1-Terminus, Kimi-K2-Thinking) are mainline conversions that people
quantize with ik recipes: those must plan the file's 1086 tensors exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.errors import InventoryError
from quantforge.inventory import TensorEntry, TensorInventory, load_inventory
from quantforge.plan import expand, lint, recipe_inventory
from quantforge.recipe import load_recipe, parse_recipe
from quantforge.shipped import recipes_dir


def _tsv_inventory(path: Path, *, arch: str, layout: str, like: TensorInventory) -> TensorInventory:
    """The real BF16 listing (Thireus' tensors.bf16.map, converted to TSV in ../shared/models)."""
    tensors = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape, dtype, elements, _nbytes = line.split("\t")
        dims = tuple(int(x) for x in shape.split(","))
        assert math.prod(dims) == int(elements)
        tensors.append(TensorEntry(name=name, shape=dims, dtype=dtype))
    return TensorInventory(source=str(path), arch=arch, layout=layout,
                           hparams=dict(like.hparams),  # type: ignore[arg-type]
                           tensors=tuple(tensors), kv=None, metadata_bytes=like.metadata_bytes)  # fmt: skip


def _with_layout(name: str, layout: str | None, tmp_path: Path,
                 model_id: str | None = None):  # type: ignore[no-untyped-def]
    text = (recipes_dir() / name).read_text()
    if model_id:
        text = text.replace('id = "deepseek-ai/DeepSeek-R1-0528"', f'id = "{model_id}"', 1)
    if layout:
        text = text.replace('engine = "ik"', f'engine = "ik"\nlayout = "{layout}"', 1)
    p = tmp_path / name
    p.write_text(text)
    return load_recipe(p)


def test_ik_recipe_plans_a_mainline_layout_deepseek_exactly(shared_dir: Path, tmp_path: Path) -> None:
    recipe = _with_layout(
        "deepseek-r1-0528.toml", "mainline", tmp_path, model_id="deepseek-ai/DeepSeek-V3.1-Terminus"
    )
    inv = recipe_inventory(recipe)
    assert inv.layout == "mainline" and len(inv.tensors) == 1086
    real = _tsv_inventory(shared_dir / "models" / "DeepSeek-V3.1-Terminus.bf16.tsv", arch="deepseek2",
                          layout="mainline", like=inv)  # fmt: skip
    ik_default = recipe_inventory(_with_layout("deepseek-r1-0528.toml", None, tmp_path))
    assert ik_default.layout == "ik" and len(ik_default.tensors) == 1147
    for v in recipe.quants:
        planned = expand(recipe, v.name, inv, imatrix=False)
        on_real = expand(recipe, v.name, real, imatrix=False)
        assert {t.name: (t.type, t.bytes) for t in planned.tensors} == {
            t.name: (t.type, t.bytes) for t in on_real.tensors
        }
        assert planned.tensor_bytes == on_real.tensor_bytes
        assert {f.code for f in lint(recipe, v.name, inv, imatrix=False)} & {
            "layout",
            "layout-default",
        } == set()
    # What planning the ik layout instead would have got wrong (the issue: 0.5 to 1.0 GiB).
    wrong = expand(recipe.model_copy(update={"model": recipe.model.model_copy(update={"layout": None})}),
                   "IQ2_K_R4", ik_default, imatrix=False)  # fmt: skip
    right = expand(recipe, "IQ2_K_R4", inv, imatrix=False)
    kv_b = [t for t in wrong.tensors if t.name.endswith(".attn_kv_b.weight")]
    assert len(kv_b) == 61 and kv_b[0].type == "q8_0"
    assert wrong.tensor_bytes - right.tensor_bytes == sum(t.bytes for t in kv_b) == 1_087_373_312  # 1.01 GiB


def test_mainline_engine_cannot_load_the_ik_layout(tmp_path: Path) -> None:
    text = (
        '[model]\nid = "deepseek-ai/DeepSeek-R1-0528"\nengine = "mainline"\nlayout = "ik"\n'
        '[[quant]]\nname = "Q4_K_M"\nftype = "Q4_K_M"\ndefault = "q4_K"\n'
    )
    recipe = parse_recipe(text, path=str(tmp_path / "r.toml"))
    inv = recipe_inventory(recipe)
    assert inv.layout == "ik"
    errors = [f for f in lint(recipe, None, inv) if f.severity == "error"]
    assert [f.code for f in errors] == ["layout"]
    assert "llama.cpp cannot load the ik layout of deepseek2" in errors[0].message
    # The same recipe with the mainline layout (its engine's usual one) is clean of it.
    ok = parse_recipe(text.replace('layout = "ik"\n', ""), path=str(tmp_path / "r.toml"))
    assert recipe_inventory(ok).layout == "mainline"
    assert "layout" not in {f.code for f in lint(ok, None, recipe_inventory(ok))}


def test_mainline_written_recipe_on_the_ik_layout_says_what_falls_to_the_default(tmp_path: Path) -> None:
    # Rules for every kind of the mainline layout; the ik layout's 61 attn_kv_b match none of them.
    rules = """rules = [
  { match = 'attn_k_b', type = "q8_0" },
  { match = 'attn_v_b', type = "q8_0" },
  { match = 'attn_(q_a|q_b|kv_a_mqa|output)', type = "q8_0" },
  { match = '^token_embd\\.weight$', type = "q8_0" },
  { match = '^output\\.weight$', type = "q8_0" },
  { match = 'ffn_', type = "q4_K" },
]"""
    text = ('[model]\nid = "deepseek-ai/DeepSeek-R1-0528"\nengine = "ik"\nlayout = '
            '"ik"\n[[quant]]\nname = "v"\n'
            f'ftype = "Q4_K_M"\ndefault = "q4_K"\n{rules}\n')  # fmt: skip
    recipe = parse_recipe(text, path=str(tmp_path / "r.toml"))
    findings = lint(recipe, None, recipe_inventory(recipe))
    f = next(x for x in findings if x.code == "layout-default")
    assert f.severity == "warning" and f.count == 61
    assert "attn_kv_b.weight ×61" in f.message and "default q4_K" in f.message
    assert f.examples[0] == "blk.0.attn_kv_b.weight"


def test_rule_for_attn_kv_b_on_the_mainline_layout_says_why_it_matches_nothing(tmp_path: Path) -> None:
    text = ('[model]\nid = "deepseek-ai/DeepSeek-R1-0528"\nengine = "ik"\nlayout = '
            '"mainline"\n[[quant]]\nname = "v"\n'
            "ftype = \"IQ4_KS\"\ndefault = \"iq4_ks\"\nrules = [ { match = 'attn_kv_b', type = "
            "\"q8_0\" } ]\n")  # fmt: skip
    recipe = parse_recipe(text, path=str(tmp_path / "r.toml"))
    f = next(x for x in lint(recipe, None, recipe_inventory(recipe)) if x.code == "matches-nothing")
    assert "attn_kv_b does not exist in the mainline layout" in f.message


def test_layout_of_a_gguf_must_match(tmp_path: Path) -> None:
    from quantforge.miniature import write_miniature

    p = write_miniature("deepseek2", tmp_path / "ds-ml.gguf", layout="mainline")
    assert load_inventory(p).layout == "mainline"
    assert load_inventory(p, layout="mainline").layout == "mainline"
    with pytest.raises(InventoryError, match="has the mainline layout"):
        load_inventory(p, layout="ik")


def test_inventory_cli_layout_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "deepseek-ai/DeepSeek-R1-0528", "--layout", "mainline", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["layout"], d["n_tensors"]) == ("mainline", 1086)
    assert main(["inventory", "deepseek-ai/DeepSeek-R1-0528", "--engine", "ik", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["layout"], d["n_tensors"]) == ("ik", 1147)
    assert main(["inventory", "deepseek-ai/DeepSeek-R1-0528", "--layout", "legacy", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["layout"], d["n_tensors"]) == ("legacy", 1025)  # attn_kv_b only: 1086 - 2 x 61 + 61
    assert main(["inventory", "deepseek-ai/DeepSeek-R1-0528", "--layout", "mla"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["quantforge: error: --layout: unknown layout 'mla' (use --layout ik or --layout "
                   "mainline or "
                   "--layout legacy)"]  # fmt: skip
