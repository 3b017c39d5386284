"""Importance matrices: both formats read exactly, coverage and refusals before quantizing."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.errors import InputError
from quantforge.imatrix import coverage, read_imatrix


def test_legacy_ik_imatrix_is_read_exactly(smol_imatrix: Path) -> None:
    info = read_imatrix(smol_imatrix, with_sha256=True)
    assert info.format == "dat"
    assert info.bytes == 605_981
    assert info.datasets == ("calib.txt",) and info.dataset == "calib.txt"
    assert info.chunk_count == 40
    assert info.entries_count == 210
    assert Counter(e.n_values for e in info.entries) == {576: 180, 1536: 30}
    assert {e.ncall for e in info.entries} == {40}
    assert info.entries[0].name == "blk.29.ffn_up.weight"
    assert info.entry("blk.0.ffn_down.weight") is not None and info.entry("token_embd.weight") is None
    assert len(info.sha256 or "") == 64


def _legacy(path: Path, entries: list[tuple[str, int]], tail: bytes = b"") -> Path:
    blob = struct.pack("<i", len(entries))
    for name, nval in entries:
        blob += (
            struct.pack("<i", len(name))
            + name.encode()
            + struct.pack("<ii", 1, nval)
            + b"\0\0\x80\x3f" * nval
        )
    path.write_bytes(blob + tail)
    return path


def test_truncated_legacy_file_is_an_input_error(tmp_path: Path, smol_imatrix: Path) -> None:
    bad = tmp_path / "cut.imatrix"
    bad.write_bytes(smol_imatrix.read_bytes()[:5000])
    with pytest.raises(InputError) as ei:
        read_imatrix(bad)
    assert ei.value.where == str(bad)
    assert "truncated imatrix" in ei.value.message


def test_file_without_trailer_has_no_dataset(tmp_path: Path) -> None:
    info = read_imatrix(_legacy(tmp_path / "a.dat", [("blk.0.attn_q.weight", 576)]))
    assert (info.chunk_count, info.datasets, info.entries_count) == (-1, (), 1)


def test_coverage_names_tensors_that_would_be_refused(tmp_path: Path, smol_f16: Path) -> None:
    from quantforge.inventory import load_inventory
    from quantforge.plan import expand
    from quantforge.recipe import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[model]\nbase = "{smol_f16}"\nengine = "ik"\n\n[[quant]]\nname = "X"\nftype = "Q4_0"\ndefault = '
        '"q4_0"\n'
        'rules = [ { match = \'ffn_down\', layers = "0-1", type = "iq2_xxs" } ]\n'
    )
    # An imatrix with data for layer 0 only (and one entry of another model).
    im = _legacy(
        tmp_path / "part.imatrix",
        [("blk.0.ffn_down.weight", 1536), ("blk.99.ffn_down.weight", 1536)],
        struct.pack("<ii", 3, 1) + b"x",
    )
    info = read_imatrix(im)
    plan = expand(load_recipe(recipe), "X", load_inventory(smol_f16, engine="ik"), imatrix=False)
    cov = coverage(info, plan)
    assert cov.refused == ("blk.1.ffn_down.weight",)
    assert cov.covered == 1 and cov.total == 211
    assert cov.unused_entries == ("blk.99.ffn_down.weight",)
    gap = next(g for g in cov.missing if g.tensor == "blk.1.ffn_down.weight")
    assert (gap.type, gap.reason, gap.refused) == ("iq2_xxs", "no data", True)
    # Without any imatrix both iq2_xxs tensors are refused.
    assert coverage(None, plan).refused == ("blk.0.ffn_down.weight", "blk.1.ffn_down.weight")


def test_imatrix_cli_reports_coverage_of_the_given_file(
    tmp_path: Path, smol_f16: Path, smol_imatrix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[model]\nbase = "{smol_f16}"\nengine = "ik"\n\n[imatrix]\nfile = "{smol_imatrix}"\n\n'
        '[[quant]]\nname = "A"\nftype = "Q4_0"\ndefault = "q4_0"\n'
    )
    assert main(["imatrix", str(recipe)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"imatrix {smol_imatrix} (dat, 210 entries, 40 chunks, dataset calib.txt)"
    assert out[1] == "  A            210/211 weights covered; no data: token_embd.weight"


def test_imatrix_cli_fails_when_a_variant_would_be_refused(
    tmp_path: Path, smol_f16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    im = _legacy(
        tmp_path / "part.imatrix", [("blk.0.ffn_down.weight", 1536)], struct.pack("<ii", 3, 1) + b"x"
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[model]\nbase = "{smol_f16}"\nengine = "ik"\n\n[imatrix]\nfile = "part.imatrix"\n\n'
        '[[quant]]\nname = "L"\nftype = "Q4_0"\ndefault = "q4_0"\nrules = [ { match = \'ffn_down\', type = '
        '"iq2_xs" } ]\n'
    )
    assert main(["imatrix", str(recipe), "--json"]) == 1
    cap = capsys.readouterr()
    data = json.loads(cap.out)
    assert len(data["variants"][0]["coverage"]["refused"]) == 29
    assert (
        cap.err.strip()
        == f"quantforge: error: {im}: variant L: 29 tensor(s) need imatrix data this file lacks (use an "
           "imatrix computed on this model, or change those tensors' types)"
    )


@pytest.mark.mainline
def test_mainline_llama_imatrix_computes_a_gguf_imatrix(
    tmp_path: Path,
    smol_f16: Path,
    ik_fixtures: Path,
    mainline_bin_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = tmp_path / "calib-small.txt"
    corpus.write_text((ik_fixtures / "corpus.txt").read_text()[:20000])
    recipe = tmp_path / "m.toml"
    recipe.write_text(
        f'[model]\nbase = "{smol_f16}"\nengine = "mainline"\n\n[imatrix]\ncorpus = '
        '"calib-small.txt"\nchunks = 4\nctx = 128\n\n'
        '[[quant]]\nname = "Q4_0"\nftype = "Q4_0"\ndefault = "q4_0"\n'
    )
    assert main(["imatrix", str(recipe), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    out = tmp_path / "smol-f16.imatrix.gguf"
    assert data["computed"] is True and data["imatrix"]["path"] == str(out)
    info = read_imatrix(out)
    assert info.format == "gguf"
    assert info.chunk_count == 4 and info.chunk_size == 128
    # The corpus is named relative to its folder: no local path leaks into the imatrix.
    assert info.datasets == ("calib-small.txt",)
    assert info.entries_count == 210
    assert Counter(e.n_values for e in info.entries) == {576: 180, 1536: 30}
    assert {e.ncall for e in info.entries} == {4}
    assert (tmp_path / "smol-f16.imatrix.gguf.log").is_file()
    assert not list(tmp_path.glob("*.partial*"))
