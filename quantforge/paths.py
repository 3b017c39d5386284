"""One path policy for everything quantforge reads or writes.

Three rules, each checked once, at the edge, by the functions here:

* **Names that become files** (variant names, shard names, staging entries, Hub paths and
  ETags, manifest entries) are single, printable components: no ``/`` or ``\\``, not ``.`` or
  ``..``, no NUL or other control character, at most ``MAX_NAME_BYTES`` bytes. A bad one is
  one line naming the field (``check_name``, ``check_relative``).
* **Everything written stays under its root**, checked after resolving symlinks
  (``confined``), and an output never is, contains or lies inside an input
  (``refuse_overlap``): ``--force`` replaces earlier outputs, never the base, the imatrix, the
  recipe or a build folder.
* **Inputs are regular files of bounded size**, refused *before* they are opened when they are
  a FIFO, a device, a folder, a socket or a symlink loop (``open_input`` opens without
  blocking and checks what it got), read with a size bound (``read_input_bytes``), and every
  ``OSError`` becomes one line with the path (``os_error``): exit 2 when the input is at fault
  (missing, unreadable, not a file), 1 when the system is (I/O error, disk full).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from quantforge.errors import FileSystemError, InputError, QuantforgeError

#: The longest name component quantforge accepts (file systems allow 255 bytes; outputs add
#: ``-<variant>``, ``-00001-of-00009.gguf``, ``.manifest.json`` and ``.partial`` around it).
MAX_NAME_BYTES = 100
#: The longest relative path (Hub paths, manifest entries) quantforge accepts.
MAX_PATH_BYTES = 1000
#: Size bounds for the text inputs: nobody writes a 16 MiB recipe; a file that large is a mistake.
MAX_RECIPE_BYTES = 16 << 20
MAX_TARGET_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_JSON_BYTES = 256 << 20
MAX_CORPUS_BYTES = 2 << 30

InputErrorType = type[QuantforgeError]


# --------------------------------------------------------------------------- names


def name_problem(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> str | None:
    """Why ``name`` cannot be one file-name component, or None when it can."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}, which names a folder, not a file"
    for ch in name:
        if ch in "/\\":
            return f"contains {ch!r}, a path separator"
        if ch == "\0":
            return "contains a NUL character"
        if ord(ch) < 32 or 127 <= ord(ch) < 160:
            return f"contains the control character {ch!r}"
    if name != name.strip():
        return "starts or ends with white space"
    size = len(name.encode("utf-8", errors="surrogateescape"))
    if size > max_bytes:
        return f"is {size} bytes long (at most {max_bytes})"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def check_name(name: str, *, field: str, where: str | None = None, error: InputErrorType = InputError,
               max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` if it can be one file-name component; else ``error`` naming ``field``."""
    why = name_problem(name, max_bytes=max_bytes)
    if why is not None:
        raise error(
            f"{field.rsplit('.', 1)[-1].rsplit(']', 1)[-1] or 'name'} {name!r} {why}",
            where=where or field,
            hint="use a plain name of letters, digits, '.', '_', '-' (it becomes part of file names)",
        )
    return name


def relative_problem(path: str, *, max_bytes: int = MAX_PATH_BYTES) -> str | None:
    """Why ``path`` cannot be a relative path of plain components (``a/b/c.gguf``), or None."""
    if not path:
        return "is empty"
    if path.startswith("/"):
        return "is absolute"
    if len(path.encode("utf-8", errors="surrogateescape")) > max_bytes:
        return f"is longer than {max_bytes} bytes"
    for part in path.split("/"):
        why = name_problem(part, max_bytes=255)
        if why is not None:
            return f"has a component that {why}" if part else "has an empty component (//)"
    return None


def check_relative(path: str, *, field: str, where: str | None = None,
                   error: InputErrorType = InputError) -> str:
    """``path`` if it is a relative path of plain components; else ``error`` naming ``field``."""
    why = relative_problem(path)
    if why is not None:
        raise error(f"{field} {path!r} {why}", where=where or field,
                    hint="only plain relative names inside the folder are allowed")
    return path


# --------------------------------------------------------------------------- where things go


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` with its symlinks resolved; a symlink loop (which ``resolve`` cannot follow) stays absolute."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """``path`` is ``root`` or lies below it, after resolving symlinks on both."""
    p, r = resolved(path), resolved(root)
    return p == r or r in p.parents


def confined(root: str | os.PathLike[str], relative: str, *, what: str = "the output folder") -> Path:
    """``root / relative`` resolved, refusing anything that escapes ``root`` (``..``, absolute paths, links)."""
    root_r = resolved(root)
    try:
        candidate = (root_r / relative).resolve()
    except (RuntimeError, OSError):
        raise InputError(f"path {relative!r} is a symlink loop", where=str(root),
                         hint=f"use a plain file name inside {what}") from None
    if candidate != root_r and root_r not in candidate.parents:
        raise InputError(
            f"path {relative!r} escapes {what}",
            where=str(root),
            hint=f"use a plain file name inside {what}",
        )
    return candidate


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """The same file: one resolved path, or one inode (a hard link) when both exist."""
    pa, pb = Path(a), Path(b)
    if resolved(pa) == resolved(pb):
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:
        return False


def overlaps(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """``a`` and ``b`` are the same path, or one contains the other (resolved, hard links included)."""
    return same_file(a, b) or is_within(a, b) or is_within(b, a)


def refuse_overlap(output: str | os.PathLike[str], inputs: Iterable[tuple[str, str | os.PathLike[str]]], *,
                   field: str, hint: str) -> None:
    """``InputError`` when ``output`` is, contains or lies inside one of ``inputs`` (``(what, path)``).

    Checked before anything is written or removed, with ``--force`` or without: an output
    folder that holds the base, or a staging folder that is the build folder, would destroy the
    inputs the moment it is cleared.
    """
    out = Path(output)
    for what, path in inputs:
        if overlaps(out, path):
            p = Path(path)
            if same_file(out, p):
                rel = "is"
            elif is_within(p, out):
                rel = "contains"
            else:
                rel = "lies inside"
            raise InputError(f"{field} {out} {rel} {what} {p}", where=field, hint=hint)


def refuse_input_as_output(output: str | os.PathLike[str],
                           inputs: Iterable[tuple[str, str | os.PathLike[str]]], *, field: str, hint: str) -> None:
    """``InputError`` when the output *file* ``output`` would be one of the ``inputs`` (same path or inode)."""
    for what, path in inputs:
        if same_file(output, path):
            link = "" if resolved(output) == resolved(path) else f" (a hard link of {path})"
            raise InputError(f"the output {output} is {what}{link}", where=field, hint=hint)


# --------------------------------------------------------------------------- reading inputs


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _file(what: str) -> str:
    return what if what.endswith(("file", "folder")) else f"{what} file"


def os_error(exc: OSError, path: str | os.PathLike[str], *, what: str = "file", action: str = "read",
             error: InputErrorType = InputError) -> QuantforgeError:
    """One line for an ``OSError`` on ``path``: ``error`` (exit 2) when the input or the chosen
    place is at fault, ``FileSystemError`` (exit 1) when the system is."""
    where = str(path)
    code = exc.errno
    if code == errno.ENOENT:
        return error(f"{_file(what)} not found", where=where, hint="check the path")
    if code in (errno.EACCES, errno.EPERM):
        return error(f"cannot {action} the {what}: permission denied", where=where, hint="check the permissions")
    if code == errno.ELOOP:
        return error(f"the {what} path is a symlink loop", where=where, hint="fix or remove the symbolic link")
    if code == errno.EISDIR:
        return error(f"is a folder, not a {_file(what)}", where=where, hint=f"give the path of a {_file(what)}")
    if code == errno.ENOTDIR:
        return error(f"a part of the {what} path is a file, not a folder", where=where, hint="check the path")
    if code == errno.ENAMETOOLONG:
        return error(f"the {what} name is too long for the file system", where=where, hint="use a shorter name")
    if code == errno.EROFS:
        return error(f"cannot {action} the {what}: read-only file system", where=where,
                     hint="choose a writable folder")
    if code == errno.ENXIO:
        return error(f"the {what} is a socket or device without a reader", where=where, hint="give a regular file")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return FileSystemError(f"no space left on the device while writing the {what}", where=where,
                               hint="free some space, then run the same command again")
    if code == errno.EMFILE or code == errno.ENFILE:
        return FileSystemError(f"too many open files while opening the {what}", where=where,
                               hint="raise the open-file limit (ulimit -n)")
    reason = exc.strerror or type(exc).__name__
    return FileSystemError(f"cannot {action} the {what}: {reason}", where=where,
                           hint="check the disk and the file system, then run the same command again")


def check_input_file(path: str | os.PathLike[str], *, what: str = "file",
                     error: InputErrorType = InputError) -> Path:
    """``path`` when it names a regular file (symlinks followed); else ``error`` in one line."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise os_error(exc, p, what=what, error=error) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"is {kind_of(st.st_mode)}, not a {_file(what)}", where=str(p),
                    hint=f"give the path of a {_file(what)}")
    return p


def open_input(path: str | os.PathLike[str], *, what: str = "file", error: InputErrorType = InputError) -> BinaryIO:
    """Open a regular file for reading without ever blocking on it.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; the
    descriptor is then checked with ``fstat`` (no window between the check and the open) and a
    FIFO, device, folder or socket is refused before one byte is read.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise os_error(exc, p, what=what, error=error) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"is {kind_of(st.st_mode)}, not a {_file(what)}", where=str(p),
                        hint=f"give the path of a {_file(what)}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input_bytes(path: str | os.PathLike[str], *, what: str = "file", max_bytes: int,
                     error: InputErrorType = InputError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading)."""
    p = Path(path)
    with open_input(p, what=what, error=error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"the {what} is {size} bytes, more than the {max_bytes} a {what} may have",
                        where=str(p), hint=f"give the right file (a {what} is far smaller)")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise os_error(exc, p, what=what, error=error) from None
    if len(data) > max_bytes:  # it grew while we read it
        raise error(f"the {what} is more than {max_bytes} bytes", where=str(p), hint="give the right file")
    return data


def read_input_text(path: str | os.PathLike[str], *, what: str = "file", max_bytes: int,
                    error: InputErrorType = InputError) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``; invalid UTF-8 named by its byte."""
    data = read_input_bytes(path, what=what, max_bytes=max_bytes, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (invalid byte at offset {exc.start})", where=str(path),
                    hint=f"save the {what} as UTF-8") from None


def read_input_json(path: str | os.PathLike[str], *, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
                    error: InputErrorType = InputError) -> object:
    """A JSON document from a regular file: bounded, UTF-8, errors named by line and column."""
    import json

    text = read_input_text(path, what=what, max_bytes=max_bytes, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}",
                    hint=f"fix or replace the {what}") from None
    except RecursionError:
        raise error(f"{what} nests arrays or objects too deeply", where=str(path),
                    hint=f"fix or replace the {what}") from None


def parse_toml(text: str, *, where: str, what: str, error: InputErrorType = InputError) -> dict[str, object]:
    """``tomllib.loads`` with every failure as one line naming the file (and the line, when known)."""
    import re
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        loc = f"{where}:{m.group(1)}:{m.group(2)}" if m else where
        raise error(f"{what} is not valid TOML: {re.sub(r' ?[(]at line.*', '', msg)}", where=loc,
                    hint="fix the TOML syntax") from None
    except RecursionError:
        raise error(f"{what} nests arrays or tables too deeply", where=where, hint="fix the TOML") from None
