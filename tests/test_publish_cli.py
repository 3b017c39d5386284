"""`quantforge publish` end to end: the built SmolLM2 ladder to a loopback Hub stand-in, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TEST_CACHE, sha256_file
from support.hub_server import HubStandIn
from support.publish_ladder import LADDER, build_ladder

from quantforge.cli import main

TOKEN = "hf_test_cliT0kenNeverPrinted9876"
REPO = "test-org/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture(scope="module")
def ladder(smol_f16: Path, ik_quantize: Path) -> tuple[Path, dict[str, Path]]:
    return build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    server = HubStandIn(tmp_path / "hub", token=TOKEN).start()
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.stop()


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("quantforge: error: ")
    return err[0]


def test_publish_ladder_end_to_end(hub, ladder, capsys, caplog):
    recipe, outs = ladder
    assert main(["publish", str(recipe), "--repo", REPO]) == 0
    out1 = capsys.readouterr()
    repo = hub.repos[REPO]
    for name, gguf in outs.items():
        assert hub.file_bytes(REPO, gguf.name) == gguf.read_bytes(), name
    imatrix = (recipe.parent / "smollm2-135m.imatrix").read_bytes()
    assert hub.file_bytes(REPO, "smollm2-135m.imatrix") == imatrix
    card = hub.file_bytes(REPO, "README.md").decode()
    assert all(f"| {n} |" in card for n in LADDER)
    assert [c.paths for c in repo.commits][-1] == ["README.md"]
    assert len(repo.commits) == len(LADDER) + 2  # one per variant, the imatrix, the card
    from quantforge.recipe import load_recipe

    sha = load_recipe(recipe).sha256
    assert all(sha in c.summary for c in repo.commits)
    # the manifests record where they were published (no token)
    from quantforge.manifest import read_manifest

    man = read_manifest(outs["IQ4_KS"])
    assert man.publish["repo"] == REPO and man.publish["paths"] == [outs["IQ4_KS"].name]
    # a second publish uploads nothing
    hub.reset_counters()
    assert main(["publish", str(recipe), "--repo", REPO, "--json"]) == 0
    out2 = capsys.readouterr()
    doc = json.loads(out2.out)
    assert doc["uploaded"] == [] and doc["bytes_uploaded"] == 0
    assert hub.lfs_bytes_received == 0 and not any("/commit/" in r.path for r in hub.requests)
    everything = out1.out + out1.err + out2.out + out2.err + caplog.text + card
    for mp in outs.values():
        everything += Path(str(mp) + ".manifest.json").read_text()
    assert TOKEN not in everything


def test_publish_dry_run_staging(ladder, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    stage = tmp_path / "stage"
    assert main(["publish", str(ladder[0]), "--repo", REPO, "--quant", "IQ2_KS", "--dry-run", "--staging",
                 str(stage)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: 3 file(s)")
    plan = json.loads((stage / "upload-plan.json").read_text())
    gguf = ladder[1]["IQ2_KS"]
    assert [f["path"] for f in plan["files"]] == [gguf.name, "smollm2-135m.imatrix", "README.md"]
    assert plan["files"][0]["sha256"] == sha256_file(stage / "repo" / gguf.name) == sha256_file(gguf)
    assert [c["paths"] for c in plan["commits"]][-1] == ["README.md"]
    assert "| IQ2_KS |" in (stage / "repo" / "README.md").read_text()


def test_publish_library_dry_run_returns_plan(ladder, tmp_path):
    from quantforge.publish.upload import UploadPlan, publish

    res = publish(ladder[0], repo=REPO, dry_run=True, staging=tmp_path / "s")
    assert isinstance(res.plan, UploadPlan) and res.dry_run
    assert res.plan.commits[-1].paths == ("README.md",)
    assert res.plan.total_bytes == sum(f.bytes for f in res.plan.files)


@pytest.mark.parametrize("repo", ["no-slash", "org/bad name", "org/x--y"])
def test_bad_repo_id(hub, ladder, capsys, repo):
    assert main(["publish", str(ladder[0]), "--repo", repo]) == 2
    assert "malformed" in _one_error(capsys)
    assert hub.requests == []


def test_no_token(hub, ladder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    assert main(["publish", str(ladder[0]), "--repo", REPO]) == 2
    assert "no Hugging Face token found" in _one_error(capsys)
    assert hub.requests == []


def test_variant_not_built(hub, ladder, capsys, tmp_path):
    assert main(["publish", str(ladder[0]), "--repo", REPO, "--out-dir", str(tmp_path)]) == 2
    line = _one_error(capsys)
    assert "variant IQ5_KS is not built yet" in line and "--quant IQ5_KS" in line
    assert hub.requests == []


def test_file_over_limit_cannot_be_split(hub, ladder, capsys):
    assert main(["publish", str(ladder[0]), "--repo", REPO, "--max-file-bytes", "50000000"]) == 1
    line = _one_error(capsys)
    assert "over the Hub's per-file limit of 50000000 bytes" in line
    assert hub.requests == []


def test_unknown_variant(hub, ladder, capsys):
    assert main(["publish", str(ladder[0]), "--repo", REPO, "--quant", "NOPE"]) == 2
    _one_error(capsys)
    assert hub.requests == []


def test_wrong_token_one_line_no_leak(hub, ladder, capsys, monkeypatch):
    bad = "hf_test_wrongTokenValue1234567"
    monkeypatch.setenv("HF_TOKEN", bad)
    assert main(["publish", str(ladder[0]), "--repo", REPO, "--quant", "IQ2_KS"]) == 1
    line = _one_error(capsys)
    assert "401" in line and bad not in line
    assert hub.lfs_puts == []


def test_staging_needs_dry_run(ladder, capsys, tmp_path):
    assert main(["publish", str(ladder[0]), "--repo", REPO, "--staging", str(tmp_path / "s")]) == 2
    assert "--staging needs --dry-run" in _one_error(capsys)
