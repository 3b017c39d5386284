"""`recipe import` reproduces each built SmolLM2 variant's types exactly; `recipe diff` lists differences."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TEST_CACHE
from support.publish_ladder import LADDER, build_ladder

from quantforge.cli import main


@pytest.fixture(scope="module")
def ladder(smol_f16: Path, ik_quantize: Path) -> tuple[Path, dict[str, Path]]:
    return build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)


@pytest.fixture(scope="module")
def base_inventory(smol_f16: Path):
    from quantforge.inventory import load_inventory

    return load_inventory(smol_f16, engine="ik")


@pytest.mark.parametrize("variant", LADDER)
def test_import_reexpands_to_the_file_types(variant, ladder, base_inventory, tmp_path):
    from quantforge.inventory import load_inventory
    from quantforge.plan import expand
    from quantforge.publish.importer import import_recipe
    from quantforge.recipe import load_recipe

    gguf = ladder[1][variant]
    out = tmp_path / "imported.toml"
    res = import_recipe(str(gguf), output=out)
    assert res.mismatches == ()
    recipe = load_recipe(out)
    # expand on the real F16 base, as a user cloning the recipe onto that base would
    plan = expand(recipe, None, base_inventory, imatrix=False)
    written = {t.name: t.dtype for t in load_inventory(gguf).tensors}
    assert {t.name: t.type for t in plan.tensors} == written
    text = out.read_text()
    assert text.startswith("# Imported by `quantforge recipe import` from " + gguf.name)
    assert str(gguf.parent) not in text


def test_import_r4_keeps_interleaved_and_fallen_back_types(ladder, tmp_path):
    from quantforge.publish.importer import import_recipe

    res = import_recipe(str(ladder[1]["R4"]))
    by = {(r.match, r.layers): r.type for r in res.rules}
    assert res.engine == "ik" and res.default == "q8_0_r8"
    assert by[(r"^blk\.\d+\.ffn_down\.weight$", None)] == "iq4_nl_r4"
    # iq4_k_r4 needs 256-multiples: on 576-wide rows ik wrote q5_0, imported as written, as a layer range
    assert by[(r"ffn_gate\.weight$", "0-9")] == "q5_0"
    assert by[(r"^blk\.\d+\.ffn_gate\.weight$", None)] == "q4_0_r8"


def test_layers_spec_compresses_runs():
    from quantforge.recipe import format_layers as layers_spec

    assert layers_spec(range(3, 61)) == "3-60"
    assert layers_spec([0, 1, 2, 61]) == "0-2,61"
    assert layers_spec([5]) == "5"


def test_import_cli_stdout_and_file(ladder, tmp_path, capsys):
    assert main(["recipe", "import", str(ladder[1]["IQ4_KS"])]) == 0
    out = capsys.readouterr().out
    assert "[[quant]]" in out and 'name = "IQ4_KS"' in out and 'default = "q6_0"' in out
    dst = tmp_path / "r.toml"
    assert main(["recipe", "import", str(ladder[1]["IQ4_KS"]), "-o", str(dst)]) == 0
    assert main(["recipe", "import", str(ladder[1]["IQ4_KS"]), "-o", str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0]


def test_import_not_a_gguf(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    assert main(["recipe", "import", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantforge: error:")


def test_diff_lists_differing_tensors(ladder, capsys):
    from quantforge.publish.importer import diff_quants

    d = diff_quants(str(ladder[1]["IQ4_KS"]), str(ladder[1]["IQ2_KS"]))
    assert [(g.pattern, g.layers, g.type_a, g.type_b, g.count) for g in d.groups] == [
        ("blk.*.ffn_down.weight", "2-27", "iq5_ks", "iq3_ks", 26)]
    assert d.n_same == 272 - 26 and len(d.tensors) == 26
    assert d.delta_bytes == sum(t.bytes_b - t.bytes_a for t in d.tensors) < 0
    assert main(["recipe", "diff", str(ladder[1]["IQ4_KS"]), str(ladder[1]["IQ2_KS"])]) == 0
    out = capsys.readouterr().out
    assert "blk.*.ffn_down.weight layers 2-27 ×26  iq5_ks -> iq3_ks" in out
    assert "26 tensor(s) differ, 246 same" in out
    assert main(["recipe", "diff", str(ladder[1]["IQ4_KS"]), str(ladder[1]["IQ4_KS"])]) == 0
    assert "identical tensor types (272 tensors)" in capsys.readouterr().out


def test_import_from_hf_through_the_stand_in(ladder, tmp_path, monkeypatch):
    """hf:// import reads only header bytes from a (loopback) Hub."""
    from huggingface_hub import HfApi, constants
    from support.hub_server import HubStandIn

    from quantforge.publish.importer import import_recipe

    hub = HubStandIn(tmp_path / "hub").start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        api = HfApi(endpoint=hub.url, token="hf_test_importer")
        api.create_repo("test-org/smol")
        gguf = ladder[1]["IQ2_KS"]
        api.upload_file(path_or_fileobj=str(gguf), path_in_repo=gguf.name, repo_id="test-org/smol")
        hub.reset_counters()
        remote = import_recipe(f"hf://test-org/smol/{gguf.name}")
        local = import_recipe(str(gguf))
        assert remote.rules == local.rules and remote.default == local.default and remote.mismatches == ()
        served = [r for r in hub.requests if "/resolve/" in r.path]
        assert served, "the header came over HTTP"
    finally:
        hub.stop()
