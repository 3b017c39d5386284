"""Cards link only to what exists, find their base model, and can be made for a GGUF without a recipe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import TEST_CACHE
from support.publish_ladder import build_ladder

from quantforge.catalogue import catalogue
from quantforge.cli import main
from quantforge.gguf_header import GGUFTensorInfo, GGUFValue, ValueType, header_bytes
from quantforge.inventory import base_model_of, load_inventory
from quantforge.plan import lint, recipe_inventory
from quantforge.recipe import parse_recipe
from tests.support import cached_quant


@pytest.fixture(scope="module")
def ladder(smol_f16: Path, ik_quantize: Path) -> tuple[Path, dict[str, Path]]:
    return build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)


def test_card_names_the_package_and_links_no_missing_repository(ladder) -> None:  # type: ignore[no-untyped-def]
    from quantforge import __version__
    from quantforge.publish.upload import make_card

    text = make_card(ladder[0], repo="test-org/SmolLM2-135M-Instruct-GGUF").text
    assert "github.com/quantforge" not in text
    assert f"by quantforge {__version__} (the `quantforge` Python package)" in text
    links = [ln for ln in text.splitlines() if "](http" in ln]
    assert all("huggingface.co/" in ln for ln in links), links


def _base_gguf(path: Path, repo_url: str | None) -> Path:
    kv = [("general.architecture", GGUFValue.of("llama", ValueType.STRING))]
    if repo_url:
        kv += [("general.base_model.count", GGUFValue.of(1, ValueType.UINT32)),
               ("general.base_model.0.name", GGUFValue.of("SmolLM2 135M Instruct", ValueType.STRING)),
               ("general.base_model.0.repo_url", GGUFValue.of(repo_url, ValueType.STRING))]  # fmt: skip
    t = GGUFTensorInfo(name="token_embd.weight", shape=(256, 8), type_id=1, offset=0)
    path.write_bytes(header_bytes(kv, [t]) + b"\0" * 4096)
    return path


def _local_base_recipe(base: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    text = (
        f'[model]\nbase = "{base.name}"\nengine = "ik"\n[publish]\nlicense = "mit"\n'
        '[[quant]]\nname = "Q8_0"\nftype = "Q8_0"\ndefault = "q8_0"\n'
    )
    p = tmp_path / "r.toml"
    p.write_text(text)
    return parse_recipe(text, path=str(p))


def test_base_model_comes_from_the_base_gguf_when_the_recipe_names_none(tmp_path: Path) -> None:
    base = _base_gguf(tmp_path / "with.gguf", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct")
    recipe = _local_base_recipe(base, tmp_path)
    assert base_model_of(recipe) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "general.base_model of with.gguf")
    assert "no-base-model" not in {f.code for f in lint(recipe, None, recipe_inventory(recipe))}


def test_no_base_model_is_said_by_lint_and_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _base_gguf(tmp_path / "without.gguf", None)
    recipe = _local_base_recipe(base, tmp_path)
    assert base_model_of(recipe) == (None, "without.gguf has no general.base_model.* pointing at a Hub model")
    f = next(x for x in lint(recipe, None, recipe_inventory(recipe)) if x.code == "no-base-model")
    assert f.severity == "warning" and 'set [publish] base_model = "org/name"' in f.message
    assert main(["recipe", "lint", str(tmp_path / "r.toml")]) == 0
    assert "warning[no-base-model]" in capsys.readouterr().out
    # `card` (and `publish`) say it before anything else: one warning line on stderr.
    main(["card", str(tmp_path / "r.toml"), "-o", "-"])
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("quantforge: warning: the card will have no base_model (without.gguf has no")


def test_card_data_takes_the_base_gguf_base_model(ladder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from quantforge.publish.card import card_data_from_manifests, render_card
    from quantforge.publish.upload import find_manifests
    from quantforge.recipe import load_recipe

    base = _base_gguf(tmp_path / "with.gguf", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct")
    recipe = load_recipe(ladder[0])
    mans = find_manifests(recipe, ["IQ4_KS"])
    local = recipe.model_copy(update={
        "path": str(tmp_path / "r.toml"), "publish": None,
        "model": recipe.model.model_copy(update={"id": None, "base": base.name}),
    })  # fmt: skip
    data = card_data_from_manifests(local, mans, repo=None, files_in_repo={"IQ4_KS": ("x.gguf",)})
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    text = render_card(data)
    assert (
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text and "base_model_relation: quantized" in text
    )


def test_card_of_a_gguf_without_a_recipe(
    ik_quantize: Path, smol_f16: Path, smol_imatrix: Path, tmp_path: Path
) -> None:
    q = cached_quant(ik_quantize, smol_f16, "IQ4_KS", imatrix=smol_imatrix)
    out = tmp_path / "README.md"
    assert main(["card", str(q), "-o", str(out)]) == 0
    text = out.read_text()
    inv = load_inventory(q)
    cat = catalogue("ik")
    tensor_bytes = sum(cat.get(t.dtype).tensor_bytes(t.shape) for t in inv.tensors)
    meta = sum(math.prod(t.shape[1:]) * cat.get(t.dtype).row_meta_size for t in inv.tensors)
    assert meta > 0
    row = next(ln for ln in text.splitlines() if ln.startswith("| IQ4_KS |")).strip("|").split("|")
    assert [c.strip() for c in row[1:4]] == [f"{tensor_bytes / 2**30:.3f}", f"{meta / 2**30:.3f}",
                                             f"{q.stat().st_size:,}"]  # fmt: skip
    assert "## Hardware fit" in text and "| IQ4_KS | fits (max 8K)" in text
    # The command re-derived from the header writes the same types (the importer checks itself).
    assert "--custom-q" in text and "model-BF16.gguf" in text
    assert main(["card", str(q), "-o", str(out)]) == 2  # exists: no overwrite without --force
