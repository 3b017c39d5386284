"""Building GGUF variants: run ``llama-quantize`` reliably, verify, split, write manifests.

Every tool runs through ``quantforge.runner.run_tool`` (its own process group, output logged,
``[ i/ N]`` progress read by ``quantize_progress``, partial outputs removed on Ctrl-C, SIGTERM,
a failure or the timeout; a failure names the tool's own error line and the log).

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
import functools
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge import __version__, units
from quantforge.acquire import resolve_base
from quantforge.catalogue import catalogue
from quantforge.catalogue import ftype as lookup_ftype
from quantforge.constants import HF_MAX_FILE_BYTES
from quantforge.errors import BuildError, InputError, Interrupted, QuantforgeError, ToolError, UsageError
from quantforge.fsutil import (
    cached_sha256,
    interrupts_deferred,
    remove_quietly,
    sha256_background,
    sha256_file,
)
from quantforge.gguf_header import read_header
from quantforge.imatrix import (
    ImatrixCoverage,
    ImatrixInfo,
    ImatrixMeta,
    compute_imatrix,
    coverage,
    default_output,
    imatrix_file,
    imatrix_toolchain,
    quantize_meta,
    read_imatrix,
    refusal_error,
    resolve_corpus,
)
from quantforge.inventory import TensorInventory, load_inventory
from quantforge.lock import folder_lock
from quantforge.manifest import (
    Manifest,
    ManifestFile,
    RecipeRecord,
    VerificationRecord,
    manifest_path,
    read_manifest,
    relative_to_manifest,
    resolve_file,
    update_manifest,
    write_manifest,
)
from quantforge.names import (
    existing_outputs,
    gguf_stem,
    log_file,
    output_stem,
    partial_file,
    split_names,
    split_set,
    split_work_dir,
    variant_output,
)
from quantforge.paths import (
    MAX_NAME_BYTES,
    confined,
    kind_of,
    name_problem,
    os_error,
    refuse_input_as_output,
    same_file,
)
from quantforge.plan import QuantPlan, expand, quantize_command
from quantforge.recipe import QuantVariant, Recipe
from quantforge.runner import run_tool
from quantforge.toolchain import Toolchain, find_toolchain

#: progress(kind, done, total): kind is "quantize", "imatrix", "split" or "hash".
Progress = Callable[[str, int, int], None]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_PROGRESS_RE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")
#: Kept free on the output disk on top of the planned bytes, unless --min-free says otherwise.
DEFAULT_MARGIN_BYTES = 256 * 1024 * 1024


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


def quantize_progress(line: bytes) -> tuple[int, int] | None:
    """``[ 12/ 272]`` at the start of a llama-quantize line: (tensor, of tensors)."""
    m = _PROGRESS_RE.match(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


# ---------------------------------------------------------------------------------------
# verification


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def verify_output(
    paths: Sequence[Path],
    plan: QuantPlan,
    *,
    expect_kv: dict[str, Any] | None = None,
    exact_file_bytes: bool = True,
) -> Verification:
    """Read the written header(s) back and compare with the plan; BuildError naming differences."""
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
                    f"{t.name} occupies {end - t.offset} bytes, {tname} {list(t.shape)} needs "
                    f"{_pad(nbytes, h.alignment)}"
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
    for name, tp in planned.items():
        if name not in found:
            continue
        tname, shape, nbytes = found[name]
        if tname != tp.type or nbytes != tp.bytes or shape != tuple(tp.shape):
            diffs.append(f"{name}: planned {tp.type} {tp.bytes} B, written {tname} {nbytes} B")
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
            hint="the planner and this llama-quantize disagree; report it with the log and the plan "
                 "(`quantforge plan --json`)",
        )
    return Verification(tensors=len(found), tensor_bytes=tensor_bytes, file_bytes=total_file, metadata=meta)


# ---------------------------------------------------------------------------------------
# names, base, imatrix


def check_disk(out_dir: Path, needed: int, *, min_free: int | None) -> None:
    """BuildError when ``out_dir`` lacks ``needed`` bytes plus the free-space reserve."""
    reserve = DEFAULT_MARGIN_BYTES if min_free is None else min_free
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError as exc:
        raise os_error(exc, out_dir, what="output folder", action="inspect") from None
    if free < needed + reserve:
        raise BuildError(
            f"not enough free disk space in {out_dir}: {units.human_bytes(free)} free, "
            f"{units.human_bytes(needed)} planned + {units.human_bytes(reserve)} kept free",
            where=str(out_dir),
            hint="free some space, choose another --out, or lower --min-free",
        )


# ---------------------------------------------------------------------------------------
# the build


class BuildContext(BaseModel):
    """Everything a ladder shares between variants (resolved once)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    recipe: Recipe
    toolchain: Toolchain
    base_path: Path
    base_source: str
    inventory: TensorInventory
    imatrix: ImatrixInfo | None
    out_dir: Path
    threads: int


def _check_types(plan: QuantPlan, toolchain: Toolchain) -> None:
    """Refuse a plan whose types this engine's binary does not have."""
    if plan.engine != toolchain.engine:
        other = catalogue(toolchain.engine)
        bad_tensors = [t for t in plan.tensors if other.find(t.type) is None]
        bad = sorted({t.type for t in bad_tensors})
        if bad:
            raise BuildError(
                f"{toolchain.label} at {toolchain.bin_dir} has no type {', '.join(bad)} (the recipe is for "
                f"{plan.engine}), "
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
            f"this {toolchain.label} llama-quantize ({toolchain.version}) does not accept the base type "
            f"{plan.ftype}",
            where=f"quant[{plan.name}].ftype",
            hint="update the toolchain or choose a listed ftype (llama-quantize --help)",
        )


def prepare(
    recipe: Recipe,
    *,
    out_dir: Path | None = None,
    base: str | None = None,
    imatrix: str | None = None,
    bin_dir: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> BuildContext:
    """Resolve toolchain, base, inventory and imatrix once for a ladder."""
    recipe_dir = Path(recipe.path).parent if recipe.path else Path.cwd()
    tc = find_toolchain(recipe.engine, bin_dir=bin_dir, allow_other_engine=True)
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
        info = read_imatrix(imatrix_file(im_source, recipe_dir=recipe_dir, given=bool(imatrix)),
                            with_sha256=True)
    elif recipe.imatrix is not None and recipe.imatrix.corpus:
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
    return BuildContext(
        recipe=recipe, toolchain=tc, base_path=base_path, base_source=source, inventory=inventory,
        imatrix=info, out_dir=out.resolve(), threads=threads or os.cpu_count() or 1,
    )  # fmt: skip


class VariantCoverage(BaseModel):
    model_config = _FROZEN
    variant: str
    coverage: ImatrixCoverage


class ImatrixReport(BaseModel):
    """An imatrix for a recipe (computed, or read), and how it covers each variant's plan."""

    model_config = _FROZEN
    imatrix: ImatrixInfo
    computed: bool
    variants: tuple[VariantCoverage, ...]

    def refusal(self) -> BuildError | None:
        """The error for the first variant with tensors llama-quantize would refuse, if any."""
        for row in self.variants:
            if row.coverage.refused:
                return BuildError(
                    f"variant {row.variant}: {len(row.coverage.refused)} tensor(s) need imatrix data this "
                    "file lacks",
                    where=self.imatrix.path,
                    hint="use an imatrix computed on this model, or change those tensors' types",
                )
        return None


def recipe_imatrix(
    recipe: Recipe,
    *,
    file: str | None = None,
    corpus: str | None = None,
    chunks: int | None = None,
    ctx: int | None = None,
    output: Path | None = None,
    quant: str | None = None,
    base: str | None = None,
    bin_dir: str | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImatrixReport:
    """Compute (``llama-imatrix`` over the corpus) or read the imatrix of ``recipe`` and report its
    coverage of each variant (``quant``: only that one) before any quantizing.

    ``file``/``corpus`` (command-line values, relative to the working folder) override the
    recipe's ``[imatrix]``; a computed one goes to ``output``, default ``default_output`` (where
    ``build`` looks for it).
    """
    rdir = Path(recipe.path).parent if recipe.path else Path.cwd()
    spec = recipe.imatrix
    corpus_src = corpus or (spec.corpus if spec is not None and not file else None)
    source = base or recipe.model.base
    if not source:
        raise UsageError("the recipe names no base model", where=f"{recipe.path}: model.base",
                         hint="set [model] base or pass --base")
    base_path = resolve_base(source, base_dir=None if base else rdir)
    if corpus_src:
        info = compute_imatrix(
            toolchain=imatrix_toolchain(recipe.engine, bin_dir=bin_dir), model=base_path,
            corpus=resolve_corpus(corpus_src, base_dir=None if corpus else rdir),
            output=output if output is not None else default_output(recipe, base_path),
            chunks=chunks or (spec.chunks if spec else None), ctx=ctx or (spec.ctx if spec else None),
            threads=threads, force=force, progress=progress, legacy=recipe.engine == "ik",
        )  # fmt: skip
    else:
        f = file or (spec.file if spec is not None else None)
        if not f:
            raise UsageError("the recipe has no [imatrix] file or corpus", where=f"{recipe.path}: imatrix",
                             hint="add [imatrix] file = ... or corpus = ..., or pass --file / --corpus")
        info = read_imatrix(imatrix_file(f, recipe_dir=rdir, given=bool(file)), with_sha256=True)
    inventory = load_inventory(base_path, engine=recipe.engine)
    meta = quantize_meta(info)
    rows = tuple(
        VariantCoverage(variant=v.name, coverage=coverage(info, expand(recipe, v.name, inventory,
                                                                       imatrix=meta)))
        for v in ([recipe.variant(quant)] if quant else recipe.quants)
    )
    return ImatrixReport(imatrix=info, computed=bool(corpus_src), variants=rows)


def _expected_kv(ctx: BuildContext, plan: QuantPlan) -> dict[str, Any]:
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


def _build_key(ctx: BuildContext, plan: QuantPlan) -> dict[str, Any]:
    """What makes two builds of a variant the same (paths excluded, so a moved folder resumes)."""
    return {
        "quantize_args": list(plan.quantize_args),
        "ftype": plan.ftype,
        "engine": ctx.toolchain.engine,
        "engine_commit": ctx.toolchain.commit,
        "base_sha256": cached_sha256(ctx.base_path),
        "imatrix_sha256": ctx.imatrix.sha256 if ctx.imatrix is not None else None,
    }


def _record_recipe(man_path: Path, ctx: BuildContext) -> None:
    """A skipped variant was built from an earlier version of the recipe whose plan is the same
    (a comment, the publish table, another variant edited): record the recipe it now belongs to,
    so card and publish, which check the recipe's sha256, take the verified output as built."""
    man = read_manifest(man_path)
    if man.recipe is None:
        return
    rec: RecipeRecord = {**man.recipe, "path": ctx.recipe.path, "sha256": ctx.recipe.sha256}
    if rec != man.recipe:
        update_manifest(man_path, recipe=rec)


def _manifest_matches(man_path: Path, key: dict[str, Any], files: list[Path]) -> bool:
    try:
        man = read_manifest(man_path)
    except QuantforgeError:
        return False
    if man.plan is None or man.verification is None:
        return False
    if man.plan.get("build_key") != key or not man.verification["ok"]:
        return False
    listed = [resolve_file(man_path, f.path) for f in man.files]
    if sorted(str(p) for p in listed) != sorted(str(p.resolve()) for p in files):
        return False
    return all(p.is_file() and p.stat().st_size == f.bytes for p, f in zip(listed, man.files, strict=False))


def pending_path(man_path: Path) -> Path:
    """The journal of a commit in progress: the manifest, written before the output is renamed into place."""
    return man_path.with_name(man_path.name + ".pending")


def _output_names(output: Path) -> list[Path]:
    """Every path a build of ``output`` may write or remove (for the input-overlap check)."""
    man = manifest_path(output)
    return [output, partial_file(output), log_file(output), man,
            pending_path(man), split_work_dir(output), *existing_outputs(output)]


def _inputs(ctx: BuildContext) -> list[tuple[str, Path]]:
    """The files a build reads: never written, replaced or removed, with --force or without."""
    out: list[tuple[str, Path]] = [("the base model", s) for s in split_set(ctx.base_path)]
    if ctx.imatrix is not None:
        out.append(("the importance matrix", Path(ctx.imatrix.path)))
    if ctx.recipe.path:
        out.append(("the recipe", Path(ctx.recipe.path)))
    return out


def _refuse_inputs_as_outputs(ctx: BuildContext, output: Path) -> None:
    """Before anything is written or removed: no output name is an input, or something else in the way."""
    names = _output_names(output)
    for path in names:
        refuse_input_as_output(path, _inputs(ctx), field="--out",
                               hint="build into another folder (--out DIR) or give the variant another name: "
                                    "an input is never overwritten, even with --force")
    for path in names:
        if path == split_work_dir(output):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise os_error(exc, path, what="output") from None
        if path.is_symlink() and path.name.endswith((".log", ".partial")):
            path.unlink()  # written in place: never through a link to somewhere else
        elif not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise InputError(f"{kind_of(st.st_mode)} is in the way of the output {path.name}",
                             where=str(path),
                             hint="move it away, or build into another folder with --out")


def _read_journal(path: Path) -> Manifest | None:
    """The manifest a commit journal holds, or None when it is unreadable (then it is discarded)."""
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError):
        return None


def _recover(ctx: BuildContext, plan: QuantPlan, output: Path, man_path: Path, *,
             log_path: Path) -> Manifest | None:
    """Finish a commit that a crash, SIGKILL or full disk cut short (``<manifest>.pending`` exists).

    The journal was written after the output had been verified and hashed, before it was
    renamed into place. What it lists is found under its final name, still as ``.partial`` or
    in the split work folder; every file's size and sha256 are checked against the journal and
    its header against the plan, then the renames and the manifest are completed: nothing is
    quantized again. Returns the manifest, or None when the journal cannot be completed (it is
    removed, with the unfinished files it names, and the variant is built anew).
    """
    journal = pending_path(man_path)
    man = _read_journal(journal)
    if man is None or man.plan is None or man.plan.get("build_key") != _build_key(ctx, plan):
        remove_quietly([journal])
        return None
    partial = partial_file(output)
    work = split_work_dir(output)
    finals = [resolve_file(man_path, f.path) for f in man.files]
    ok = True
    for f, final in zip(man.files, finals, strict=True):
        if final.is_file() and final.stat().st_size == f.bytes:
            continue
        found = next((c for c in (partial, work / final.name) if c.is_file() and c.stat().st_size == f.bytes),
                     None)
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
        remove_quietly([journal, partial, work, *[p for p in finals if p.exists()]])
        return None
    assert man.base is not None  # a journal is a build's manifest
    base = man.base.copy()
    if not base["sha256"]:  # journalled before the base's hash was done
        base["sha256"] = cached_sha256(ctx.base_path)
    man = man.model_copy(update={"files": entries, "base": base})
    write_manifest(man_path, man)
    remove_quietly([journal, partial, work])
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write("# quantforge: completed an interrupted commit: the output verified against its journal\n")
    return man


def _adopt(ctx: BuildContext, plan: QuantPlan, existing: list[Path]) -> Verification:
    """Verify a complete output that has no manifest (its commit was cut short before this version
    kept a journal, or the disk filled while the manifest was written): every tensor, byte and
    metadata key must match the plan, so it can be recorded instead of rebuilt (BuildError if not)."""
    return verify_output(existing, plan, expect_kv=_expected_kv(ctx, plan),
                         exact_file_bytes=len(existing) == 1)


def build_variant(
    ctx: BuildContext,
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
    t_start = time.monotonic()
    recipe = ctx.recipe
    v = recipe.variant(variant)
    name = variant_output(ctx.out_dir, output_stem(recipe, ctx.base_path), v.name).name
    why = name_problem(name, max_bytes=255 - 40)
    if why is not None:
        raise InputError(f"the output file name {name[:80]!r}… {why}", where=f"quant[{v.name}]",
                         hint=f'set a shorter [model] name (at most {MAX_NAME_BYTES} bytes) or variant name')
    # ``name`` is one plain component (checked above) and out_dir is resolved: the output cannot leave
    # it. Its last component is not resolved: a link there is replaced by the rename, never followed.
    output = ctx.out_dir / name
    log_path = log_file(output)
    man_path = manifest_path(output)
    partial = partial_file(output)
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
                return result("skipped", existing, cmd_final, sum(p.stat().st_size for p in existing),
                              plan.file_bytes)
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
                fh.write("# quantforge: recorded a complete output that had no manifest (verified against "
                         "the plan)\n")
            return result("recovered", existing, cmd_final, man.actual_file_bytes, plan.file_bytes)
        # A fresh log per attempt; pre-flight failures are written to it too.

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
        remove_quietly([partial, journal, split_work_dir(output)])
        for old in existing:  # --force: the old output goes only now, after every check passed
            remove_quietly([old])
        remove_quietly([man_path])

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
            parse_progress=quantize_progress, step="tensor", partials=[partial],
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
        write_record = functools.partial(
            _write_record, ctx=ctx, plan=plan, v=v, output=output, log_path=log_path, files=finals, ver=ver,
            cmd_final=cmd_final, sizes=[s.stat().st_size for s in staged], manifest_path_for_paths=man_path)
        journal_error = None
        man = None
        try:
            write_record(target=journal, hashes=["" for _ in staged], base_sha="",
                         timings={"quantize_s": round(quantize_s, 3)})
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
                    man = write_record(
                        target=journal, base_sha=base_sha, hashes=list(hashes),
                        timings={"quantize_s": round(quantize_s, 3), "verify_s": round(verify_s, 3),
                                 "split_s": round(split_s, 3), "hash_s": round(hash_s, 3),
                                 "total_s": round(time.monotonic() - t_start, 3)},
                    )  # fmt: skip
                except QuantforgeError as exc:
                    journal_error = exc
            for src, dst in zip(staged, finals, strict=True):
                os.replace(src, dst)
            remove_quietly([split_work_dir(output)])
            if journal_error is not None:
                raise journal_error
            assert man is not None
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
    partial = partial_file(output)
    if phase in ("quantize", "verify") or (phase == "prepare" and not journal.exists()):
        remove_quietly([partial, split_work_dir(output)])
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
            return Interrupted(f"Ctrl-C: stopped after {variant} was built, verified and recorded",
                               where=str(man_path),
                               hint="run the same command again for the other variants")
        if kept:
            return Interrupted(f"Ctrl-C: {output.name} is complete and verified, but its manifest was "
                               "not written",
                               where=str(log_path),
                               hint="run the same command again: it records the output without "
                                    "quantizing again")
        what = {"prepare": "before quantizing; nothing was written",
                "quantize": "while llama-quantize ran; it was stopped and the partial output removed",
                "verify": "while the output was verified; the unverified output was removed"}[phase]
        return Interrupted(f"Ctrl-C: build of {variant} stopped {what}", where=str(log_path),
                           hint="run the same command again to build it")
    err = exc if isinstance(exc, QuantforgeError) else os_error(
        exc, getattr(exc, "filename", None) or output, what="output",  # type: ignore[arg-type]
        action="write")
    if kept or phase == "done":
        return _committed_error(err, man_path, phase)
    return err


def _committed_error(exc: QuantforgeError, man_path: Path, phase: str) -> QuantforgeError:
    """An error after the output was verified: say that nothing needs rebuilding."""
    msg = f"the output is complete and verified, but its manifest could not be written: {exc.message}"
    return type(exc)(msg, where=exc.where or str(man_path),
                     hint="fix that, then run the same command again: it records the output without "
                          "quantizing again")


def _plan_and_commands(ctx: BuildContext, variant: str, output: Path,
                       partial: Path) -> tuple[QuantPlan, list[str], list[str]]:
    tc = ctx.toolchain
    imeta: ImatrixMeta | Literal[False] = quantize_meta(ctx.imatrix) if ctx.imatrix is not None else False
    plan = expand(ctx.recipe, variant, ctx.inventory, imatrix=imeta)
    im_arg = Path(ctx.imatrix.path).name if ctx.imatrix is not None else None
    cmd_final = quantize_command(plan, binary=tc.quantize, input_path=ctx.base_path, output_path=output,
                                 imatrix=im_arg, threads=ctx.threads)
    cmd_run = quantize_command(plan, binary=tc.quantize, input_path=ctx.base_path, output_path=partial,
                               imatrix=im_arg, threads=ctx.threads)
    return plan, cmd_final, cmd_run


def _write_record(
    *, ctx: BuildContext, plan: QuantPlan, v: QuantVariant, output: Path, target: Path, log_path: Path,
    files: list[Path],
    ver: Verification,
    cmd_final: list[str], base_sha: str | None = None, sizes: list[int] | None = None,
    hashes: list[str | None] | None = None, timings: dict[str, float], recovered: str | None = None,
    manifest_path_for_paths: Path | None = None,
) -> Manifest:
    """Write the manifest of ``files`` to ``target`` (the manifest, or the commit journal)."""
    man_path = manifest_path_for_paths or target
    tc, im = ctx.toolchain, ctx.imatrix
    sizes = sizes if sizes is not None else [p.stat().st_size for p in files]
    hashes = hashes if hashes is not None else [sha256_file(p) for p in files]
    entries = [
        ManifestFile(path=relative_to_manifest(man_path, p), bytes=n,
                     sha256=sha256_file(p) if h is None else h)
        for p, n, h in zip(files, sizes, hashes, strict=True)
    ]
    cov = coverage(im, plan)
    type_counts = collections.Counter(t.type for t in plan.tensors)
    verification: VerificationRecord = {"ok": True, "tensors": ver.tensors, "tensor_bytes": ver.tensor_bytes,
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
        toolchain={"source": tc.source, "quantize": tc.quantize, "version": tc.version,
                   "compiler": tc.compiler},
        recipe={"path": ctx.recipe.path, "sha256": ctx.recipe.sha256, "variant": v.name, "ftype": plan.ftype},
        base={
            "source": ctx.base_source, "path": relative_to_manifest(man_path, ctx.base_path),
            "bytes": ctx.base_path.stat().st_size,
            "sha256": base_sha if base_sha is not None else cached_sha256(ctx.base_path),
        },
        imatrix=None if im is None else {
            "path": relative_to_manifest(man_path, im.path), "sha256": im.sha256, "format": im.format,
            "dataset": im.dataset, "chunk_count": im.chunk_count, "entries": im.entries_count,
            "coverage": {"covered": cov.covered, "total": cov.total,
                         "missing": [g.tensor for g in cov.missing]},
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
    ctx: BuildContext,
    plan: QuantPlan,
    partial: Path,
    output: Path,
    max_bytes: int,
    log_path: Path,
    *,
    timeout: float | None,
) -> list[Path]:
    """Split ``partial`` into ``<stem>-0000k-of-0000N.gguf`` shards with llama-gguf-split.

    The shards are verified and left in the work folder (``split_work_dir(output)``), in order; the
    caller renames them into place as part of its journalled commit. ``partial`` is removed.
    """
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
        remove_quietly([partial])
        raise BuildError(
            f"the output ({partial.stat().st_size if partial.exists() else 0} bytes) is over the split "
            "limit but no usable llama-gguf-split was found",
            where=str(log_path),
            hint="add an ik_llama.cpp build with llama-gguf-split via --bin-dir, or raise --split-max",
        )
    stem = gguf_stem(output.name)
    work = split_work_dir(output)
    remove_quietly([work])
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
        remove_quietly([work, partial])
        raise
    remove_quietly([partial])
    return shards


def _log_early_failure(
    recipe: Recipe, names: Sequence[str], exc: QuantforgeError, *, out_dir: Path | None, base: str | None
) -> None:
    """Record a failure before any variant started (no toolchain, no base …) in their logs."""
    source = base or recipe.model.base
    if not source:
        return
    rdir = Path(recipe.path).parent if recipe.path else Path.cwd()
    folder = Path(out_dir) if out_dir else rdir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return

    stem = output_stem(recipe, source)
    for name in names:
        log = log_file(variant_output(folder, stem, name))
        if same_file(log, source if source.startswith("/") else rdir / source):
            continue  # never append to an input
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"# quantforge: error: {exc.one_line()}\n")
        except OSError:
            pass


def build(
    recipe: Recipe,
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
        recipe=recipe.path, engine=ctx.toolchain.engine,
        toolchain=f"{ctx.toolchain.label} {ctx.toolchain.version} ({ctx.toolchain.source})",
        base=str(ctx.base_path), imatrix=ctx.imatrix.path if ctx.imatrix else None, results=tuple(results),
    )  # fmt: skip
