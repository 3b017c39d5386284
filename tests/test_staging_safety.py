"""Publishing stages only what was built, and never destroys what it stages from.

The real built SmolLM2 IQ2_KS variant (cached ladder), copied into a fresh folder per test;
``publish --dry-run --staging`` through the CLI, and manifests edited the way a careless or
hostile hand would.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TEST_CACHE
from support.publish_ladder import build_ladder

from quantforge.cli import main

GGUF = "SmolLM2-135M-Instruct-IQ2_KS.gguf"


@pytest.fixture()
def built(smol_f16: Path, ik_quantize: Path, tmp_path: Path) -> Path:
    """A folder holding the recipe, its imatrix and the built, verified IQ2_KS variant."""
    recipe, outputs = build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)
    d = tmp_path / "built"
    d.mkdir()
    shutil.copy(recipe, d / recipe.name)
    shutil.copy(recipe.parent / "smollm2-135m.imatrix", d)
    out = outputs["IQ2_KS"]
    os.link(out, d / out.name) if out.stat().st_dev == d.stat().st_dev else shutil.copy(out, d)
    for suffix in (".manifest.json", ".log"):
        shutil.copy(str(out) + suffix, d)
    return d / recipe.name


def _stage(recipe: Path, stage: Path, *extra: str) -> list[str]:
    return ["publish", str(recipe), "--repo", "org/Smol-GGUF", "--quant", "IQ2_KS", "--dry-run", "--staging",
            str(stage), *extra]


def _tree(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("force", [False, True])
def test_the_build_folder_is_never_the_staging_folder(built: Path, capsys: pytest.CaptureFixture[str],
                                                      force: bool) -> None:
    before = _tree(built.parent)
    assert main(_stage(built, built.parent, *(["--force"] if force else []))) == 2
    line = _one_line(capsys)
    assert line == (f"quantforge: error: --staging: --staging {built.parent} is the build folder {built.parent.resolve()} "
                    "(stage into a new folder of its own: it is replaced as a whole)")
    assert _tree(built.parent) == before  # every built variant and manifest still there


def test_a_staging_folder_around_the_build_folder_is_refused(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(built.parent)
    assert main(_stage(built, built.parent.parent, "--force")) == 2
    assert "contains the build folder" in _one_line(capsys)
    assert _tree(built.parent) == before


def test_force_replaces_only_an_earlier_staging(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage = tmp_path / "stage"
    assert main(_stage(built, stage)) == 0
    capsys.readouterr()
    assert main(_stage(built, stage, "--force")) == 0  # an earlier staging: replaced
    capsys.readouterr()
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    assert main(_stage(built, precious, "--force")) == 2
    assert "holds files quantforge did not stage" in _one_line(capsys)
    assert (precious / "todo.txt").read_text() == "keep me"


def _edit_manifest(built: Path, **changes: object) -> None:
    man = built.parent / (GGUF + ".manifest.json")
    data = json.loads(man.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    man.write_text(json.dumps(data))


def test_a_manifest_imatrix_path_outside_the_output_folder_is_never_staged(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    _edit_manifest(built, imatrix__path="../secret/id_rsa")
    stage = tmp_path / "stage"
    assert main(_stage(built, stage)) == 2
    assert _one_line(capsys) == (
        f"quantforge: error: {GGUF}.manifest.json: the importance matrix {secret} named by {GGUF}.manifest.json "
        "escapes the output folder (publish with --no-imatrix, or put the imatrix in the output folder or the recipe)")
    assert not stage.exists() and not (tmp_path / "stage.partial").exists()


def test_an_eval_plot_outside_the_output_folder_is_never_staged(built: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "private.png"
    outside.write_bytes(b"\x89PNG private")
    for where in (str(outside), "../private.png"):
        _edit_manifest(built, eval={"latest": {"plot": where}})
        assert main(_stage(built, tmp_path / "stage")) == 2
        assert "escapes the output folder" in _one_line(capsys)
    # a link inside the folder that points outside is outside too
    (built.parent / "ladder.png").symlink_to(outside)
    _edit_manifest(built, eval={"latest": {"plot": "ladder.png"}})
    assert main(_stage(built, tmp_path / "stage")) == 2
    assert "escapes the output folder" in _one_line(capsys)
    assert not (tmp_path / "stage").exists()


def test_the_recipes_own_imatrix_outside_the_output_folder_is_still_published(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for p in built.parent.glob(GGUF + "*"):
        shutil.move(str(p), out / p.name)
    _edit_manifest_at = out / (GGUF + ".manifest.json")
    data = json.loads(_edit_manifest_at.read_text())
    data["imatrix"]["path"] = os.path.relpath(built.parent / "smollm2-135m.imatrix", out)
    _edit_manifest_at.write_text(json.dumps(data))
    stage = tmp_path / "stage"
    assert main([*_stage(built, stage), "--out-dir", str(out)]) == 0, capsys.readouterr().err
    assert (stage / "repo" / "smollm2-135m.imatrix").read_bytes() == (built.parent / "smollm2-135m.imatrix").read_bytes()


def test_repo_paths_cannot_escape_the_staging_folder(tmp_path: Path) -> None:
    from quantforge.errors import PublishError
    from quantforge.publish.upload import (
        LocalFile,
        StagedFile,
        UploadPlan,
        VariantFiles,
        layout_variant,
        write_staging,
    )

    src = tmp_path / "x.gguf"
    src.write_bytes(b"GGUF")
    for name in ("../../x", "a/b", ".."):
        with pytest.raises(PublishError, match="variant name"):
            layout_variant(VariantFiles(name=name, files=(LocalFile(path=str(src), bytes=4, sha256="0" * 64),)))
    for path in ("../../outside.gguf", "/etc/x.gguf", "a/../../b.gguf", "a//b.gguf"):
        plan = UploadPlan(repo="org/x", private=False, recipe_sha256="0", card="", total_bytes=4,
                          max_file_bytes=10, commits=(),
                          files=(StagedFile(path_in_repo=path, bytes=4, sha256="0", kind="gguf", source=str(src)),))
        with pytest.raises(PublishError, match="repo path"):
            write_staging(plan, tmp_path / "stage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


def test_the_card_never_overwrites_the_recipe(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = built.read_text()
    assert main(["card", str(built), "--output", str(built), "--force"]) == 2
    assert "is the recipe" in _one_line(capsys)
    man = built.parent / (GGUF + ".manifest.json")
    assert main(["card", str(built), "--quant", "IQ2_KS", "--output", str(man), "--force"]) == 2
    assert "is a manifest" in _one_line(capsys)
    assert main(["card", str(built), "--quant", "IQ2_KS", "--output", str(built), "--force"]) == 2
    assert "is the recipe" in _one_line(capsys)
    assert built.read_text() == text
