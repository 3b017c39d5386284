"""A/B between two builds: the same benchmark through two engines' folders, interleaved, with provenance.

``quantforge sweep compare --model M --a-bin-dir A --b-bin-dir B [--args '…']`` finds the sweep
tool in each folder (``llama-sweep-bench``, else ``llama-bench`` with ``-d`` depths, else
``llama-batched-bench``, else a ``libllama.so`` run through the bundled sweep in its own process),
builds the same command for both, runs them A B, B A, … after a discarded warm-up run of each,
and records each build's version/commit (``--version``, or what the run printed) and its
``system_info`` line. Anything but the build that differs between the two sides — flags, the
model file, threads, ``-rtr``, ``-ub``/``-b``, the tool — is reported as a warning, because then
the comparison no longer answers "is build B slower".
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge import runner
from quantforge.errors import InputError, ToolError
from quantforge.evaluate import knobs
from quantforge.evaluate._util import sha256_file
from quantforge.evaluate.models import SweepResult

ToolKind = Literal["sweep-bench", "llama-bench", "batched-bench", "bundled"]
_TOOLS: tuple[tuple[ToolKind, str], ...] = (("sweep-bench", "llama-sweep-bench"), ("llama-bench",
                                                                                   "llama-bench"),
                                            ("batched-bench", "llama-batched-bench"), ("bundled",
                                                                                       "libllama.so"))
BUNDLED_MODULE = "quantforge.evaluate.bundled_bench"


class BenchTool(BaseModel):
    """The sweep tool of one build folder and the exact command an A/B side runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bin_dir: str
    kind: ToolKind
    path: str  # the executable, or the libllama.so the bundled sweep loads
    command: list[str]
    version: str | None = None


def find_tool(bin_dir: str | Path, *, prefer: ToolKind | None = None) -> tuple[ToolKind, Path]:
    """The sweep tool a build folder has (sweep-bench first: it is the tool speed reports are made with)."""
    d = Path(bin_dir).expanduser()
    if not d.is_dir():
        raise InputError("build folder not found", where=str(d),
                         hint="pass the folder holding llama-sweep-bench, "
                         "llama-bench or libllama.so (e.g. build/bin)")
    order = [t for t in _TOOLS if prefer is None or t[0] == prefer]
    for kind, name in order:
        for cand in (d / name, d / "bin" / name, d / "src" / name):
            if cand.is_file() and (kind == "bundled" or os.access(cand, os.X_OK)):
                return kind, cand
    looked = ", ".join(n for _, n in order)
    raise ToolError(f"no sweep tool in this folder (looked for {looked})", where=str(d),
                    hint="build llama-sweep-bench (ik) or llama-bench, or pass the folder of a libllama.so")


def bench_command(kind: ToolKind, tool: Path, *, model: str | Path, ctx: int, ubatch: int, tg: int,
                  args: Sequence[str] = ()) -> list[str]:
    """The command one A/B side runs: the same sweep (N_KV 0, ub, 2ub … < ctx; PP = ub; TG = tg) in every
    tool."""
    if ctx < ubatch or ubatch < 1 or tg < 1:
        raise InputError(f"impossible sweep: ctx {ctx}, ubatch {ubatch}, tg {tg}",
                         hint="need ctx >= ubatch >= 1 and tg >= 1")
    m, extra = str(model), list(args)
    if kind == "sweep-bench":
        cmd = [str(tool), "-m", m, "-c", str(ctx), "-ub", str(ubatch), "-n", str(tg)]
        if ubatch > 2048 and not _has(extra, "-b", "--batch-size"):
            cmd += ["-b", str(ubatch)]  # the logical batch must hold the u-batch
        return cmd + extra
    if kind == "llama-bench":
        depths = ",".join(str(d) for d in range(0, ctx - ubatch + 1, ubatch))
        cmd = [str(tool), "-m", m, "-p", str(ubatch), "-n", str(tg), "-d", depths, "-ub", str(ubatch), "-r",
               "1",
               "-o", "json"]
        if ubatch > 2048 and not _has(extra, "-b", "--batch-size"):
            cmd += ["-b", str(ubatch)]
        return cmd + extra
    if kind == "batched-bench":
        return [str(tool), "-m", m, "-c", str(ctx), "-npp", str(ubatch), "-ntg", str(tg), "-npl", "1", *extra]
    return [sys.executable, "-m", BUNDLED_MODULE, "--lib", str(tool), "-m", m, "-c", str(ctx), "-ub",
            str(ubatch),
            "-n", str(tg), *extra]


def _has(argv: Sequence[str], *flags: str) -> bool:
    return any(a in flags or a.split("=", 1)[0] in flags for a in argv)


def tool_version(command: Sequence[str]) -> str | None:
    """``<tool> --version`` (both engines print ``version: N (commit)``), or None when it says nothing
    usable."""
    if not command:
        return None
    if len(command) > 2 and command[1:3] == ["-m", BUNDLED_MODULE]:
        lib = command[command.index("--lib") + 1] if "--lib" in command else None
        probe = [command[0], "-m", BUNDLED_MODULE, *(["--lib", lib] if lib else []), "--version"]
    else:
        probe = [command[0], "--version"]
    try:
        done = runner.capture(probe, merge=False, timeout=30)
    except OSError:
        return None
    if done.timed_out:
        return None
    text = done.output + "\n" + done.stderr
    m = re.search(r"^\s*version:\s*(.+?)\s*$", text, re.M)
    if not m:
        return None
    built = re.search(r"^\s*built with (.+?)\s*$", text, re.M)
    return m.group(1) + (f"; built with {built.group(1)}" if built else "")


def _threads_of(system_info: str | None) -> str | None:
    m = re.search(r"n_threads\s*=\s*(\d+)", system_info or "")
    return m.group(1) if m else None


def _model_of(command: Sequence[str] | None) -> Path | None:
    if not command:
        return None
    m = knobs.from_command(list(command)).get("model")
    if m is None:
        return None
    for i, a in enumerate(command):
        if a in ("-m", "--model") and i + 1 < len(command):
            return Path(command[i + 1])
        if a.startswith("--model="):
            return Path(a.split("=", 1)[1])
    return None


def setup_warnings(a: SweepResult, b: SweepResult, *, a_kind: str | None = None,
                   b_kind: str | None = None) -> list[str]:
    """What differs between two A/B sides apart from the build: each is a reason to distrust the verdict."""
    out: list[str] = []
    sa, sb = dict(a.settings), dict(b.settings)
    for s, res in ((sa, a), (sb, b)):
        t = _threads_of(res.system_info)
        if t and "t" not in s:
            s["t"] = t
    diffs = knobs.differences(sa, sb, ignore=("model",))
    if diffs:
        out.append("the two sides differ in more than the build: " + ", ".join(
            f"{d.knob} {d.baseline or 'not stated'} vs {d.candidate or 'not stated'}" for d in diffs))
    if a_kind and b_kind and a_kind != b_kind:
        out.append(f"the two sides use different tools ({a_kind} vs {b_kind}): their PP/TG methods differ")
    ma, mb = _model_of(a.command), _model_of(b.command)
    if ma and mb and ma.resolve() != mb.resolve():
        same = False
        if ma.is_file() and mb.is_file() and ma.stat().st_size == mb.stat().st_size:
            same = sha256_file(ma) == sha256_file(mb)
        if not same:
            out.append(f"the two sides run different model files ({ma.name} vs {mb.name})")
    if a.build and b.build and a.build == b.build and a.binary and b.binary and a.binary != b.binary:
        out.append(f"both builds report the same version ({a.build}): is B really another build?")
    return out
