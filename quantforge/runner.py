"""Every child process quantforge starts, in one place.

Three shapes cover every tool the stages drive:

- ``run_tool``: a long run of an engine tool (``llama-quantize``, ``llama-imatrix``,
  ``llama-gguf-split``) with stdout+stderr appended to a log file, progress read from the
  lines as they stream (the parser is passed in), an optional timeout, and on Ctrl-C,
  SIGTERM, a failure or the timeout the whole process group stopped and the partial outputs
  removed before the error is raised. The error names the tool's own error line.
- ``capture``: a short or medium run whose whole output the caller reads (``--help`` and
  identification runs, ``llama-perplexity``, bench tools, ``nvidia-smi``, ``git``).
- ``stream``: a run whose output lines the caller sees as they come (``git bisect run``).

All three take argument lists (never a shell string), start the child with stdin closed and,
by default, in a process group of its own, so that a signal meant for quantforge reaches the
child only through here: on Ctrl-C or SIGTERM the group is stopped (SIGTERM, then SIGKILL
after a grace period) and ``Stopped`` (a ``KeyboardInterrupt``) is raised, so every caller's
Ctrl-C path also handles SIGTERM. A child that must stay in the caller's group (the step of a
``git bisect run``, which the driver stops as a whole) is started with ``own_group=False``.
"""

from __future__ import annotations

import collections
import datetime as _dt
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Literal, overload

from pydantic import BaseModel, ConfigDict

from quantforge.errors import BuildError, Interrupted, ToolError
from quantforge.fsutil import remove_quietly
from quantforge.lock import inheritable_fds
from quantforge.paths import os_error

#: parse_progress(line) -> (done, total) when the line reports progress, else None.
ProgressParser = Callable[[bytes], tuple[int, int] | None]

#: Seconds a stopped child gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0
#: Lines of a tool's output kept for its error message.
TAIL_LINES = 400

#: Error lines, most specific first: the first pattern with a match names the failure.
_ERROR_PATTERNS = [
    re.compile(p, re.I)
    for p in (
        r"GGML_ASSERT.*",
        r"Missing importance matrix.*",
        r"Please do not use .*",
        r"Invalid quantization type.*",
        r"invalid ggml_type.*",
        r"Invalid custom quantization.*",
        r"unknown argument.*",
        r"failed to quantize: .*",
        r"\berror\b.*",
        r"\bfailed\b.*",
        r"\bterminate called.*",
        r"Segmentation fault.*",
    )
]


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived while a child ran; the child (its process group) was stopped."""

    def __init__(self, what: str = "Ctrl-C") -> None:
        super().__init__(what)
        self.what = what  # "Ctrl-C" or "SIGTERM"


class Finished(BaseModel):
    """A child that ran to its end (or to the timeout)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    argv: tuple[str, ...]
    returncode: int  # negative: the signal that ended it
    output: str  # stdout, with stderr merged into it unless the run kept them apart
    stderr: str  # "" when merged
    seconds: float
    timed_out: bool = False

    @property
    def signal_name(self) -> str | None:
        """``SIGSEGV`` & co. when a signal ended the child."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


class ToolRun(BaseModel):
    """A ``run_tool`` run that exited 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command: list[str]
    returncode: int
    seconds: float
    log: str
    last_progress: tuple[int, int] | None = None


class _Terminate(BaseException):
    """SIGTERM while a child runs: handled like Ctrl-C."""


# ---------------------------------------------------------------------------------------
# signals and stopping


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the body runs, SIGTERM raises ``_Terminate`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminate()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def stop(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str],
    *,
    own_group: bool = True,
    sig: int = signal.SIGTERM,
    grace: float | None = STOP_GRACE_S,
) -> None:
    """Send ``sig`` to the child (its process group when ``own_group``), then SIGKILL after ``grace``."""

    def send(s: int) -> bool:
        try:
            if own_group:
                os.killpg(proc.pid, s)
            else:
                proc.send_signal(s)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    if not send(sig):
        proc.wait()
        return
    if grace is None:
        proc.wait()
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


@overload
def _start(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    own_group: bool,
    merge: bool,
    text: Literal[True],
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[str]: ...
@overload
def _start(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    own_group: bool,
    merge: bool,
    text: Literal[False],
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]: ...
def _start(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    own_group: bool,
    merge: bool,
    text: bool,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[str] | subprocess.Popen[bytes]:
    """Popen of ``argv`` (OSError when it cannot start: the caller names the fix)."""
    return subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE, cwd=cwd,
        env=dict(env) if env is not None else None, start_new_session=own_group, pass_fds=tuple(pass_fds),
        text=text, errors="replace" if text else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# capture: the whole output at the end


def capture(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    merge: bool = True,
    own_group: bool = True,
    interrupt_grace: float | None = None,
) -> Finished:
    """Run ``argv`` to its end and return its output.

    Raises ``OSError`` when it cannot start and ``Stopped`` on Ctrl-C or SIGTERM (the child
    was sent SIGTERM, and SIGKILL after ``interrupt_grace`` seconds when given). At the
    timeout the child is killed (SIGKILL) and the result says ``timed_out`` with the output
    it wrote until then.
    """
    t0 = time.monotonic()
    proc = _start(argv, cwd=cwd, env=env, own_group=own_group, merge=merge, text=True)
    try:
        with _sigterm_raises():
            try:
                out, err = proc.communicate(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                stop(proc, own_group=own_group, sig=signal.SIGKILL, grace=None)
                out, err = proc.communicate()
                timed_out = True
    except (KeyboardInterrupt, _Terminate) as exc:
        stop(proc, own_group=own_group, grace=interrupt_grace)
        raise Stopped("SIGTERM" if isinstance(exc, _Terminate) else "Ctrl-C") from None
    return Finished(
        argv=tuple(argv),
        returncode=proc.returncode,
        output=str(out or ""),
        stderr=str(err or ""),
        seconds=time.monotonic() - t0,
        timed_out=timed_out,
    )


# ---------------------------------------------------------------------------------------
# stream: every line as it comes


def stream(
    argv: Sequence[str],
    *,
    on_line: Callable[[str], None],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    own_group: bool = True,
) -> Finished:
    """Run ``argv`` (stdout and stderr merged), calling ``on_line`` with each line as it is written.

    Raises ``OSError`` when it cannot start and ``Stopped`` on Ctrl-C or SIGTERM (the child
    was sent SIGTERM and waited for).
    """
    t0 = time.monotonic()
    proc = _start(argv, cwd=cwd, env=env, own_group=own_group, merge=True, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        with _sigterm_raises():
            for line in proc.stdout:
                lines.append(line)
                on_line(line)
            proc.wait()
    except (KeyboardInterrupt, _Terminate) as exc:
        stop(proc, own_group=own_group, grace=None)
        raise Stopped("SIGTERM" if isinstance(exc, _Terminate) else "Ctrl-C") from None
    return Finished(
        argv=tuple(argv),
        returncode=proc.returncode,
        output="".join(lines),
        stderr="",
        seconds=time.monotonic() - t0,
    )


# ---------------------------------------------------------------------------------------
# run_tool: logged, with progress, partial outputs removed on every failure


def error_line(lines: Sequence[str], *, fallback: bool = True) -> str | None:
    """The tool's own error line from its output tail (None if it printed nothing useful).

    ``fallback``: without a recognisable error line, the last non-decorative line.
    """
    for pat in _ERROR_PATTERNS:
        for line in reversed(lines):
            m = pat.search(line)
            if m:
                return line.strip().strip("=").strip()
    if not fallback:
        return None
    for line in reversed(lines):
        if line.strip() and not set(line.strip()) <= set("=-"):
            return line.strip()
    return None


def run_tool(
    cmd: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    timeout: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    parse_progress: ProgressParser | None = None,
    step: str | None = None,
    partials: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
) -> ToolRun:
    """Run ``cmd`` (an argument list, never a shell string), logging and reporting progress.

    ``parse_progress`` reads ``(done, total)`` from an output line; each one goes to
    ``progress``. ``step`` names what the steps count ("tensor"): a child killed by a signal
    is reported "at tensor 12/272". Raises ``ToolError`` when the binary cannot start,
    ``BuildError`` on a non-zero exit, a signal or the timeout, ``Interrupted`` on
    Ctrl-C/SIGTERM; in each case ``partials`` are removed and the log is kept.
    """
    tool = Path(cmd[0]).name
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab", buffering=0)
    except OSError as exc:
        raise os_error(exc, log_path, what="log", action="write") from None
    stamp = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    log.write(f"# quantforge {stamp}: {shlex.join(list(cmd))}\n".encode())
    if cwd is not None:
        log.write(f"# cwd: {cwd}\n".encode())
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    last: list[tuple[int, int] | None] = [None]
    t0 = time.monotonic()
    try:
        # The child keeps this run's folder locks: an orphaned llama-quantize still owns its folder.
        proc = _start(
            cmd, cwd=cwd, env=env, own_group=True, merge=True, text=False, pass_fds=inheritable_fds()
        )
    except OSError as exc:
        log.write(f"# quantforge: cannot start {cmd[0]}: {exc}\n".encode())
        log.close()
        raise ToolError(
            f"cannot run {cmd[0]}: {exc.strerror or exc}",
            where=cmd[0],
            hint="check the toolchain with `quantforge doctor`",
        ) from exc
    out = proc.stdout
    assert out is not None

    def pump() -> None:
        for raw in iter(out.readline, b""):
            log.write(raw)
            tail.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
            if parse_progress is not None:
                got = parse_progress(raw)
                if got is not None:
                    last[0] = got
                    if progress is not None:
                        progress(*got)

    reader = threading.Thread(target=pump, name=f"{tool}-log", daemon=True)
    reader.start()
    deadline = None if timeout is None else t0 + timeout
    try:
        with _sigterm_raises():
            while True:
                # The reader sees EOF the moment the child exits, and a thread join wakes at once,
                # unlike Popen.wait(timeout), which polls with sleeps of up to 50 ms.
                reader.join(timeout=0.25)
                if not reader.is_alive():
                    rc = proc.wait()
                    break
                if proc.poll() is not None:
                    # Exited, but something (a grandchild) still holds its stdout: do not wait on it.
                    reader.join(timeout=2.0)
                    rc = proc.returncode
                    break
                if deadline is not None and time.monotonic() > deadline:
                    stop(proc, grace=2.0)
                    reader.join(timeout=5)
                    log.write(f"# quantforge: timed out after {timeout:.0f} s; stopped\n".encode())
                    remove_quietly(partials)
                    raise BuildError(
                        f"{tool} did not finish within {timeout:.0f} s and was stopped",
                        where=str(log_path),
                        hint="raise --timeout, or check the log for a hang",
                    ) from None
    except (KeyboardInterrupt, _Terminate) as exc:
        stop(proc)
        reader.join(timeout=5)
        what = "SIGTERM" if isinstance(exc, _Terminate) else "Ctrl-C"
        log.write(f"# quantforge: {what}: stopped {tool}, removed partial output\n".encode())
        remove_quietly(partials)
        raise Interrupted(
            f"{what}: stopped {tool} and removed the partial output",
            where=str(log_path),
            hint="run the same command again to resume",
        ) from None
    reader.join(timeout=5)
    seconds = time.monotonic() - t0
    log.write(f"# quantforge: exit status {rc} after {seconds:.2f} s\n".encode())
    log.close()
    if rc != 0:
        remove_quietly(partials)
        if rc < 0:
            try:
                signame = signal.Signals(-rc).name
            except ValueError:
                signame = f"signal {-rc}"
            line = error_line(list(tail), fallback=False)
            at = f" at {step} {last[0][0]}/{last[0][1]}" if last[0] and step else ""
            msg = f"{tool} was killed by {signame}{at}" + (f": {line}" if line else "")
            hint = "out of memory? check `dmesg`; the partial output was removed"
        else:
            line = error_line(list(tail)) or "no error message"
            msg = f"{tool} failed (exit {rc}): {line}"
            hint = "the full output is in the log"
        raise BuildError(msg, where=str(log_path), hint=hint)
    return ToolRun(
        command=list(cmd), returncode=rc, seconds=seconds, log=str(log_path), last_progress=last[0]
    )
