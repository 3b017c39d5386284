"""Folder locks: one quantforge run at a time writes into a folder.

Two builds into one output folder would remove each other's ``.partial`` files; an
evaluation rewriting a manifest while a build replaces it, or two stagings of one folder, end
the same way. ``folder_lock(folder, purpose=...)`` takes an exclusive ``flock`` on
``<folder>/.quantforge.lock`` and writes the holder (pid, host, purpose, start time) into it.

* A second run is refused at once with one line naming the holder (``LockedError``, exit 1),
  or waits for it with ``wait=True`` (``--wait``); Ctrl-C while waiting is an ordinary
  interrupt.
* A lock left by a run that died is no lock at all: the kernel drops an ``flock`` with its
  last descriptor, so a crashed or SIGKILLed holder's file is simply taken over (and its pid
  overwritten).
* Child processes started while a lock is held keep it (``inheritable_fds``): a
  ``llama-quantize`` orphaned by a killed quantforge still owns the folder it writes into,
  and the next run says so instead of racing it.
* Re-entrant within one process (the demo builds, evaluates and stages one folder in a row).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from quantforge.errors import Interrupted, LockedError
from quantforge.paths import os_error

LOCK_NAME = ".quantforge.lock"

_held: dict[str, tuple[int, int]] = {}  # resolved lock path -> (fd, depth)
_guard = threading.Lock()


def lock_path(folder: str | os.PathLike[str], name: str = LOCK_NAME) -> Path:
    return Path(folder) / name


def holder(folder: str | os.PathLike[str], name: str = LOCK_NAME) -> dict[str, object] | None:
    """What the lock file of ``folder`` says about its holder (None when there is none or it is unreadable)."""
    try:
        data = json.loads(lock_path(folder, name).read_text(encoding="utf-8")[:4096])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict[str, object] | None) -> str:
    if not info:
        return "another quantforge run"
    pid = info.get("pid")
    what = f"pid {pid}" if isinstance(pid, int) else "another process"
    purpose = info.get("purpose")
    since = info.get("started")
    host = info.get("host")
    text = f"{what}" + (f" ({purpose}" + (f", since {since}" if since else "") + ")" if purpose else "")
    if host and host != socket.gethostname():
        text += f" on {host}"
    elif isinstance(pid, int) and not _alive(pid):
        text += ", which has exited but left a child process (llama-quantize …) running in it"
    return text


def inheritable_fds() -> tuple[int, ...]:
    """Descriptors of the locks this process holds, to pass to child processes (``pass_fds``)."""
    with _guard:
        return tuple(fd for fd, _ in _held.values())


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], *, purpose: str, wait: bool = False,
                name: str = LOCK_NAME, where: str | None = None) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; see the module docstring.

    ``name``: another lock file in ``folder`` (a staging folder that is replaced as a whole is
    locked through ``.<name>.staging.lock`` in its parent).
    """
    d = Path(folder)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, d, what="folder", action="create") from None
    path = lock_path(d, name)
    key = str(path.resolve())
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _guard:
                fd, depth = _held[key]
                _held[key] = (fd, depth - 1)
        return
    fd = _acquire(path, d, purpose=purpose, wait=wait, name=name, where=where or str(d))
    with _guard:
        _held[key] = (fd, 1)
    try:
        yield path
    finally:
        with _guard:
            _, depth = _held[key]
            if depth <= 1:
                del _held[key]
        try:
            # Unlink while still holding it: a run waiting on this inode re-checks and retries.
            path.unlink()
        except OSError:
            pass
        os.close(fd)


def _acquire(path: Path, folder: Path, *, purpose: str, wait: bool, name: str, where: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise os_error(exc, path, what="lock file", action="create") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise os_error(exc, path, what="lock file", action="lock") from None
                if not wait:
                    raise LockedError(
                        f"{_describe(holder(folder, name))} is using this folder",
                        where=where,
                        hint="wait for it to finish (or pass --wait), or choose another folder",
                    ) from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except KeyboardInterrupt:
                    raise Interrupted("interrupted while waiting for the folder lock", where=where,
                                      hint="nothing was written; run the command again") from None
            # The holder may have unlinked the file as it let go: then this lock is on a dead
            # inode and another run may already hold a new one. Retry on the file that is there.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "purpose": purpose,
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            return fd
        except BaseException:
            os.close(fd)
            raise
