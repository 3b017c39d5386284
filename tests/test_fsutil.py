"""quantforge.fsutil: the one sha256 (plain and disk-cached) and the one atomic write."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from quantforge import constants, fsutil, imatrix
from quantforge.evaluate import _util


def test_sha256_file_matches_hashlib_across_chunk_edges(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000 + b"tail"  # 10 240 004 bytes: several 4 MiB blocks + a remainder
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert fsutil.sha256_file(p) == want
    assert fsutil.sha256_file(p, chunk=4097) == want
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert fsutil.sha256_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # The names other stages import are the same function, not copies.
    assert imatrix.sha256_file is fsutil.sha256_file


def test_cached_sha256_is_kept_on_disk_and_follows_changes(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "CACHE_DIR", tmp_path / "cache")
    p = tmp_path / "base.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 100)
    first = fsutil.cached_sha256(p)
    assert first == hashlib.sha256(p.read_bytes()).hexdigest()
    cache = json.loads((tmp_path / "cache" / "sha256-cache.json").read_text())
    st = p.stat()
    assert cache == {f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}": first}
    # A cached entry is trusted while size and mtime stay (that is the point: no re-hash) ...
    key = next(iter(cache))
    (tmp_path / "cache" / "sha256-cache.json").write_text(json.dumps({key: "0" * 64}))
    assert fsutil.cached_sha256(p) == "0" * 64
    # ... and a changed file is hashed again.
    p.write_bytes(b"GGUF" + b"\1" * 100)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fsutil.cached_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert _util.sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_cached_sha256_names_hub_blobs_without_reading_them(tmp_path: Path) -> None:
    digest = "ab" * 32
    blob = tmp_path / "blobs" / digest
    blob.parent.mkdir()
    blob.write_bytes(b"anything")  # the Hub names LFS blobs by their sha256
    link = tmp_path / "model.gguf"
    link.symlink_to(blob)
    assert fsutil.cached_sha256(link) == digest


def test_atomic_write_text_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "m.manifest.json"
    fsutil.atomic_write_text(p, "one\n")
    fsutil.atomic_write_text(p, "two\n")
    assert p.read_text() == "two\n"
    assert sorted(x.name for x in p.parent.iterdir()) == ["m.manifest.json"]



def test_sha256_background_returns_the_digest_or_raises_in_the_caller(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    assert fsutil.sha256_background(p)() == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert fsutil.sha256_background(p, hasher=lambda q: f"custom {Path(q).name}")() == "custom x.bin"
    missing = fsutil.sha256_background(tmp_path / "missing.bin")
    with pytest.raises(FileNotFoundError):
        missing()
