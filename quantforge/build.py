"""Building GGUF variants: run ``llama-quantize`` reliably, verify, split, write manifests.

The runner (``run_tool``) starts a tool in its own process group with stdout+stderr merged
into a log file, reports ``[ i/ N]`` progress as the lines stream, enforces an optional
timeout, and on Ctrl-C / SIGTERM / timeout kills the whole group and removes the partial
output before raising. A failure raises ``BuildError`` carrying the tool's own error line
and the log path.

A build (``build``) resolves the base, toolchain and imatrix once, then per variant: plans
it, refuses what would fail (existing output, missing imatrix data for a type that needs
it, a type the engine lacks, too little disk), runs ``llama-quantize`` into
``<output>.partial``, reads the header back and compares every tensor's type and byte
size and the file total with the plan, checks the ``general.*`` / ``quantize.*`` metadata,
splits it with ``llama-gguf-split`` above the size limit, renames into place and writes
``<output>.manifest.json``. Outputs that already verify against their manifest are
skipped, so an interrupted ladder resumes where it stopped.
"""

from __future__ import annotations

import collections
import datetime as _dt
import glob
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge import units
from quantforge.constants import HF_MAX_FILE_BYTES
from quantforge.errors import BuildError, InputError, Interrupted, QuantforgeError, ToolError, UsageError
from quantforge.fsutil import cached_sha256, interrupts_deferred, sha256_background, sha256_file

#: progress(kind, done, total): kind is "quantize", "imatrix", "split" or "hash".
Progress = Callable[[str, int, int], None]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_PROGRESS_RE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")
_IMATRIX_TOTAL_RE = re.compile(rb"computing over (\d+) chunks")
_IMATRIX_STEP_RE = re.compile(rb"\[(\d+)\]\s*[0-9.]+")
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
#: Kept free on the output disk on top of the planned bytes, unless --min-free says otherwise.
DEFAULT_MARGIN_BYTES = 256 * 1024 * 1024


class ToolRun(BaseModel):
    model_config = _FROZEN
    command: list[str]
    returncode: int
    seconds: float
    log: str
    last_progress: tuple[int, int] | None = None


class BuildResult(BaseModel):
    """One variant's outcome."""

    model_config = _FROZEN
    variant: str
    status: Literal["built", "skipped", "recovered"]
    output: str  # nominal output path (split sets: see files)
    files: tuple[str, ...]
    manifest: str
    log: str
    planned_file_bytes: int | None
    actual_file_bytes: int
    command: list[str]
    seconds: float


class LadderResult(BaseModel):
    model_config = _FROZEN
    recipe: str | None
    engine: str
    toolchain: str
    base: str
    imatrix: str | None
    results: tuple[BuildResult, ...]


class Verification(BaseModel):
    model_config = _FROZEN
    tensors: int
    tensor_bytes: int
    file_bytes: int
    metadata: dict[str, Any]


# ---------------------------------------------------------------------------------------
# the runner


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


class _Terminate(BaseException):
    """SIGTERM while a child runs: handled like Ctrl-C."""


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        try:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        except OSError:
            pass


def run_tool(
    cmd: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    timeout: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    progress_kind: Literal["quantize", "imatrix", "none"] = "quantize",
    partials: Sequence[Path] = (),
    env: dict[str, str] | None = None,
) -> ToolRun:
    """Run ``cmd`` (an argument list, never a shell string), logging and reporting progress.

    Raises ``ToolError`` when the binary cannot start, ``BuildError`` on a non-zero exit,
    a signal or the timeout, ``Interrupted`` on Ctrl-C/SIGTERM; in each case ``partials``
    are removed and the log is kept.
    """
    from quantforge.lock import inheritable_fds
    from quantforge.paths import os_error

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
    tail: collections.deque[str] = collections.deque(maxlen=400)
    last: list[tuple[int, int] | None] = [None]
    t0 = time.monotonic()
    try:
        # The child keeps this run's folder locks: an orphaned llama-quantize still owns its folder.
        proc = subprocess.Popen(
            list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True, pass_fds=inheritable_fds(),
        )  # fmt: skip
    except OSError as exc:
        log.write(f"# quantforge: cannot start {cmd[0]}: {exc}\n".encode())
        log.close()
        raise ToolError(
            f"cannot run {cmd[0]}: {exc.strerror or exc}",
            where=cmd[0],
            hint="check the toolchain with `quantforge doctor`",
        ) from exc

    def pump() -> None:
        assert proc.stdout is not None
        imatrix_total = 0
        for raw in iter(proc.stdout.readline, b""):
            log.write(raw)
            tail.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
            if progress_kind == "quantize":
                m = _PROGRESS_RE.match(raw)
                if m:
                    step = (int(m.group(1)), int(m.group(2)))
                    last[0] = step
                    if progress is not None:
                        progress(*step)
            elif progress_kind == "imatrix":
                mt = _IMATRIX_TOTAL_RE.search(raw)
                if mt:
                    imatrix_total = int(mt.group(1))
                steps = _IMATRIX_STEP_RE.findall(raw)
                if steps and imatrix_total:
                    step = (int(steps[-1]), imatrix_total)
                    last[0] = step
                    if progress is not None:
                        progress(*step)

    reader = threading.Thread(target=pump, name=f"{tool}-log", daemon=True)
    reader.start()
    old_term = None
    if threading.current_thread() is threading.main_thread():

        def on_term(signum: int, frame: object) -> None:
            raise _Terminate()

        old_term = signal.signal(signal.SIGTERM, on_term)
    deadline = None if timeout is None else t0 + timeout
    try:
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
                _kill_group(proc, grace=2.0)
                reader.join(timeout=5)
                log.write(f"# quantforge: timed out after {timeout:.0f} s; stopped\n".encode())
                _remove(partials)
                raise BuildError(
                    f"{tool} did not finish within {timeout:.0f} s and was stopped",
                    where=str(log_path),
                    hint="raise --timeout, or check the log for a hang",
                ) from None
    except (KeyboardInterrupt, _Terminate) as exc:
        _kill_group(proc)
        reader.join(timeout=5)
        what = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        log.write(f"# quantforge: {what}: stopped {tool}, removed partial output\n".encode())
        _remove(partials)
        raise Interrupted(
            f"{what}: stopped {tool} and removed the partial output",
            where=str(log_path),
            hint="run the same command again to resume",
        ) from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    reader.join(timeout=5)
    seconds = time.monotonic() - t0
    log.write(f"# quantforge: exit status {rc} after {seconds:.2f} s\n".encode())
    log.close()
    if rc != 0:
        _remove(partials)
        if rc < 0:
            try:
                signame = signal.Signals(-rc).name
            except ValueError:
                signame = f"signal {-rc}"
            line = error_line(list(tail), fallback=False)
            at = f" at tensor {last[0][0]}/{last[0][1]}" if last[0] and progress_kind == "quantize" else ""
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


# ---------------------------------------------------------------------------------------
# verification


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def verify_output(
    paths: Sequence[Path],
    plan: Any,
    *,
    expect_kv: dict[str, Any] | None = None,
    exact_file_bytes: bool = True,
) -> Verification:
    """Read the written header(s) back and compare with the plan; BuildError naming differences."""
    from quantforge.catalogue import catalogue
    from quantforge.gguf_header import read_header

    cat = catalogue(plan.engine)
    found: dict[str, tuple[str, tuple[int, ...], int]] = {}
    layout_errors: list[str] = []
    total_file = 0
    first_kv: dict[str, Any] = {}
    for i, p in enumerate(paths):
        try:
            h = read_header(p)
        except QuantforgeError as exc:
            raise BuildError(
                f"the output cannot be read back: {exc.message}", where=str(p), hint="see the log"
            ) from None
        if i == 0:
            first_kv = {k: v.value for k, v in h.kv.items()}
        size = p.stat().st_size
        total_file += size
        ordered = sorted(h.tensors, key=lambda t: t.offset)
        for j, t in enumerate(ordered):
            qt = cat.by_id(t.type_id)
            tname = qt.name if qt is not None else f"type id {t.type_id}"
            nbytes = qt.tensor_bytes(t.shape) if qt is not None else -1
            found[t.name] = (tname, tuple(t.shape), nbytes)
            # The bytes the file really holds for this tensor: up to the next one (or the end).
            end = ordered[j + 1].offset if j + 1 < len(ordered) else size - h.data_offset
            if nbytes >= 0 and end - t.offset != _pad(nbytes, h.alignment):
                layout_errors.append(
                    f"{t.name} occupies {end - t.offset} bytes, {tname} {list(t.shape)} needs {_pad(nbytes, h.alignment)}"
                )
    problems: list[str] = []
    planned = {t.name: t for t in plan.tensors}
    missing = [n for n in planned if n not in found]
    extra = [n for n in found if n not in planned]
    if missing:
        problems.append(
            f"missing tensors: {', '.join(missing[:5])}"
            + (f" (+{len(missing) - 5})" if len(missing) > 5 else "")
        )
    if extra:
        problems.append(
            f"unplanned tensors: {', '.join(extra[:5])}" + (f" (+{len(extra) - 5})" if len(extra) > 5 else "")
        )
    diffs: list[str] = []
    for name, t in planned.items():
        if name not in found:
            continue
        tname, shape, nbytes = found[name]
        if tname != t.type or nbytes != t.bytes or shape != tuple(t.shape):
            diffs.append(f"{name}: planned {t.type} {t.bytes} B, written {tname} {nbytes} B")
    if diffs:
        problems.append(
            f"{len(diffs)} tensor(s) differ from the plan: "
            + "; ".join(diffs[:5])
            + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else "")
        )
    if layout_errors:
        problems.append("tensor data layout: " + "; ".join(layout_errors[:3]))
    tensor_bytes = sum(v[2] for v in found.values())
    if not diffs and not missing and tensor_bytes != plan.tensor_bytes:
        problems.append(f"tensor bytes {tensor_bytes} != planned {plan.tensor_bytes}")
    if (
        exact_file_bytes
        and plan.file_bytes_exact
        and plan.file_bytes is not None
        and len(paths) == 1
        and total_file != plan.file_bytes
    ):
        problems.append(f"file is {total_file} bytes, planned {plan.file_bytes}")
    meta = {
        k: first_kv.get(k)
        for k in ("general.architecture", "general.name", "general.file_type", "general.quantization_version")
    }
    for key, want in (expect_kv or {}).items():
        got = first_kv.get(key)
        if got != want:
            problems.append(f"metadata {key} = {got!r}, expected {want!r}")
        meta[key] = got
    if problems:
        raise BuildError(
            "the output does not match the plan: " + " | ".join(problems),
            where=str(paths[0]),
            hint="the planner and this llama-quantize disagree; report it with the log and the plan (`quantforge plan --json`)",
        )
    return Verification(tensors=len(found), tensor_bytes=tensor_bytes, file_bytes=total_file, metadata=meta)


# ---------------------------------------------------------------------------------------
# names, base, imatrix


_BASE_SUFFIX_RE = re.compile(r"([-_.](f16|bf16|f32|fp16|bf-16))?(-\d{5}-of-\d{5})?$", re.I)


def output_stem(recipe: Any, base_path: Path) -> str:
    name = getattr(recipe.model, "name", None)
    if name:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    stem = base_path.name[: -len(".gguf")] if base_path.name.endswith(".gguf") else base_path.stem
    return _BASE_SUFFIX_RE.sub("", stem) or stem


def split_names(output: Path, n: int) -> list[Path]:
    stem = output.name[: -len(".gguf")] if output.name.endswith(".gguf") else output.name
    return [output.with_name(f"{stem}-{k:05d}-of-{n:05d}.gguf") for k in range(1, n + 1)]


def existing_outputs(output: Path) -> list[Path]:
    """The output or its split shards as they exist on disk."""
    if output.is_file():
        return [output]
    stem = output.name[: -len(".gguf")] if output.name.endswith(".gguf") else output.name
    pattern = f"{glob.escape(stem)}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf"
    return sorted(p for p in output.parent.glob(pattern) if p.is_file())


def parse_size(text: str | int | None) -> int | None:
    """``"50G"``/``"40M"``/``"1.5T"``/``"123"`` → bytes (decimal units, like llama-gguf-split and the Hub)."""
    if text is None:
        return None
    try:
        return units.parse_size(text, bare=True)
    except ValueError:
        raise UsageError(f"bad size {text!r}", hint="write e.g. 50G, 40M, 500000000") from None


def check_disk(out_dir: Path, needed: int, *, min_free: int | None) -> None:
    """BuildError when ``out_dir`` lacks ``needed`` bytes plus the free-space reserve."""
    from quantforge.paths import os_error

    reserve = DEFAULT_MARGIN_BYTES if min_free is None else min_free
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError as exc:
        raise os_error(exc, out_dir, what="output folder", action="inspect") from None
    if free < needed + reserve:
        raise BuildError(
            f"not enough free disk space in {out_dir}: {units.human_bytes(free)} free, {units.human_bytes(needed)} planned + {units.human_bytes(reserve)} kept free",
            where=str(out_dir),
            hint="free some space, choose another --out, or lower --min-free",
        )


# ---------------------------------------------------------------------------------------
# the build


class _Context(BaseModel):
    """Everything a ladder shares between variants (resolved once)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    recipe: Any
    toolchain: Any
    base_path: Path
    base_source: str
    inventory: Any
    imatrix: Any | None  # ImatrixInfo
    out_dir: Path
    threads: int


def _imatrix_meta(info: Any) -> Any:
    from quantforge.plan import ImatrixMeta

    # llama-quantize runs in the imatrix's folder and gets the bare file name, so the
    # output's quantize.imatrix.file holds no local path (and the plan predicts it exactly).
    return ImatrixMeta(
        path=Path(info.path).name,
        entries=tuple(sorted(info.names())),
        chunks=max(info.chunk_count, 0),
        dataset=info.dataset or "",
    )


def _check_types(plan: Any, toolchain: Any) -> None:
    """Refuse a plan whose types this engine's binary does not have."""
    from quantforge.catalogue import catalogue

    if plan.engine != toolchain.engine:
        other = catalogue(toolchain.engine)
        bad_tensors = [t for t in plan.tensors if other.find(t.type) is None]
        bad = sorted({t.type for t in bad_tensors})
        if bad:
            raise BuildError(
                f"{toolchain.label} at {toolchain.bin_dir} has no type {', '.join(bad)} (the recipe is for {plan.engine}), "
                f"needed by {len(bad_tensors)} tensor(s), e.g. {bad_tensors[0].name}",
                where=f"quant[{plan.name}]",
                hint="use a toolchain of the recipe's engine (quantforge doctor), or change the rule types",
            )
        raise BuildError(
            f"the recipe is for {plan.engine} but the toolchain at {toolchain.bin_dir} is {toolchain.engine}",
            where=f"quant[{plan.name}]",
            hint="point --bin-dir at a build of the recipe's engine",
        )
    if toolchain.ftypes and plan.ftype.upper() not in toolchain.ftypes:
        raise BuildError(
            f"this {toolchain.label} llama-quantize ({toolchain.version}) does not accept the base type {plan.ftype}",
            where=f"quant[{plan.name}].ftype",
            hint="update the toolchain or choose a listed ftype (llama-quantize --help)",
        )


def prepare(
    recipe: Any,
    *,
    out_dir: Path | None = None,
    base: str | None = None,
    imatrix: str | None = None,
    bin_dir: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> _Context:
    """Resolve toolchain, base, inventory and imatrix once for a ladder."""
    from quantforge.acquire import resolve_base
    from quantforge.imatrix import read_imatrix
    from quantforge.inventory import load_inventory
    from quantforge.toolchain import find_toolchain

    recipe_dir = Path(recipe.path).parent if recipe.path else Path.cwd()
    tc = find_toolchain(
        recipe.engine,
        bin_dir=bin_dir,
        recipe_bin_dir=getattr(recipe.model, "bin_dir", None),
        allow_other_engine=True,
    )
    source = base or recipe.model.base
    if not source:
        raise InputError(
            "the recipe names no base model to quantize",
            where=f"{recipe.path or 'recipe'}: model.base",
            hint='set [model] base = "path/to/model-bf16.gguf" (or hf://org/repo/file.gguf), or pass --base',
        )
    base_path = resolve_base(source, base_dir=None if base else recipe_dir)
    inventory = load_inventory(base_path, engine=recipe.engine)
    info = None
    im_source = imatrix or (recipe.imatrix.file if recipe.imatrix is not None else None)
    if im_source:
        if im_source.startswith("hf://"):
            from quantforge.acquire import hf_download

            im_path = hf_download(im_source)
        else:
            p = Path(im_source).expanduser()
            im_path = p if (imatrix or p.is_absolute()) else recipe_dir / p
        info = read_imatrix(im_path, with_sha256=True)
    elif recipe.imatrix is not None and recipe.imatrix.corpus:
        from quantforge.imatrix import default_output

        computed = default_output(recipe, base_path)  # written by `quantforge imatrix RECIPE`
        if computed.is_file():
            info = read_imatrix(computed, with_sha256=True)
    out = Path(out_dir) if out_dir else recipe_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only file system, /proc, a file in the way, permission denied
        raise InputError(
            f"cannot create the output folder: {exc.strerror or exc}",
            where=str(out),
            hint="choose a writable folder with --out",
        ) from None
    return _Context(
        recipe=recipe, toolchain=tc, base_path=base_path, base_source=source, inventory=inventory,
        imatrix=info, out_dir=out.resolve(), threads=threads or os.cpu_count() or 1,
    )  # fmt: skip


def _expected_kv(ctx: _Context, plan: Any) -> dict[str, Any]:
    from quantforge.catalogue import ftype as lookup_ftype

    kv: dict[str, Any] = {"general.architecture": ctx.inventory.arch, "general.quantization_version": 2}
    ft = lookup_ftype(plan.engine, plan.ftype)
    if ft.value is not None:
        kv["general.file_type"] = ft.value
    src_kv = ctx.inventory.kv or {}
    name = src_kv.get("general.name")
    name = getattr(name, "value", name)
    if name is not None:
        kv["general.name"] = name
    if ctx.imatrix is not None:
        kv["quantize.imatrix.file"] = Path(ctx.imatrix.path).name[:127]
        kv["quantize.imatrix.entries_count"] = ctx.imatrix.entries_count
        if ctx.imatrix.dataset:
            kv["quantize.imatrix.dataset"] = ctx.imatrix.dataset[:127]
        if ctx.imatrix.chunk_count > 0:
            kv["quantize.imatrix.chunks_count"] = ctx.imatrix.chunk_count
    return kv


def _build_key(ctx: _Context, plan: Any) -> dict[str, Any]:
    """What makes two builds of a variant the same (paths excluded, so a moved folder resumes)."""
    return {
        "quantize_args": list(plan.quantize_args),
        "ftype": plan.ftype,
        "engine": ctx.toolchain.engine,
        "engine_commit": ctx.toolchain.commit,
        "base_sha256": cached_sha256(ctx.base_path),
        "imatrix_sha256": ctx.imatrix.sha256 if ctx.imatrix is not None else None,
    }


def _record_recipe(man_path: Path, ctx: _Context) -> None:
    """A skipped variant was built from an earlier version of the recipe whose plan is the same
    (a comment, the publish table, another variant edited): record the recipe it now belongs to,
    so card and publish, which check the recipe's sha256, take the verified output as built."""
    from quantforge.manifest import read_manifest, update_manifest

    man = read_manifest(man_path)
    rec = {**man.recipe, "path": ctx.recipe.path, "sha256": ctx.recipe.sha256}
    if rec != man.recipe:
        update_manifest(man_path, recipe=rec)


def _manifest_matches(man_path: Path, key: dict[str, Any], files: list[Path]) -> bool:
    from quantforge.manifest import read_manifest, resolve_file

    try:
        man = read_manifest(man_path)
    except QuantforgeError:
        return False
    if man.plan.get("build_key") != key or not man.verification.get("ok"):
        return False
    listed = [resolve_file(man_path, f.path) for f in man.files]
    if sorted(str(p) for p in listed) != sorted(str(p.resolve()) for p in files):
        return False
    return all(p.is_file() and p.stat().st_size == f.bytes for p, f in zip(listed, man.files, strict=False))


def pending_path(man_path: Path) -> Path:
    """The journal of a commit in progress: the manifest, written before the output is renamed into place."""
    return man_path.with_name(man_path.name + ".pending")


def work_dir(output: Path) -> Path:
    """Where llama-gguf-split writes the shards of ``output`` before they are renamed into place."""
    stem = output.name[: -len(".gguf")] if output.name.endswith(".gguf") else output.name
    return output.with_name(f".{stem}.splitting")


def _output_names(output: Path) -> list[Path]:
    """Every path a build of ``output`` may write or remove (for the input-overlap check)."""
    from quantforge.manifest import manifest_path

    man = manifest_path(output)
    return [output, output.with_name(output.name + ".partial"), output.with_name(output.name + ".log"), man,
            pending_path(man), work_dir(output), *existing_outputs(output)]


def _inputs(ctx: _Context) -> list[tuple[str, Path]]:
    """The files a build reads: never written, replaced or removed, with --force or without."""
    from quantforge.acquire import split_set

    out: list[tuple[str, Path]] = [("the base model", s) for s in split_set(ctx.base_path)]
    if ctx.imatrix is not None:
        out.append(("the importance matrix", Path(ctx.imatrix.path)))
    if ctx.recipe.path:
        out.append(("the recipe", Path(ctx.recipe.path)))
    return out


def _refuse_inputs_as_outputs(ctx: _Context, output: Path) -> None:
    """Before anything is written or removed: no output name is an input, or something else in the way."""
    from quantforge.paths import kind_of, refuse_input_as_output

    names = _output_names(output)
    for path in names:
        refuse_input_as_output(path, _inputs(ctx), field="--out",
                               hint="build into another folder (--out DIR) or give the variant another name: "
                                    "an input is never overwritten, even with --force")
    for path in names:
        if path == work_dir(output):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            from quantforge.paths import os_error

            raise os_error(exc, path, what="output") from None
        if path.is_symlink() and path.name.endswith((".log", ".partial")):
            path.unlink()  # written in place: never through a link to somewhere else
        elif not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise InputError(f"{kind_of(st.st_mode)} is in the way of the output {path.name}", where=str(path),
                             hint="move it away, or build into another folder with --out")


def _read_journal(path: Path) -> Any:
    """The manifest a commit journal holds, or None when it is unreadable (then it is discarded)."""
    import json

    from quantforge.manifest import Manifest

    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError):
        return None


def _recover(ctx: _Context, plan: Any, output: Path, man_path: Path, *, log_path: Path) -> Any:
    """Finish a commit that a crash, SIGKILL or full disk cut short (``<manifest>.pending`` exists).

    The journal was written after the output had been verified and hashed, before it was
    renamed into place. What it lists is found under its final name, still as ``.partial`` or
    in the split work folder; every file's size and sha256 are checked against the journal and
    its header against the plan, then the renames and the manifest are completed: nothing is
    quantized again. Returns the manifest, or None when the journal cannot be completed (it is
    removed, with the unfinished files it names, and the variant is built anew).
    """
    from quantforge.manifest import resolve_file, write_manifest

    journal = pending_path(man_path)
    man = _read_journal(journal)
    if man is None or man.plan.get("build_key") != _build_key(ctx, plan):
        _remove([journal])
        return None
    partial = output.with_name(output.name + ".partial")
    work = work_dir(output)
    finals = [resolve_file(man_path, f.path) for f in man.files]
    ok = True
    for f, final in zip(man.files, finals, strict=True):
        if final.is_file() and final.stat().st_size == f.bytes:
            continue
        found = next((c for c in (partial, work / final.name) if c.is_file() and c.stat().st_size == f.bytes), None)
        if found is None:
            ok = False
            break
        os.replace(found, final)
    entries = list(man.files)
    if ok:
        for k, (f, final) in enumerate(zip(man.files, finals, strict=True)):
            digest = sha256_file(final)  # a journal written before hashing finished has no sha256 yet
            if f.sha256 and digest != f.sha256:
                ok = False
                break
            entries[k] = f.model_copy(update={"sha256": digest})
    if ok:
        try:
            verify_output(finals, plan, expect_kv=_expected_kv(ctx, plan), exact_file_bytes=len(finals) == 1)
        except BuildError:
            ok = False
    if not ok:
        _remove([journal, partial, work, *[p for p in finals if p.exists()]])
        return None
    base = dict(man.base)
    if not base.get("sha256"):  # journalled before the base's hash was done
        base["sha256"] = cached_sha256(ctx.base_path)
    man = man.model_copy(update={"files": entries, "base": base})
    write_manifest(man_path, man)
    _remove([journal, partial, work])
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write("# quantforge: completed an interrupted commit: the output verified against its journal\n")
    return man


def _adopt(ctx: _Context, plan: Any, existing: list[Path]) -> Verification:
    """Verify a complete output that has no manifest (its commit was cut short before this version
    kept a journal, or the disk filled while the manifest was written): every tensor, byte and
    metadata key must match the plan, so it can be recorded instead of rebuilt (BuildError if not)."""
    return verify_output(existing, plan, expect_kv=_expected_kv(ctx, plan), exact_file_bytes=len(existing) == 1)


def build_variant(
    ctx: _Context,
    variant: str,
    *,
    force: bool = False,
    min_free: int | None = None,
    split_max_bytes: int | None = HF_MAX_FILE_BYTES,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Build one variant (or skip it when its output already verifies).

    The output is committed in one journalled step: verified and hashed as ``.partial`` (or as
    shards in a work folder), the manifest written as ``<manifest>.pending``, the files renamed
    into place, the journal renamed to the manifest (Ctrl-C held back meanwhile). A run cut
    short anywhere in that step is completed by the next one without quantizing again, and an
    output that is complete but has no manifest is verified against the plan and recorded.
    """
    from quantforge.imatrix import coverage, refusal_error
    from quantforge.manifest import manifest_path
    from quantforge.paths import MAX_NAME_BYTES, confined, name_problem

    t_start = time.monotonic()
    recipe = ctx.recipe
    v = recipe.variant(variant)
    name = f"{output_stem(recipe, ctx.base_path)}-{v.name}.gguf"
    why = name_problem(name, max_bytes=255 - 40)
    if why is not None:
        raise InputError(f"the output file name {name[:80]!r}… {why}", where=f"quant[{v.name}]",
                         hint=f'set a shorter [model] name (at most {MAX_NAME_BYTES} bytes) or variant name')
    # ``name`` is one plain component (checked above) and out_dir is resolved: the output cannot leave
    # it. Its last component is not resolved: a link there is replaced by the rename, never followed.
    output = ctx.out_dir / name
    log_path = output.with_name(output.name + ".log")
    man_path = manifest_path(output)
    partial = output.with_name(output.name + ".partial")
    journal = pending_path(man_path)
    phase = ["prepare"]
    committing: list[list[Path]] = []  # [staged, finals] once the output is verified
    log_ok = [False]  # the log is written only once it is known not to be an input

    def fail(exc: QuantforgeError) -> QuantforgeError:
        if log_ok[0]:
            try:
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(f"# quantforge: error: {exc.one_line()}\n")
            except OSError:
                pass
        return exc

    def result(status: Literal["built", "skipped", "recovered"], files: list[Path], cmd: list[str],
               actual: int, planned: int | None) -> BuildResult:
        return BuildResult(
            variant=v.name, status=status, output=str(output), files=tuple(str(p) for p in files),
            manifest=str(man_path), log=str(log_path), planned_file_bytes=planned, actual_file_bytes=actual,
            command=cmd, seconds=time.monotonic() - t_start,
        )  # fmt: skip

    try:
        _refuse_inputs_as_outputs(ctx, output)
        log_ok[0] = True
        plan, cmd_final, cmd_run = _plan_and_commands(ctx, v.name, output, partial)
        if journal.exists() and not force:
            phase[0] = "recover"
            man = _recover(ctx, plan, output, man_path, log_path=log_path)
            phase[0] = "prepare"
            if man is not None:
                files = [confined(ctx.out_dir, f.path) for f in man.files]
                return result("recovered", files, cmd_final, man.actual_file_bytes, plan.file_bytes)
        existing = existing_outputs(output)
        if existing and not force:
            if _manifest_matches(man_path, _build_key(ctx, plan), existing):
                verify_output(existing, plan, expect_kv=_expected_kv(ctx, plan))
                _record_recipe(man_path, ctx)
                return result("skipped", existing, cmd_final, sum(p.stat().st_size for p in existing), plan.file_bytes)
            adopted = None
            if not man_path.exists():
                try:
                    adopted = _adopt(ctx, plan, existing)
                except BuildError:
                    adopted = None
            if adopted is None:
                raise BuildError(
                    f"{existing[0].name} already exists and is not this variant's verified build",
                    where=str(existing[0]),
                    hint="pass --force to overwrite it, or choose another --out",
                )
            phase[0] = "adopt"
            man = _write_record(ctx=ctx, plan=plan, v=v, output=output, target=man_path, log_path=log_path,
                                files=existing, ver=adopted, cmd_final=cmd_final,
                                timings={"total_s": round(time.monotonic() - t_start, 3)},
                                recovered="complete output without a manifest; verified against the plan")
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write("# quantforge: recorded a complete output that had no manifest (verified against the plan)\n")
            return result("recovered", existing, cmd_final, man.actual_file_bytes, plan.file_bytes)
        # A fresh log per attempt; pre-flight failures are written to it too.
        from quantforge import __version__

        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(
            f"# quantforge {__version__}: building {v.name} ({plan.ftype}, {ctx.toolchain.label} "
            f"{ctx.toolchain.version})\n", encoding="utf-8",
        )  # fmt: skip
        _check_types(plan, ctx.toolchain)
        cov = coverage(ctx.imatrix, plan)
        if cov.refused:
            raise refusal_error(cov, plan, have_imatrix=ctx.imatrix is not None)
        planned = plan.file_bytes or plan.tensor_bytes
        will_split = split_max_bytes is not None and planned > split_max_bytes
        check_disk(ctx.out_dir, planned * (2 if will_split else 1), min_free=min_free)
        _remove([partial, journal, work_dir(output)])
        for old in existing:  # --force: the old output goes only now, after every check passed
            _remove([old])
        _remove([man_path])

        # The base is hashed once (then cached) while llama-quantize reads it: for a 1 TB BF16 base
        # that is minutes that no longer follow the build.
        base_digest = sha256_background(ctx.base_path, hasher=cached_sha256)
        phase[0] = "quantize"
        t_q = time.monotonic()
        run_tool(
            cmd_run, log_path=log_path,
            # abspath, not resolve(): the command names the imatrix as the link, not its target.
            cwd=Path(os.path.abspath(ctx.imatrix.path)).parent if ctx.imatrix is not None else None,
            timeout=timeout, progress=(lambda i, n: progress("quantize", i, n)) if progress else None,
            partials=[partial],
        )  # fmt: skip
        quantize_s = time.monotonic() - t_q
        if not partial.is_file():
            raise BuildError(
                "llama-quantize exited 0 but wrote no output", where=str(log_path), hint="read the log"
            )
        phase[0] = "verify"
        t_v = time.monotonic()
        size = partial.stat().st_size
        will_split = split_max_bytes is not None and size > split_max_bytes
        # An output that stays whole is hashed while its header is verified; a split one is
        # hashed shard by shard in the work folder (hashing the unsplit file too would be wasted).
        output_digest = None if will_split else sha256_background(partial)
        ver = verify_output([partial], plan, expect_kv=_expected_kv(ctx, plan))
        partial_sha = output_digest() if output_digest is not None else None
        verify_s = time.monotonic() - t_v
        split_s = 0.0
        if will_split:
            assert split_max_bytes is not None
            t_s = time.monotonic()
            staged = _split(ctx, plan, partial, output, split_max_bytes, log_path, timeout=timeout)
            split_s = time.monotonic() - t_s
            finals = split_names(output, len(staged))
        else:
            staged, finals = [partial], [output]
        committing[:] = [staged, finals]
        # The verified output is journalled before it is hashed (minutes for a big model): a
        # Ctrl-C or a crash from here on never costs the quantizing again.
        phase[0] = "hash"
        record = {"ctx": ctx, "plan": plan, "v": v, "output": output, "log_path": log_path, "files": finals,
                  "ver": ver, "cmd_final": cmd_final, "sizes": [s.stat().st_size for s in staged],
                  "manifest_path_for_paths": man_path}
        journal_error = None
        try:
            _write_record(target=journal, hashes=["" for _ in staged], base_sha="",
                          timings={"quantize_s": round(quantize_s, 3)}, **record)
        except QuantforgeError as exc:  # a full disk: the renames below still put the output in place
            journal_error = exc
        t_h = time.monotonic()
        hashes = [partial_sha if partial_sha is not None and s == partial else sha256_file(s) for s in staged]
        base_sha = base_digest()
        hash_s = time.monotonic() - t_h
        # Commit: final journal, renames, manifest; Ctrl-C is held back until the three are done.
        with interrupts_deferred():
            phase[0] = "commit"
            if journal_error is None:
                try:
                    man = _write_record(
                        target=journal, base_sha=base_sha, hashes=list(hashes),
                        timings={"quantize_s": round(quantize_s, 3), "verify_s": round(verify_s, 3),
                                 "split_s": round(split_s, 3), "hash_s": round(hash_s, 3),
                                 "total_s": round(time.monotonic() - t_start, 3)}, **record,
                    )  # fmt: skip
                except QuantforgeError as exc:
                    journal_error = exc
            for src, dst in zip(staged, finals, strict=True):
                os.replace(src, dst)
            _remove([work_dir(output)])
            if journal_error is not None:
                raise journal_error
            os.replace(journal, man_path)
            phase[0] = "done"
        return result("built", finals, cmd_final, man.actual_file_bytes, plan.file_bytes)
    except (QuantforgeError, OSError, KeyboardInterrupt) as exc:
        raise fail(_failed(exc, phase[0], v.name, output, man_path, log_path, journal, committing)) from None


def _failed(exc: BaseException, phase: str, variant: str, output: Path, man_path: Path, log_path: Path,
            journal: Path, committing: list[list[Path]]) -> QuantforgeError:
    """The one line for a build that stopped in ``phase``, after making sure nothing verified is lost.

    Before quantizing nothing of this run exists; while quantizing or verifying, the partial output
    is removed; once the output is verified it is kept (a journal, or its final name) so that the
    next run records it without quantizing again; and the message says which of these happened.
    """
    from quantforge.paths import os_error

    partial = output.with_name(output.name + ".partial")
    if phase in ("quantize", "verify") or (phase == "prepare" and not journal.exists()):
        _remove([partial, work_dir(output)])
    if phase == "hash" and not journal.exists() and committing:
        # No journal (the disk is full): put the verified output in place, the next run adopts it.
        for src, dst in zip(*committing, strict=True):
            try:
                os.replace(src, dst)
            except OSError:
                pass
    kept = phase in ("hash", "commit", "adopt", "recover")
    if isinstance(exc, KeyboardInterrupt):
        if phase == "done":
            return Interrupted(f"Ctrl-C: stopped after {variant} was built, verified and recorded", where=str(man_path),
                               hint="run the same command again for the other variants")
        if kept:
            return Interrupted(f"Ctrl-C: {output.name} is complete and verified, but its manifest was not written",
                               where=str(log_path),
                               hint="run the same command again: it records the output without quantizing again")
        what = {"prepare": "before quantizing; nothing was written",
                "quantize": "while llama-quantize ran; it was stopped and the partial output removed",
                "verify": "while the output was verified; the unverified output was removed"}[phase]
        return Interrupted(f"Ctrl-C: build of {variant} stopped {what}", where=str(log_path),
                           hint="run the same command again to build it")
    err = exc if isinstance(exc, QuantforgeError) else os_error(
        exc, getattr(exc, "filename", None) or output, what="output", action="write")  # type: ignore[arg-type]
    if kept or phase == "done":
        return _committed_error(err, man_path, phase)
    return err


def _committed_error(exc: QuantforgeError, man_path: Path, phase: str) -> QuantforgeError:
    """An error after the output was verified: say that nothing needs rebuilding."""
    msg = f"the output is complete and verified, but its manifest could not be written: {exc.message}"
    return type(exc)(msg, where=exc.where or str(man_path),
                     hint="fix that, then run the same command again: it records the output without quantizing again")


def _plan_and_commands(ctx: _Context, variant: str, output: Path, partial: Path) -> tuple[Any, list[str], list[str]]:
    from quantforge.plan import expand, quantize_command

    tc = ctx.toolchain
    imeta: Any = _imatrix_meta(ctx.imatrix) if ctx.imatrix is not None else False
    plan = expand(ctx.recipe, variant, ctx.inventory, imatrix=imeta)
    im_arg = Path(ctx.imatrix.path).name if ctx.imatrix is not None else None
    cmd_final = quantize_command(plan, binary=tc.quantize, input_path=ctx.base_path, output_path=output,
                                 imatrix=im_arg, threads=ctx.threads)
    cmd_run = quantize_command(plan, binary=tc.quantize, input_path=ctx.base_path, output_path=partial,
                               imatrix=im_arg, threads=ctx.threads)
    return plan, cmd_final, cmd_run


def _write_record(
    *, ctx: _Context, plan: Any, v: Any, output: Path, target: Path, log_path: Path, files: list[Path], ver: Any,
    cmd_final: list[str], base_sha: str | None = None, sizes: list[int] | None = None,
    hashes: list[str | None] | None = None, timings: dict[str, float], recovered: str | None = None,
    manifest_path_for_paths: Path | None = None,
) -> Any:
    """Write the manifest of ``files`` to ``target`` (the manifest, or the commit journal)."""
    from quantforge import __version__
    from quantforge.imatrix import coverage
    from quantforge.manifest import Manifest, ManifestFile, relative_to_manifest, write_manifest

    man_path = manifest_path_for_paths or target
    tc, im = ctx.toolchain, ctx.imatrix
    sizes = sizes if sizes is not None else [p.stat().st_size for p in files]
    hashes = hashes if hashes is not None else [sha256_file(p) for p in files]
    entries = [
        ManifestFile(path=relative_to_manifest(man_path, p), bytes=n, sha256=sha256_file(p) if h is None else h)
        for p, n, h in zip(files, sizes, hashes, strict=True)
    ]
    cov = coverage(im, plan)
    type_counts = collections.Counter(t.type for t in plan.tensors)
    verification = {"ok": True, "tensors": ver.tensors, "tensor_bytes": ver.tensor_bytes,
                    "file_bytes": ver.file_bytes, "metadata": ver.metadata}
    if recovered:
        verification["recovered"] = recovered
    man = Manifest(
        quantforge_version=__version__,
        name=v.name,
        output=output.name,
        files=entries,
        planned_file_bytes=plan.file_bytes,
        planned_tensor_bytes=plan.tensor_bytes,
        actual_file_bytes=sum(e.bytes for e in entries),
        file_bytes_exact=plan.file_bytes_exact,
        command=cmd_final,
        engine=tc.engine,
        engine_build=tc.build_number,
        engine_commit=tc.commit,
        toolchain={"source": tc.source, "quantize": tc.quantize, "version": tc.version, "compiler": tc.compiler},
        recipe={"path": ctx.recipe.path, "sha256": ctx.recipe.sha256, "variant": v.name, "ftype": plan.ftype},
        base={
            "source": ctx.base_source, "path": relative_to_manifest(man_path, ctx.base_path),
            "bytes": ctx.base_path.stat().st_size,
            "sha256": base_sha if base_sha is not None else cached_sha256(ctx.base_path),
        },
        imatrix=None if im is None else {
            "path": relative_to_manifest(man_path, im.path), "sha256": im.sha256, "format": im.format,
            "dataset": im.dataset, "chunk_count": im.chunk_count, "entries": im.entries_count,
            "coverage": {"covered": cov.covered, "total": cov.total, "missing": [g.tensor for g in cov.missing]},
        },
        plan={"n_tensors": len(plan.tensors), "n_params": plan.n_params, "bpw": round(plan.bpw, 4),
              "types": dict(type_counts), "build_key": _build_key(ctx, plan)},
        verification=verification,
        timings=timings,
        log=relative_to_manifest(man_path, log_path),
        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    )  # fmt: skip
    write_manifest(target, man)
    return man


def _split(
    ctx: _Context,
    plan: Any,
    partial: Path,
    output: Path,
    max_bytes: int,
    log_path: Path,
    *,
    timeout: float | None,
) -> list[Path]:
    """Split ``partial`` into ``<stem>-0000k-of-0000N.gguf`` shards with llama-gguf-split.

    The shards are verified and left in the work folder (``work_dir(output)``), in order; the
    caller renames them into place as part of its journalled commit. ``partial`` is removed.
    """
    from quantforge.catalogue import catalogue
    from quantforge.toolchain import find_toolchain

    binary = ctx.toolchain.gguf_split
    if binary is None:
        # A mainline gguf-split copies tensors verbatim but must know every type id.
        main_cat = catalogue("mainline")
        if all(
            main_cat.find(t.type) is not None
            and main_cat.get(t.type).type_id == catalogue(plan.engine).get(t.type).type_id
            for t in plan.tensors
        ):
            try:
                binary = find_toolchain("mainline").gguf_split
            except ToolError:
                binary = None
    if binary is None:
        _remove([partial])
        raise BuildError(
            f"the output ({partial.stat().st_size if partial.exists() else 0} bytes) is over the split limit but no usable llama-gguf-split was found",
            where=str(log_path),
            hint="add an ik_llama.cpp build with llama-gguf-split via --bin-dir, or raise --split-max",
        )
    stem = output.name[: -len(".gguf")] if output.name.endswith(".gguf") else output.name
    work = work_dir(output)
    _remove([work])
    work.mkdir()
    # gguf-split counts only tensor data against --split-max-size (M = 10^6 bytes), while the
    # first shard also carries the whole KV header: leave room for it so no shard passes the cap.
    header = plan.header_bytes or 64 * 1024 * 1024
    size_arg = f"{max(1, (max_bytes - header - 1_000_000) // 1_000_000)}M"
    try:
        run_tool(
            [binary, "--split", "--split-max-size", size_arg, str(partial), str(work / stem)],
            log_path=log_path,
            timeout=timeout,
            progress_kind="none",
            partials=[work],
        )
        shards = sorted(work.glob(f"{stem}-*-of-*.gguf"))
        if not shards:
            raise BuildError("llama-gguf-split wrote no shards", where=str(log_path))
        verify_output(shards, plan, exact_file_bytes=False)
        over = [s.name for s in shards if s.stat().st_size > max_bytes]
        if over:
            raise BuildError(
                f"llama-gguf-split wrote shard(s) over {max_bytes} bytes: {', '.join(over)}",
                where=str(log_path),
                hint="a single tensor is larger than the limit; raise --split-max",
            )
        if [s.name for s in shards] != [f.name for f in split_names(output, len(shards))]:
            raise BuildError(f"llama-gguf-split named its shards {shards[0].name} …, not as expected",
                             where=str(log_path))
    except BaseException:
        _remove([work, partial])
        raise
    _remove([partial])
    return shards


def _log_early_failure(
    recipe: Any, names: Sequence[str], exc: QuantforgeError, *, out_dir: Path | None, base: str | None
) -> None:
    """Record a failure before any variant started (no toolchain, no base …) in their logs."""
    source = base or getattr(recipe.model, "base", None)
    if not source:
        return
    rdir = Path(recipe.path).parent if recipe.path else Path.cwd()
    folder = Path(out_dir) if out_dir else rdir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    from quantforge.paths import same_file

    stem = output_stem(recipe, Path(source.rsplit("/", 1)[-1]))
    for name in names:
        log = folder / f"{stem}-{name}.gguf.log"
        if same_file(log, source if source.startswith("/") else rdir / source):
            continue  # never append to an input
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"# quantforge: error: {exc.one_line()}\n")
        except OSError:
            pass


def build(
    recipe: Any,
    *,
    variants: Sequence[str] | None = None,
    out_dir: Path | None = None,
    base: str | None = None,
    imatrix: str | None = None,
    bin_dir: str | None = None,
    threads: int | None = None,
    force: bool = False,
    min_free: int | None = None,
    split_max_bytes: int | None = HF_MAX_FILE_BYTES,
    timeout: float | None = None,
    progress: Progress | None = None,
    on_result: Callable[[BuildResult], None] | None = None,
    wait: bool = False,
) -> LadderResult:
    """Build ``variants`` (None: the first variant) of ``recipe``; resolve shared inputs once.

    The output folder is locked for the whole ladder: a second build (or an evaluation) of the
    same folder is refused with the holder's pid, or waits for it with ``wait``.
    """
    from quantforge.lock import folder_lock

    names = [recipe.variant(n).name for n in variants] if variants else [recipe.variant(None).name]
    try:
        ctx = prepare(
            recipe,
            out_dir=out_dir,
            base=base,
            imatrix=imatrix,
            bin_dir=bin_dir,
            threads=threads,
            progress=progress,
        )
    except QuantforgeError as exc:
        _log_early_failure(recipe, names, exc, out_dir=out_dir, base=base)
        raise
    results: list[BuildResult] = []
    label = Path(recipe.path).name if recipe.path else "recipe"
    with folder_lock(ctx.out_dir, purpose=f"quantforge build {label}", wait=wait):
        for name in names:
            r = build_variant(
                ctx,
                name,
                force=force,
                min_free=min_free,
                split_max_bytes=split_max_bytes,
                timeout=timeout,
                progress=progress,
            )
            results.append(r)
            if on_result is not None:
                on_result(r)
    return LadderResult(
        recipe=recipe.path, engine=ctx.toolchain.engine, toolchain=f"{ctx.toolchain.label} {ctx.toolchain.version} ({ctx.toolchain.source})",
        base=str(ctx.base_path), imatrix=ctx.imatrix.path if ctx.imatrix else None, results=tuple(results),
    )  # fmt: skip
