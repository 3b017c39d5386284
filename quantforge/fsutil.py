"""Small file-system helpers every stage uses: atomic writes, confinement of output paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from quantforge.errors import InputError


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A crash or Ctrl-C leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except PermissionError:
        raise InputError("cannot write here: permission denied", where=str(path.parent), hint="choose a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def confined(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that escapes ``root`` (``..``, absolute paths, links)."""
    root_r = Path(root).resolve()
    candidate = (root_r / relative).resolve()
    if candidate != root_r and root_r not in candidate.parents:
        raise InputError(
            f"path {relative!r} escapes the output folder",
            where=str(root),
            hint="use a plain file name inside the output folder",
        )
    return candidate
