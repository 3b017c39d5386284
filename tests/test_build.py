"""Building with the real llama-quantize binaries on SmolLM2: ladder, resume, verification, manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.gguf_header import read_header
from quantforge.manifest import read_manifest, resolve_file, update_manifest

IK_LADDER = """\
[model]
base = "{base}"
engine = "ik"

[imatrix]
file = "{imatrix}"

[[quant]]
name = "Q8_0"
ftype = "Q8_0"
default = "q8_0"

[[quant]]
name = "Q4_0"
ftype = "Q4_0"
default = "q4_0"
rules = [
  {{ match = 'token_embd', type = "q8_0" }},
  {{ match = 'ffn_down', type = "q5_0" }},
]

[[quant]]
name = "IQ2_XXS-mix"
ftype = "Q4_0"
default = "q4_0"
rules = [
  {{ match = 'token_embd', type = "q8_0" }},
  {{ match = 'ffn_down', layers = "2-3", type = "iq2_xxs" }},
]
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ik_ladder(
    tmp_path_factory: pytest.TempPathFactory, smol_f16: Path, smol_imatrix: Path
) -> dict[str, object]:
    """Build Q8_0 alone (a ladder 'interrupted' after its first variant), then the whole ladder."""
    d = tmp_path_factory.mktemp("ik-ladder")
    recipe = d / "smol.toml"
    recipe.write_text(IK_LADDER.format(base=smol_f16, imatrix=smol_imatrix))
    out = d / "out"
    import contextlib
    import io

    first = io.StringIO()
    with contextlib.redirect_stdout(first):
        rc1 = main(["build", str(recipe), "--quant", "Q8_0", "--out", str(out), "--json"])
    q8 = out / "smol-Q8_0.gguf"
    st1 = q8.stat()
    second = io.StringIO()
    with contextlib.redirect_stdout(second):
        rc2 = main(["build", str(recipe), "--all", "--out", str(out), "--json"])
    return {
        "recipe": recipe,
        "out": out,
        "rc": (rc1, rc2),
        "first": json.loads(first.getvalue()),
        "second": json.loads(second.getvalue()),
        "q8_stat": (st1.st_ino, st1.st_mtime_ns),
    }


def test_ladder_resumes_without_redoing_the_first_variant(ik_ladder: dict) -> None:
    assert ik_ladder["rc"] == (0, 0)
    assert [r["status"] for r in ik_ladder["first"]["results"]] == ["built"]
    res = ik_ladder["second"]["results"]
    assert [(r["variant"], r["status"]) for r in res] == [
        ("Q8_0", "skipped"),
        ("Q4_0", "built"),
        ("IQ2_XXS-mix", "built"),
    ]
    q8 = ik_ladder["out"] / "smol-Q8_0.gguf"
    st = q8.stat()
    assert (st.st_ino, st.st_mtime_ns) == ik_ladder["q8_stat"]


def test_every_output_matches_the_plan_exactly(ik_ladder: dict) -> None:
    sizes = {
        r["variant"]: (r["planned_file_bytes"], r["actual_file_bytes"])
        for r in ik_ladder["second"]["results"]
    }
    for planned, actual in sizes.values():
        assert planned == actual
    out = ik_ladder["out"]
    assert sizes["Q8_0"][1] == (out / "smol-Q8_0.gguf").stat().st_size
    # The iq2-class type that needs the imatrix really is in the file.
    h = read_header(out / "smol-IQ2_XXS-mix.gguf")
    types = {t.name: t.type_id for t in h.tensors}
    assert types["blk.2.ffn_down.weight"] == 16 and types["blk.3.ffn_down.weight"] == 16  # GGML_TYPE_IQ2_XXS
    assert types["blk.4.ffn_down.weight"] == 2  # q4_0
    assert h.get("quantize.imatrix.file") == "smol.imatrix"  # run from the imatrix' folder: no local path
    assert h.get("quantize.imatrix.dataset") == "calib.txt"
    assert h.get("quantize.imatrix.entries_count") == 210 and h.get("quantize.imatrix.chunks_count") == 40
    assert h.get("general.file_type") == 2
    # No partial files, a log and a manifest per variant.
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if "partial" in n]
    for v in ("Q8_0", "Q4_0", "IQ2_XXS-mix"):
        assert f"smol-{v}.gguf.log" in names and f"smol-{v}.gguf.manifest.json" in names


def test_manifest_records_the_build(ik_ladder: dict, smol_imatrix: Path) -> None:
    out: Path = ik_ladder["out"]
    mpath = out / "smol-IQ2_XXS-mix.gguf.manifest.json"
    m = read_manifest(mpath)
    assert m.schema_version == 1 and m.name == "IQ2_XXS-mix"
    assert [f.path for f in m.files] == ["smol-IQ2_XXS-mix.gguf"]
    f = m.files[0]
    assert f.bytes == (out / f.path).stat().st_size and f.sha256 == sha256(out / f.path)
    assert m.planned_file_bytes == m.actual_file_bytes == f.bytes
    assert m.command[1:3] == ["--imatrix", "smol.imatrix"]
    assert m.command[3:5] == ["--custom-q", "token_embd=q8_0,blk\\.[2-3]\\.ffn_down=iq2_xxs,.*=q4_0"]
    assert m.command[-4:-1] == [str(m.command[-4]), str(out / "smol-IQ2_XXS-mix.gguf"), "Q4_0"]
    assert (m.engine, m.engine_build, m.engine_commit) == ("ik", 1, "55d3c05")
    assert m.recipe["sha256"] == hashlib.sha256(ik_ladder["recipe"].read_bytes()).hexdigest()
    assert m.base["sha256"] == "fea43f3ffef83a020894679eb91b2ab0127287d657a7313b47ba9c411dd4d47f"
    assert m.imatrix is not None and m.imatrix["sha256"] == sha256(smol_imatrix)
    assert (m.imatrix["dataset"], m.imatrix["chunk_count"], m.imatrix["entries"]) == ("calib.txt", 40, 210)
    assert m.imatrix["coverage"] == {"covered": 210, "total": 211, "missing": ["token_embd.weight"]}
    assert m.plan["types"] == {"q8_0": 1, "f32": 61, "q4_0": 208, "iq2_xxs": 2}
    assert m.verification["ok"] is True and m.verification["tensors"] == 272
    assert set(m.timings) >= {"quantize_s", "verify_s", "hash_s", "total_s"}
    assert resolve_file(mpath, m.log or "") == out / "smol-IQ2_XXS-mix.gguf.log"
    assert "HF_TOKEN" not in mpath.read_text()


def test_manifest_update_round_trip(ik_ladder: dict, tmp_path: Path) -> None:
    import shutil

    src = ik_ladder["out"] / "smol-Q4_0.gguf.manifest.json"
    copy = tmp_path / "smol-Q4_0.gguf.manifest.json"
    shutil.copy(src, copy)
    m = update_manifest(copy, eval={"ppl": 5.9}, publish={"repo": "me/x"})
    again = read_manifest(copy)
    assert again == m and again.eval == {"ppl": 5.9} and again.publish == {"repo": "me/x"}
    assert read_manifest(tmp_path / "smol-Q4_0.gguf").name == "Q4_0"  # the output path works too


def test_second_run_skips_everything_and_a_moved_folder_still_resumes(
    ik_ladder: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(ik_ladder["out"], moved)
    assert main(["build", str(ik_ladder["recipe"]), "--all", "--out", str(moved), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["status"] for r in res] == ["skipped"] * 3


def test_recipe_edit_that_keeps_the_plans_is_recorded_on_skip(
    ik_ladder: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A comment added to the recipe changes its sha256 but no plan: the rerun skips every variant
    and records the new recipe in each manifest, which card and publish check."""
    import shutil

    from quantforge.manifest import read_manifest
    from quantforge.recipe import load_recipe

    moved = tmp_path / "moved"
    shutil.copytree(ik_ladder["out"], moved)
    recipe = tmp_path / "smol.toml"
    recipe.write_text(Path(ik_ladder["recipe"]).read_text()
                      + "# a comment changes the sha256, not the plans\n")
    before = {m.name: read_manifest(m).recipe["sha256"] for m in moved.glob("*.manifest.json")}
    assert main(["build", str(recipe), "--all", "--out", str(moved), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["status"] for r in res] == ["skipped"] * 3
    new = load_recipe(recipe).sha256
    after = {m.name: read_manifest(m).recipe for m in moved.glob("*.manifest.json")}
    assert len(after) == 3 and set(before.values()) != {new}
    assert all(r["sha256"] == new and r["path"] == str(recipe) for r in after.values())


@pytest.mark.mainline
def test_mainline_imatrix_then_quantize_and_split(
    tmp_path: Path,
    smol_f16: Path,
    ik_fixtures: Path,
    mainline_bin_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "calib-small.txt").write_text((ik_fixtures / "corpus.txt").read_text()[:20000])
    recipe = tmp_path / "m.toml"
    recipe.write_text(
        f'[model]\nbase = "{smol_f16}"\nengine = "mainline"\n\n[imatrix]\ncorpus = '
        '"calib-small.txt"\nchunks = 4\nctx = 128\n\n'
        '[[quant]]\nname = "Q4_0-imat"\nftype = "Q4_0"\ndefault = "q4_0"\n'
        "rules = [ { match = 'token_embd', type = \"q8_0\" }, { match = 'blk\\.[0-1]\\.ffn_down', type = "
        "\"iq2_xxs\" } ]\n"
    )
    assert main(["imatrix", str(recipe)]) == 0
    capsys.readouterr()
    # The computed imatrix (default location) is picked up; the output is split at 40 MB.
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--out", str(out), "--split-max", "40M", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    r = res["results"][0]
    assert res["engine"] == "mainline" and res["imatrix"].endswith("smol-f16.imatrix.gguf")
    shards = [Path(p).name for p in r["files"]]
    assert shards == [
        "smol-Q4_0-imat-00001-of-00003.gguf",
        "smol-Q4_0-imat-00002-of-00003.gguf",
        "smol-Q4_0-imat-00003-of-00003.gguf",
    ]
    assert not (out / "smol-Q4_0-imat.gguf").exists()
    assert all((out / s).stat().st_size <= 40_000_000 for s in shards)
    m = read_manifest(out / "smol-Q4_0-imat.gguf.manifest.json")
    assert [f.path for f in m.files] == shards
    assert all(f.sha256 == sha256(out / f.path) for f in m.files)
    assert m.engine == "mainline" and m.command[1:3] == ["--imatrix", "smol-f16.imatrix.gguf"]
    assert (
        m.imatrix is not None and m.imatrix["format"] == "gguf" and m.imatrix["dataset"] == "calib-small.txt"
    )
    h0 = read_header(out / shards[0])
    assert h0.get("split.count") == 3
    assert (
        h0.get("quantize.imatrix.dataset") == "calib-small.txt"
        and h0.get("quantize.imatrix.chunks_count") == 4
    )
    ids = {t.name: t.type_id for s in shards for t in read_header(out / s).tensors}
    assert len(ids) == 272 and ids["blk.0.ffn_down.weight"] == 16 and ids["blk.2.ffn_down.weight"] == 2
    # Resume recognises a split set as well.
    assert main(["build", str(recipe), "--out", str(out), "--split-max", "40M", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "skipped"


def test_base_command_makes_the_f16_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "smol-f16.gguf"
    assert main(["base", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sha256"] == "fea43f3ffef83a020894679eb91b2ab0127287d657a7313b47ba9c411dd4d47f"
    assert data["bytes"] == 270_885_952
    assert main(["base", str(out)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"quantforge: error: {out}: {out} already exists (pass --force to overwrite it)"
    )
