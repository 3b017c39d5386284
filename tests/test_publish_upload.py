"""Upload through the real huggingface_hub client to a local stand-in of the Hub (loopback HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.hub_server import HubStandIn

from quantforge.errors import PublishError, UsageError
from quantforge.fsutil import sha256_file
from quantforge.publish.upload import (
    LocalFile,
    VariantFiles,
    build_plan,
    check_repo_id,
    execute,
    write_staging,
)

TOKEN = "hf_test_s3cr3tT0kenForStandIn42"
SHA = "ab" * 32
CARD = "---\nlicense: apache-2.0\ntags:\n- gguf\n---\n# Test\n\n[a](A-00001-of-00002.gguf)\n"


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    server = HubStandIn(tmp_path / "hub", token=TOKEN).start()
    # Plain LFS transfer (the stand-in speaks no Xet), online; HF_ENDPOINT is read at call time.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.stop()


def _file(path: Path, size: int, seed: int) -> LocalFile:
    import random

    rnd = random.Random(seed)
    path.write_bytes(b"GGUF" + rnd.randbytes(size - 4))
    return LocalFile(path=str(path), bytes=size, sha256=sha256_file(path))


@pytest.fixture()
def variants(tmp_path: Path) -> list[VariantFiles]:
    d = tmp_path / "out"
    d.mkdir()
    a = [_file(d / f"M-A-0000{i}-of-00002.gguf", 1_500_000 + i, i) for i in (1, 2)]
    b = [_file(d / "M-B.gguf", 2_000_000, 7)]
    c = [_file(d / "M-C.gguf", 1_000_000, 8)]
    return [VariantFiles(name="A", files=tuple(a)), VariantFiles(name="B", files=tuple(b)),
            VariantFiles(name="C", files=tuple(c))]


def _plan(variants: list[VariantFiles], tmp_path: Path, **kw):
    plot = tmp_path / "ppl.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    return build_plan(repo="test-org/M-GGUF", recipe_sha256=SHA, card=CARD, variants=variants,
                      extras=[("plots/ppl.png", str(plot), "plot")], **kw)


def test_plan_layout_and_commit_order(variants, tmp_path):
    plan = _plan(variants, tmp_path)
    assert [f.path_in_repo for f in plan.files] == [
        "A/M-A-00001-of-00002.gguf", "A/M-A-00002-of-00002.gguf", "M-B.gguf", "M-C.gguf", "plots/ppl.png",
        "README.md"]
    assert [c.paths for c in plan.commits] == [
        ("A/M-A-00001-of-00002.gguf", "A/M-A-00002-of-00002.gguf"), ("M-B.gguf",), ("M-C.gguf",),
        ("plots/ppl.png",), ("README.md",)]
    assert all(SHA in c.summary for c in plan.commits)
    assert plan.total_bytes == 1_500_001 + 1_500_002 + 2_000_000 + 1_000_000 + 8 + 256 * 40 + len(CARD)


def test_dry_run_staging_is_exact(variants, tmp_path):
    plan = write_staging(_plan(variants, tmp_path), tmp_path / "staging")
    repo = tmp_path / "staging" / "repo"
    staged = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert staged == sorted(f.path_in_repo for f in plan.files)
    for f in plan.files:
        assert sha256_file(repo / f.path_in_repo) == f.sha256
    doc = json.loads((tmp_path / "staging" / "upload-plan.json").read_text())
    assert [c["paths"][-1] for c in doc["commits"]][-1] == "README.md"
    assert str(tmp_path) not in json.dumps(doc)  # no local paths in the plan file


def test_upload_end_to_end(hub, variants, tmp_path, capsys, caplog):
    plan = _plan(variants, tmp_path)
    res = execute(plan, token=TOKEN)
    repo = hub.repos["test-org/M-GGUF"]
    # every file arrived byte-identical
    for f in plan.files:
        local = plan.card.encode() if f.kind == "card" else Path(f.source).read_bytes()
        assert hub.file_bytes("test-org/M-GGUF", f.path_in_repo) == local
    assert res.bytes_uploaded == plan.total_bytes
    # the card is the last commit and every commit carries the recipe sha256
    assert [c.paths for c in repo.commits][-1] == ["README.md"]
    assert len(repo.commits) == 5 and all(SHA in c.summary for c in repo.commits)
    # a second publish uploads nothing and makes no commit
    hub.reset_counters()
    res2 = execute(plan, token=TOKEN)
    assert res2.uploaded == () and len(res2.skipped) == len(plan.files)
    assert hub.lfs_bytes_received == 0 and hub.lfs_puts == []
    assert not any(r.path.startswith("/api/models/test-org/M-GGUF/commit") for r in hub.requests)
    assert len(repo.commits) == 5
    # a changed card alone is re-committed, last
    plan3 = _plan(variants, tmp_path).model_copy(update={"card": CARD + "\nmore\n"})
    hub.reset_counters()
    res3 = execute(plan3, token=TOKEN)
    assert res3.uploaded == ("README.md",) and hub.lfs_bytes_received == 0
    assert repo.commits[-1].paths == ["README.md"]
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text + res.model_dump_json()


def test_interrupted_upload_resumes(hub, variants, tmp_path):
    plan = _plan(variants, tmp_path)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    hub.hold_after_uploads = 1  # the second LFS PUT hangs: the publisher's machine "dies" there
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "HF_TOKEN": TOKEN}
    code = (
        "import sys; from quantforge.publish.upload import UploadPlan, execute\n"
        "plan = UploadPlan.model_validate_json(open(sys.argv[1]).read())\n"
        "execute(plan, token=__import__('os').environ['HF_TOKEN'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(plan_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert hub.held.wait(60), "the stand-in never saw a second upload"
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    hub.hold_after_uploads = None
    hub.release.set()
    first = list(hub.lfs_puts)
    assert len(first) == 1 and hub.repos["test-org/M-GGUF"].commits == []
    assert TOKEN.encode() not in out
    hub.reset_counters()
    res = execute(plan, token=TOKEN)
    # only the files missing from storage were sent; the one that arrived before the crash was not
    gguf = {f.sha256: f for f in plan.files if f.kind != "card"}
    assert first[0] not in hub.lfs_puts
    assert sorted(hub.lfs_puts) == sorted(s for s in gguf if s != first[0])
    assert hub.lfs_bytes_received == sum(f.bytes for s, f in gguf.items() if s != first[0])
    for f in plan.files:
        local = plan.card.encode() if f.kind == "card" else Path(f.source).read_bytes()
        assert hub.file_bytes("test-org/M-GGUF", f.path_in_repo) == local
    assert hub.repos["test-org/M-GGUF"].commits[-1].paths == ["README.md"]
    assert res.repo == "test-org/M-GGUF"


def test_over_limit_file_refused_before_any_request(hub, variants, tmp_path):
    with pytest.raises(PublishError, match="over the Hub's per-file limit") as ei:
        _plan(variants, tmp_path, max_file_bytes=1_600_000)
    assert ei.value.where == "B"
    assert hub.requests == []


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "-org/x", "org/x--y", "org/", "org/na me",
                                 "o/" + "x" * 97])
def test_repo_id_malformed(bad):
    with pytest.raises(UsageError, match="malformed"):
        check_repo_id(bad)


def test_wrong_token_is_one_scrubbed_error(hub, variants, tmp_path):
    bad = "hf_test_wrongWrongWrong123"
    with pytest.raises(PublishError) as ei:
        execute(_plan(variants, tmp_path), token=bad)
    assert bad not in str(ei.value) and "\n" not in str(ei.value)
    assert "401" in str(ei.value)
    assert hub.lfs_puts == []

