"""Small file-system helpers every stage uses: hashing, atomic writes, confinement of output paths."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from quantforge import constants, paths

_BLOB_NAME = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (hashlib releases the GIL while it hashes).

    Read into one reused buffer: no allocation per block (about 10 % faster than ``read()``).
    """
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_background(
    path: str | os.PathLike[str], *, hasher: Callable[[Path], str] = sha256_file
) -> Callable[[], str]:
    """Start ``hasher(path)`` in a thread while other work goes on; call the result to wait for it.

    hashlib releases the GIL, so hashing overlaps a child process or a header read. The thread
    is a daemon: an error or Ctrl-C in the caller never waits for a terabyte file's hash.
    The hasher's exception, if any, is raised in the caller's thread.
    """
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["v"] = hasher(Path(path))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = exc

    t = threading.Thread(target=work, name=f"sha256 {os.fspath(path)}", daemon=True)
    t.start()

    def result() -> str:
        t.join()
        if "e" in box:
            raise box["e"]  # type: ignore[misc]
        return str(box["v"])

    return result


def _hash_cache_path() -> Path:
    # Read at call time: tests point constants.CACHE_DIR at a temporary folder.
    return constants.CACHE_DIR / "sha256-cache.json"


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of ``path``, cached on disk by (real path, size, mtime); free for Hub-cache LFS blobs.

    A base or a built variant is hashed once across processes, not once per variant or run.
    """
    real = Path(path).resolve()
    # huggingface_hub stores LFS files as blobs named by their sha256.
    if real.parent.name == "blobs" and _BLOB_NAME.fullmatch(real.name):
        return real.name
    st = real.stat()
    key = f"{real}:{st.st_size}:{st.st_mtime_ns}"
    cache_file = _hash_cache_path()
    try:
        cache: dict[str, str] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = sha256_file(real)
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def atomic_write_bytes(path: Path, data: bytes, *, what: str = "file") -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A crash or Ctrl-C leaves either the old file or the new one, never a half-written one; a
    full disk or an I/O error is one line naming the file (and the temporary file is gone).
    """
    from quantforge.paths import os_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path.parent, what=f"folder of the {what}", action="write to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise os_error(exc, path, what=what, action="write") from None
        raise
    return path


def atomic_write_text(path: Path, text: str, *, what: str = "file") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


def confined(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that escapes ``root`` (``..``, absolute paths, links)."""
    return paths.confined(root, relative)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM back for a few file operations that must happen together.

    Renaming a verified output into place and writing its manifest is one step for the user;
    a Ctrl-C in between is delivered right after it (as KeyboardInterrupt, or as SIGTERM's
    default) instead of splitting it. Outside the main thread this does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if received:
            os.kill(os.getpid(), received[0])
