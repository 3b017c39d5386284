"""``SOURCE``: one reader for every way a user names a model, and plans without a recipe.

``load_source`` takes a recipe, a local GGUF, any shard of a split set, ``hf://`` (header bytes
only, against a real range-capable HTTP server on loopback driven by huggingface_hub), a
``config.json`` or a shipped id; ``source_plans`` gives the recipe's variants or the file as it is,
with exact bytes, which the fit planner takes as it takes a recipe's plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.errors import RecipeError, UsageError
from quantforge.fit.dims import dims_from_hparams
from quantforge.fit.report import Settings, plan_fit
from quantforge.gguf_header import read_header
from quantforge.inventory import load_source
from quantforge.plan import file_plan, source_plans
from quantforge.targets import load_target
from tests.support import cached_quant, write_split
from tests.support.range_server import RangeServer


@pytest.fixture(scope="module")
def smol_iq4_k(ik_quantize: Path, smol_f16: Path, smol_imatrix: Path) -> Path:
    return cached_quant(ik_quantize, smol_f16, "IQ4_K", imatrix=smol_imatrix)


@pytest.fixture(scope="module")
def five_shards(smol_iq4_k: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_split(smol_iq4_k, tmp_path_factory.mktemp("five") / "model", 5)


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, five_shards: list[Path], smol_iq4_k: Path) -> Iterator[RangeServer]:
    import huggingface_hub.constants

    files = {"IQ4_K/" + p.name: p for p in five_shards}
    files["smol-IQ4_K.gguf"] = smol_iq4_k
    with RangeServer({"qf-test/smol-quants": files}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield srv


def _config(tmp_path: Path) -> Path:
    cfg = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_hidden_layers": 4,
           "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
           "vocab_size": 151936, "tie_word_embeddings": True}  # fmt: skip
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_every_kind_of_source(smol_f16: Path, five_shards: list[Path], tmp_path: Path) -> None:
    recipe = load_source(Path(__file__).parents[1] / "recipes" / "glm-4.5-air.toml")
    assert (recipe.kind, recipe.recipe.engine, len(recipe.inventory.tensors)) == ("recipe", "mainline", 803)
    local = load_source(smol_f16)
    assert (local.kind, local.recipe, local.inventory.n_shards, local.is_quant) == ("gguf", None, 1, False)
    shard = load_source(five_shards[3])
    assert (shard.kind, shard.inventory.n_shards, shard.is_quant) == ("gguf", 5, True)
    shipped = load_source("deepseek-ai/DeepSeek-R1-0528", layout="mainline")
    assert (shipped.kind, len(shipped.inventory.tensors)) == ("shipped", 1086)
    cfg = load_source(_config(tmp_path))
    assert (cfg.kind, cfg.inventory.arch, len(cfg.inventory.tensors)) == ("config", "qwen3", 2 + 4 * 11)


def test_a_split_quant_plans_as_it_is_with_the_exact_bytes(five_shards: list[Path], smol_iq4_k: Path) -> None:
    src = load_source(five_shards[0])
    [plan] = source_plans(src)
    header = read_header(smol_iq4_k)
    assert plan.engine == "ik" and plan.ftype == "IQ4_K" and plan.file_bytes_exact
    assert {t.name: t.type for t in plan.tensors} == {
        t.name: t.dtype for t in load_source(smol_iq4_k).inventory.tensors
    }
    assert plan.file_bytes == sum(p.stat().st_size for p in five_shards)
    assert file_plan(load_source(smol_iq4_k).inventory).file_bytes == smol_iq4_k.stat().st_size == 102_095_136
    assert len(header.tensors) == len(plan.tensors) == 272
    with pytest.raises(RecipeError, match="--quant names a recipe variant"):
        source_plans(src, "IQ4_K")


def test_plan_model_00001_of_00005_on_a_target_without_a_recipe(five_shards: list[Path]) -> None:
    # The library half of `quantforge plan model-00001-of-00005.gguf --target 256gb-24gb`.
    assert five_shards[0].name == "model-00001-of-00005.gguf"
    src = load_source(five_shards[0])
    [plan] = source_plans(src)
    dims = dims_from_hparams(src.inventory.arch, src.inventory.hparams)
    report = plan_fit(
        plan, dims, load_target("256gb-24gb"), settings=Settings(n_ctx=8192), engine=plan.engine
    )
    assert report.verdict == "fits"
    assert report.weights_bytes >= plan.tensor_bytes


def test_hf_shard_plans_from_header_bytes_only(hub: RangeServer, five_shards: list[Path]) -> None:
    src = load_source("hf://qf-test/smol-quants/IQ4_K/model-00002-of-00005.gguf")
    [plan] = source_plans(src)
    total = sum(p.stat().st_size for p in five_shards)
    assert src.kind == "hf" and plan.file_bytes == total
    assert src.inventory.bytes_fetched is not None and src.inventory.bytes_fetched < 0.1 * total
    dims = dims_from_hparams(src.inventory.arch, src.inventory.hparams)
    assert (
        plan_fit(plan, dims, load_target("cpu-128gb"), settings=Settings(n_ctx=4096), engine="ik").verdict
        == "fits"
    )


def test_config_json_is_read_by_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The README promised it; the CLI said "not a GGUF file".
    p = _config(tmp_path)
    assert main(["inventory", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["arch"], d["n_tensors"], d["metadata_bytes_exact"]) == ("qwen3", 46, False)
    assert main(["recipe", "import", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a quant" in err[0]


def test_recipe_import_takes_any_shard_and_refuses_a_base(five_shards: list[Path], smol_f16: Path) -> None:
    from quantforge.publish.importer import import_recipe

    res = import_recipe(str(five_shards[2]))
    assert res.n_tensors == 272 and res.mismatches == ()
    with pytest.raises(UsageError, match="not a quant"):
        import_recipe(str(smol_f16))


def test_recipe_show_gives_tensor_data_row_metadata_and_file_bytes(
    smol_f16: Path, ik_quantize: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # iq4_ks carries 4 bytes of scales per row: 30 ffn_down tensors x 576 rows x 4 = 69,120 bytes
    # that gguf-py's and Thireus' sizes leave out.
    r = tmp_path / "r.toml"
    r.write_text(f'[model]\nbase = "{smol_f16}"\nengine = "ik"\n[[quant]]\nname = "v"\nftype = "IQ4_KS"\n'
                 "default = \"q8_0\"\nrules = [ { match = 'ffn_down', type = \"iq4_ks\" } ]\n")  # fmt: skip
    assert main(["recipe", "show", str(r), "--json"]) == 0
    (q,) = json.loads(capsys.readouterr().out)["quants"]
    assert q["row_meta_bytes"] == 30 * 576 * 4 == q["tensor_bytes"] - q["weight_bytes"]
    assert q["tensor_gib"] == round(q["tensor_bytes"] / 2**30, 3)
    out = cached_quant(ik_quantize, smol_f16, "IQ4_KS", extra=("--custom-q", "ffn_down=iq4_ks,.*=q8_0"))
    h = read_header(out)
    assert out.stat().st_size == q["file_bytes"]
    assert out.stat().st_size - h.data_offset == sum((t["bytes"] + 31) // 32 * 32 for t in q["tensors"])
    assert main(["recipe", "show", str(r)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    gib = q["tensor_bytes"] / 2**30
    assert first == (f"v  [ik IQ4_KS]  {gib:.3f} GiB ({q['bpw']:.3f} BPW) tensor data, 0.000 GiB of it row "
                     "metadata; "
                     f"file {q['file_bytes']:,} bytes (exact); 0.135 B params")  # fmt: skip
