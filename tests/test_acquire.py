"""Base model downloads from Hugging Face, end to end against the loopback Hub stand-in.

The real huggingface_hub client downloads a split GGUF (3 shards made by mainline
``llama-gguf-split --split --split-max-size 40M`` from the SmolLM2 Q4_1) into a temporary
``HF_HOME``: byte-identical shards, a second call that transfers nothing, a connection dropped
mid-file (resumed in the same call, or failing with one line and resumed by the next run from
the bytes already in the cache), offline mode with and without the files cached.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import sha256_file
from support.hub_server import Commit, HubStandIn, Repo, RepoFile

from quantforge.cli import main

REPO_ID = "qf-test/SmolLM2-135M-split"
SHARD1 = "smol-q4_1-00001-of-00003.gguf"
URL = f"hf://{REPO_ID}/{SHARD1}"
TOKEN = "hf_qfDownloadTestToken0123456789"
CUT = 25_000_000  # bytes of shard 1 (41 MB) sent before the connection drops
#: huggingface_hub writes what it receives in 10 MiB chunks; the part of a chunk in flight when the
#: connection drops is lost, so a resume starts at the last whole chunk.
KEPT = 2 * 10 * 1024 * 1024


@pytest.fixture(scope="module")
def split_set(tmp_path_factory: pytest.TempPathFactory, smol_q4_1: Path,
              mainline_bin_dir: Path) -> list[Path]:
    d = tmp_path_factory.mktemp("split")
    proc = subprocess.run(
        [str(mainline_bin_dir / "llama-gguf-split"), "--split", "--split-max-size", "40M", str(smol_q4_1),
         str(d / "smol-q4_1")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = sorted(d.glob("smol-q4_1-*.gguf"))
    assert [s.name for s in shards] == [f"smol-q4_1-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    return shards


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split_set: list[Path]) -> Iterator[HubStandIn]:
    from huggingface_hub import constants

    server = HubStandIn(tmp_path / "hub").start()
    files = {}
    for s in split_set:
        sha = sha256_file(s)
        server.blob_path(sha).write_bytes(s.read_bytes())
        files[s.name] = RepoFile(s.name, s.stat().st_size, sha, None)
    server.repos[REPO_ID] = Repo(REPO_ID, private=False, files=files,
                                 commits=[Commit("c0ffee" + "0" * 34, "Add split base", "", sorted(files))])
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.stop()


def _gets(hub: HubStandIn) -> list[tuple[str, str | None]]:
    _settle(hub)
    return [(r.path.rsplit("/", 1)[-1],
             r.range) for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def _settle(hub: HubStandIn) -> None:
    """The stand-in records a request after its answer went out: give the last one a moment."""
    time.sleep(0.3)


def _check_cached(path: Path, split_set: list[Path], tmp_path: Path) -> None:
    repo = tmp_path / "hf-home" / "hub" / "models--qf-test--SmolLM2-135M-split"
    snap = repo / "snapshots" / ("c0ffee" + "0" * 34)
    assert path == snap / SHARD1
    for s in split_set:
        assert sha256_file(snap / s.name) == sha256_file(s)
    assert not list((snap.parents[1] / "blobs").glob("*.incomplete"))


def test_download_split_set_then_cached(hub: HubStandIn, split_set: list[Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from quantforge.acquire import resolve_base

    path = resolve_base(URL, progress=True)
    _check_cached(path, split_set, tmp_path)
    assert _gets(hub) == [(s.name, None) for s in split_set]  # every shard, once, whole
    assert hub.download_bytes_sent == sum(s.stat().st_size for s in split_set)
    # HF_TOKEN travels as a bearer token on every request
    assert {r.authorization for r in hub.requests} == {f"Bearer {TOKEN}"}
    capsys.readouterr()  # (tqdm draws its bars on a terminal only)
    hub.reset_counters()
    assert resolve_base(URL, progress=False) == path
    assert _gets(hub) == [] and hub.download_bytes_sent == sum(s.stat().st_size for s in split_set)
    _settle(hub)
    assert {r.method for r in hub.requests} == {"HEAD"}  # only the freshness checks
    assert capsys.readouterr().err == ""


def test_connection_dropped_mid_file_resumes_in_the_same_call(hub: HubStandIn, split_set: list[Path],
                                                              tmp_path: Path) -> None:
    from quantforge.acquire import hf_download

    hub.download_faults = [CUT]
    path = hf_download(URL, progress=False)
    _check_cached(path, split_set, tmp_path)
    # the retry asks for the rest only, from the last chunk written to the .incomplete file
    assert _gets(hub) == [(SHARD1, None), (SHARD1, f"bytes={KEPT}-"), (split_set[1].name, None),
                          (split_set[2].name, None)]
    assert hub.download_bytes_sent == sum(s.stat().st_size for s in split_set) + CUT - KEPT


def test_network_error_fails_in_one_line_and_the_rerun_resumes(hub: HubStandIn, split_set: list[Path],
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from quantforge.acquire import hf_download

    # The connection drops after CUT bytes, then every retry huggingface_hub makes (5) gets nothing.
    hub.download_faults = [CUT] + [0] * 5
    out = tmp_path / "base-f16.gguf"
    assert main(["base", str(out), "--from", URL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"quantforge: error: {URL}: download failed: ")
    assert err[0].endswith("(check the network and free space, then run the same command again: "
                           "it resumes where it stopped)")
    assert not out.exists() and hub.download_faults == []
    blobs = tmp_path / "hf-home" / "hub" / "models--qf-test--SmolLM2-135M-split" / "blobs"
    partial = list(blobs.glob("*.incomplete"))
    assert [p.stat().st_size for p in partial] == [KEPT]
    hub.reset_counters()
    hub.download_bytes_sent = 0
    path = hf_download(URL, progress=False)
    _check_cached(path, split_set, tmp_path)
    assert _gets(hub) == [(SHARD1, f"bytes={KEPT}-"), (split_set[1].name, None), (split_set[2].name, None)]
    assert hub.download_bytes_sent + KEPT == sum(s.stat().st_size for s in split_set)


def test_offline_uses_the_cache_and_the_cli_builds_the_base(hub: HubStandIn, split_set: list[Path],
                                                            tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants

    from quantforge.acquire import SMOLLM2_F16_SHA256, hf_download

    path = hf_download(URL, progress=False)
    hub.stop()  # nothing can be reached any more
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset_counters()
    assert hf_download(URL, progress=False) == path
    # quantforge base reads all three shards of the cached split set: the F16 base it writes is
    # byte-identical to the one made from the unsplit Q4_1 (the fixtures' base).
    out = tmp_path / "base-f16.gguf"
    assert main(["base", str(out), "--from", URL, "--json"]) == 0
    capsys.readouterr()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SMOLLM2_F16_SHA256
    assert hub.requests == []


def test_offline_without_the_files_is_one_line(hub: HubStandIn, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "base-f16.gguf"
    assert main(["base", str(out), "--from", URL]) == 2
    err = capsys.readouterr().err
    cache = tmp_path / "hf-home" / "hub"
    assert err == (f"quantforge: error: {URL}: offline mode is on (HF_HUB_OFFLINE=1) and the file is "
                   "not in the "
                   f"cache {cache} (unset HF_HUB_OFFLINE to download it, or give a local path)\n")
    assert hub.requests == [] and not out.exists()


def test_missing_file_and_repo_are_input_errors(hub: HubStandIn, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    assert main(["base", str(out), "--from", f"hf://{REPO_ID}/nope-00001-of-00002.gguf"]) == 2
    assert capsys.readouterr().err == (
        f"quantforge: error: hf://{REPO_ID}/nope-00001-of-00002.gguf: file not found in the repository "
        "(check the path; `hf download REPO --dry-run` lists the files)\n")
    assert main(["base", str(out), "--from", "hf://qf-test/missing/x.gguf"]) == 2
    line = capsys.readouterr().err
    assert line.startswith("quantforge: error: hf://qf-test/missing/x.gguf: repository not found or not "
                           "readable")
    assert line.count("\n") == 1
