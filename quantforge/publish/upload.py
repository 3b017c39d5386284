"""Uploading a built recipe to Hugging Face: staging layout, upload plan, commits.

The layout follows what publishers do: a variant that is one file sits at the repo root
(``SmolLM2-135M-Q4_K_M.gguf``); a split variant gets its own folder holding its
``-0000N-of-0000M.gguf`` shards; plots and the importance matrix sit beside them; the card
(``README.md``) is committed last so it never links to files that are not there yet.

Uploads go through ``huggingface_hub`` (LFS or Xet, whichever the client picks; resumable
because blobs already in storage are skipped by the library), one commit per variant (split
further when a variant has many shards), each message carrying the recipe sha256. Files whose
sha256 the Hub already lists at the same path are left out of the commits altogether.

The token comes from ``HF_TOKEN`` or the huggingface_hub login. It is never put into a model,
a log line or an error message: every message that leaves this module goes through ``_scrub``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge.constants import HF_MAX_FILE_BYTES
from quantforge.errors import PublishError, UsageError
from quantforge.fsutil import cached_sha256

#: The Hub's repo-id grammar (namespace/name): letters, digits, "-", "_", "." ; no "--" or "..";
#: no leading/trailing "-" or "."; name at most 96 characters.
_REPO_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
#: At most this many files in one commit (the Hub handles more, but small commits resume better).
MAX_FILES_PER_COMMIT = 50

FileKind = Literal["gguf", "card", "plot", "imatrix", "other"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalFile(_Frozen):
    """A file to publish, as a manifest lists it."""

    path: str  # local path (never shown in the card or in commit messages)
    bytes: int
    sha256: str


class VariantFiles(_Frozen):
    """The built files of one variant (one GGUF, or the shards of a split set)."""

    name: str
    files: tuple[LocalFile, ...]


class StagedFile(_Frozen):
    path_in_repo: str
    bytes: int
    sha256: str
    kind: FileKind
    variant: str | None = None
    #: Local source (absent for generated files such as the card, whose text is in the plan).
    source: str | None = None


class CommitPlan(_Frozen):
    summary: str
    description: str
    paths: tuple[str, ...]
    bytes: int


class UploadPlan(_Frozen):
    """What ``publish`` uploads, in which commits and in which order (the card last)."""

    repo: str
    private: bool
    recipe_sha256: str
    files: tuple[StagedFile, ...]
    commits: tuple[CommitPlan, ...]
    total_bytes: int
    max_file_bytes: int
    staging: str | None = None
    card: str  # README.md text

    def file(self, path_in_repo: str) -> StagedFile:
        for f in self.files:
            if f.path_in_repo == path_in_repo:
                return f
        raise KeyError(path_in_repo)


class CommitDone(_Frozen):
    summary: str
    oid: str | None  # None: nothing changed, no commit made
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]


class UploadResult(_Frozen):
    repo: str
    url: str
    plan: UploadPlan
    commits: tuple[CommitDone, ...]
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_uploaded: int
    dry_run: bool = False


# -- validation ---------------------------------------------------------------------------


def check_repo_id(repo: str) -> str:
    """``ORG/NAME`` or raise ``UsageError`` naming the rule it breaks."""
    if not REPO_ID_RE.match(repo or "") or len(repo.split("/")[1]) > 96:
        raise UsageError(
            f"repo id {repo!r} is malformed",
            where="--repo",
            hint="use ORG/NAME with letters, digits, '-', '_', '.', e.g. --repo my-org/SmolLM2-135M-GGUF",
        )
    return repo


def layout_variant(variant: VariantFiles, *, max_file_bytes: int = HF_MAX_FILE_BYTES) -> list[StagedFile]:
    """Repo paths for one variant's files; refuses files over the per-file limit."""
    if not variant.files:
        raise PublishError(f"variant {variant.name} has no built files", where=variant.name,
                           hint=f"run: quantforge build RECIPE --quant {variant.name}")
    from quantforge.paths import check_name

    check_name(variant.name, field="variant name", where=variant.name, error=PublishError)
    split = len(variant.files) > 1 or bool(SPLIT_RE.search(Path(variant.files[0].path).name))
    out: list[StagedFile] = []
    for f in variant.files:
        name = check_name(Path(f.path).name, field="file name", where=variant.name, error=PublishError,
                          max_bytes=255)
        if f.bytes > max_file_bytes:
            raise PublishError(
                f"{name} is {f.bytes} bytes, over the Hub's per-file limit of {max_file_bytes} bytes, "
                "and is not a split GGUF shard that could be uploaded as is",
                where=variant.name,
                hint="rebuild it split: llama-gguf-split --split --split-max-size 45G IN.gguf OUT "
                "(or quantforge build with splitting), then publish again",
            )
        if split:
            m = SPLIT_RE.search(name)
            if not m or int(m.group(2)) != len(variant.files):
                raise PublishError(
                    f"variant {variant.name} has {len(variant.files)} files but {name} is not named "
                    f"-0000N-of-{len(variant.files):05d}.gguf",
                    where=variant.name,
                    hint="publish the complete split set as llama-gguf-split wrote it",
                )
        out.append(
            StagedFile(
                path_in_repo=f"{variant.name}/{name}" if split else name,
                bytes=f.bytes,
                sha256=f.sha256,
                kind="gguf",
                variant=variant.name,
                source=f.path,
            )
        )
    return out


# -- plan ---------------------------------------------------------------------------------


def build_plan(
    *,
    repo: str,
    recipe_sha256: str,
    card: str,
    variants: Sequence[VariantFiles],
    extras: Sequence[tuple[str, str, FileKind]] = (),
    private: bool = False,
    max_file_bytes: int = HF_MAX_FILE_BYTES,
    staging: str | None = None,
) -> UploadPlan:
    """The upload plan: every file with its repo path, size and sha256, and the commit order.

    ``extras`` are ``(path_in_repo, local_path, kind)`` (plots, the importance matrix); they are
    committed after the variants and before the card.
    """
    check_repo_id(repo)
    files: list[StagedFile] = []
    commits: list[CommitPlan] = []
    seen: set[str] = set()

    def add_commit(summary: str, group: list[StagedFile]) -> None:
        for i in range(0, len(group), MAX_FILES_PER_COMMIT):
            chunk = group[i : i + MAX_FILES_PER_COMMIT]
            part = f" (part {i // MAX_FILES_PER_COMMIT + 1})" if len(group) > MAX_FILES_PER_COMMIT else ""
            commits.append(
                CommitPlan(
                    summary=f"{summary}{part} [recipe sha256 {recipe_sha256}]",
                    description=f"Generated by quantforge from a recipe with sha256 {recipe_sha256}.",
                    paths=tuple(f.path_in_repo for f in chunk),
                    bytes=sum(f.bytes for f in chunk),
                )
            )

    def claim(f: StagedFile) -> None:
        if f.path_in_repo in seen:
            raise PublishError(f"two files would be uploaded as {f.path_in_repo}", where=f.variant or f.path_in_repo,
                               hint="give the variants distinct output names")
        seen.add(f.path_in_repo)
        files.append(f)

    for v in variants:
        group = layout_variant(v, max_file_bytes=max_file_bytes)
        for f in group:
            claim(f)
        add_commit(f"Add {v.name} ({len(group)} file{'s' if len(group) != 1 else ''})", group)

    assets: list[StagedFile] = []
    for path_in_repo, local, kind in extras:
        size = os.path.getsize(local)
        if size > max_file_bytes:
            raise PublishError(f"{path_in_repo} is {size} bytes, over the per-file limit of {max_file_bytes} bytes "
                               "and cannot be split", where=path_in_repo, hint="leave it out of the upload")
        # Plots and the imatrix (about 1 GB for a big MoE) are hashed once per (path, size, mtime),
        # not on every dry run; the variants' GGUFs carry their manifest's sha256 (see _variant_files).
        f = StagedFile(path_in_repo=path_in_repo, bytes=size, sha256=cached_sha256(local), kind=kind, source=local)
        claim(f)
        assets.append(f)
    if assets:
        add_commit(f"Add {len(assets)} asset file{'s' if len(assets) != 1 else ''} (plots, imatrix)", assets)

    data = card.encode()
    card_file = StagedFile(path_in_repo="README.md", bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), kind="card")
    claim(card_file)
    add_commit("Update model card", [card_file])

    return UploadPlan(
        repo=repo,
        private=private,
        recipe_sha256=recipe_sha256,
        files=tuple(files),
        commits=tuple(commits),
        total_bytes=sum(f.bytes for f in files),
        max_file_bytes=max_file_bytes,
        staging=staging,
        card=card,
    )


STAGING_PLAN = "upload-plan.json"


def _is_staging(folder: Path) -> bool:
    """A folder quantforge staged: ``repo/`` and ``upload-plan.json``, nothing else."""
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    return names <= {"repo", STAGING_PLAN} and (folder / STAGING_PLAN).is_file()


def write_staging(plan: UploadPlan, staging: Path, *, force: bool = False,
                  protect: Sequence[tuple[str, str | os.PathLike[str]]] = ()) -> UploadPlan:
    """Write the exact folder that would be uploaded, plus ``upload-plan.json`` beside it.

    GGUFs are hard-linked when staging is on the same file system (a 300 GB quant is not
    copied), else copied. The plan file lists files, sizes, hashes and commit order.

    Nothing is lost: the staging folder may not be, or contain, the build folder or an input
    (``protect``: ``(what, path)`` pairs), with ``--force`` or without; ``--force`` replaces only
    a folder that quantforge staged itself. Every repo path stays inside the staging folder.
    """
    from quantforge.paths import check_relative, confined, os_error, refuse_overlap

    staging = Path(staging)
    for what, path in protect:
        if Path(path).resolve() == staging.resolve() or Path(staging).resolve() in Path(path).resolve().parents:
            refuse_overlap(staging, [(what, path)], field="--staging",
                           hint="stage into a new folder of its own: it is replaced as a whole")
    if staging.exists() and not staging.is_dir():
        raise UsageError(f"{staging} exists and is not a folder", where="--staging",
                         hint="give a new folder for the staging")
    if staging.exists() and any(staging.iterdir()):
        if not force:
            raise UsageError(f"staging folder {staging} is not empty", where="--staging",
                             hint="give an empty or new folder, or --force to replace it")
        if not _is_staging(staging):
            raise UsageError(f"staging folder {staging} holds files quantforge did not stage", where="--staging",
                             hint="--force replaces only an earlier staging folder; give a new folder")
    tmp = staging.with_name(staging.name + ".partial")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "repo").mkdir(parents=True)
        root = tmp / "repo"
        for f in plan.files:
            check_relative(f.path_in_repo, field="repo path", where=f.variant or f.path_in_repo, error=PublishError)
            dst = confined(root, f.path_in_repo, what="the staging folder")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.kind == "card":
                dst.write_text(plan.card, encoding="utf-8")
                continue
            assert f.source is not None
            try:
                os.link(f.source, dst)
            except OSError:
                shutil.copyfile(f.source, dst)
        out = plan.model_copy(update={"staging": str(staging)})
        (tmp / STAGING_PLAN).write_text(json.dumps(plan_json(out), indent=2) + "\n", encoding="utf-8")
        if staging.exists():
            shutil.rmtree(staging)
        os.replace(tmp, staging)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(exc, getattr(exc, "filename", None) or staging, what="staging folder", action="write") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def plan_json(plan: UploadPlan) -> dict[str, Any]:
    """The plan as written to ``upload-plan.json``: no local paths, no card text, no token."""
    return {
        "repo": plan.repo,
        "private": plan.private,
        "recipe_sha256": plan.recipe_sha256,
        "total_bytes": plan.total_bytes,
        "max_file_bytes": plan.max_file_bytes,
        "files": [
            {"path": f.path_in_repo, "bytes": f.bytes, "sha256": f.sha256, "kind": f.kind, "variant": f.variant}
            for f in plan.files
        ],
        "commits": [c.model_dump() for c in plan.commits],
    }


# -- upload -------------------------------------------------------------------------------


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` at call time (huggingface_hub freezes it at import; tests and mirrors set it later)."""
    return os.environ.get("HF_ENDPOINT") or None


def resolve_token() -> str:
    """The token from ``HF_TOKEN`` or the huggingface_hub login; ``UsageError`` when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UsageError("no Hugging Face token found", where="HF_TOKEN",
                         hint="set HF_TOKEN or run `hf auth login`; or use --dry-run to stage without uploading")
    return token


def _scrub(text: str, token: str | None) -> str:
    """Remove the token (and anything that looks like one) from text meant for a user."""
    if token:
        text = text.replace(token, "hf_***")
    return re.sub(r"\bhf_[A-Za-z0-9]{6,}\b", "hf_***", text)


def _remote_state(api: Any, repo: str, paths: Sequence[str]) -> dict[str, tuple[str | None, str]]:
    """``path -> (lfs sha256 or None, git blob id)`` of the files the Hub already holds."""
    out: dict[str, tuple[str | None, str]] = {}
    for i in range(0, len(paths), 100):
        for entry in api.get_paths_info(repo, list(paths[i : i + 100])):
            if getattr(entry, "lfs", None) is not None:
                out[entry.path] = (entry.lfs.sha256, entry.blob_id)
            elif hasattr(entry, "blob_id"):
                out[entry.path] = (None, entry.blob_id)
    return out


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _same(f: StagedFile, remote: tuple[str | None, str] | None, card: bytes) -> bool:
    if remote is None:
        return False
    lfs_sha, blob_id = remote
    if lfs_sha is not None:
        return lfs_sha == f.sha256
    if f.kind == "card":
        return blob_id == _git_blob_id(card)
    assert f.source is not None
    return blob_id == _git_blob_id(Path(f.source).read_bytes()) if f.bytes < 10 * 1024 * 1024 else False


def execute(plan: UploadPlan, *, token: str, progress: bool = False) -> UploadResult:
    """Create the repo if needed and run the plan's commits in order (the card last)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub import constants as hf_constants

    # From the defining module: huggingface_hub.utils re-exports them only lazily (mypy strict).
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    if hf_constants.is_offline_mode():
        raise PublishError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)", where="HF_HUB_OFFLINE",
                           hint="unset HF_HUB_OFFLINE to upload, or use --dry-run")
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="quantforge")
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    card = plan.card.encode()
    done: list[CommitDone] = []
    uploaded: list[str] = []
    skipped: list[str] = []
    try:
        url = str(api.create_repo(plan.repo, private=plan.private, exist_ok=True, repo_type="model"))
        remote = _remote_state(api, plan.repo, [f.path_in_repo for f in plan.files])
        by_path = {f.path_in_repo: f for f in plan.files}
        for c in plan.commits:
            ops: list[Any] = []
            c_up: list[str] = []
            c_skip: list[str] = []
            for p in c.paths:
                f = by_path[p]
                if _same(f, remote.get(p), card):
                    c_skip.append(p)
                    continue
                src: Any = card if f.kind == "card" else f.source
                ops.append(CommitOperationAdd(path_in_repo=p, path_or_fileobj=src))
                c_up.append(p)
            oid = None
            if ops:
                info = api.create_commit(plan.repo, ops, commit_message=c.summary, commit_description=c.description,
                                         repo_type="model")
                oid = info.oid
            done.append(CommitDone(summary=c.summary, oid=oid, uploaded=tuple(c_up), skipped=tuple(c_skip)))
            uploaded += c_up
            skipped += c_skip
    except Exception as exc:  # the library raises HTTP, OS and value errors; one scrubbed line for the user
        if isinstance(exc, PublishError | UsageError):
            raise
        msg = _scrub(" ".join(f"{type(exc).__name__}: {exc}".split()), token)
        raise PublishError(f"upload to {plan.repo} failed: {msg[:400]}", where=plan.repo,
                           hint="run the same publish again: files already uploaded are skipped") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    return UploadResult(
        repo=plan.repo,
        url=url,
        plan=plan,
        commits=tuple(done),
        uploaded=tuple(uploaded),
        skipped=tuple(skipped),
        bytes_uploaded=sum(by_path[p].bytes for p in uploaded),
    )


def iter_plan_lines(plan: UploadPlan) -> Iterator[str]:
    """Human view of a plan: files with sizes and hashes, then the commit order."""
    for f in plan.files:
        yield f"{f.path_in_repo:60s} {f.bytes:>14d}  {f.sha256}"
    for i, c in enumerate(plan.commits, 1):
        yield f"commit {i}: {c.summary} — {len(c.paths)} file(s), {c.bytes} bytes"


# -- the stage: recipe + manifests -> card + plan -> staging or Hub --------------------------


class CardResult(_Frozen):
    path: str | None
    text: str
    variants: tuple[str, ...]


class Collected(_Frozen):
    """What a publish of ``recipe`` would contain, before any network call."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    card: str
    variants: tuple[VariantFiles, ...]
    extras: tuple[tuple[str, str, FileKind], ...]
    manifests: tuple[str, ...]
    recipe_sha256: str


def find_manifests(recipe: Any, names: Sequence[str] | None, *, out_dir: str | Path | None = None) -> list[tuple[Path, Any]]:
    """The build manifest of each named variant (all variants when ``names`` is None) in ``out_dir``."""
    from quantforge.errors import InputError
    from quantforge.manifest import MANIFEST_SUFFIX, read_manifest

    folder = Path(out_dir) if out_dir else (Path(recipe.path).parent if recipe.path else Path.cwd())
    wanted = list(names) if names else [v.name for v in recipe.quants]
    for n in wanted:
        recipe.variant(n)  # RecipeError naming the variants when unknown
    found: dict[str, tuple[Path, Any]] = {}
    stale: dict[str, str] = {}
    for p in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")) if folder.is_dir() else []:
        try:
            man = read_manifest(p)
        except InputError:
            continue
        if man.name not in wanted:
            continue
        if man.recipe.get("sha256") not in (None, recipe.sha256):
            stale[man.name] = p.name
            continue
        found[man.name] = (p, man)
    out = []
    for n in wanted:
        if n not in found:
            why = f" ({stale[n]} was built from another version of the recipe)" if n in stale else ""
            raise InputError(f"variant {n} is not built yet{why}", where=f"{folder}",
                             hint=f"run: quantforge build {recipe.path or 'RECIPE'} --quant {n}")
        out.append(found[n])
    return out


def _variant_files(man_path: Path, man: Any) -> VariantFiles:
    from quantforge.errors import InputError
    from quantforge.fsutil import confined

    files = []
    for f in man.files:
        # A manifest names files next to itself; an edited one must not make us upload ../../.ssh/id_rsa.
        p = confined(man_path.resolve().parent, f.path)
        if not p.is_file() or p.stat().st_size != f.bytes:
            raise InputError(f"{p.name} is missing or its size differs from the build manifest", where=man_path.name,
                             hint=f"rebuild it: quantforge build RECIPE --quant {man.name} --force")
        files.append(LocalFile(path=str(p), bytes=f.bytes, sha256=f.sha256))
    return VariantFiles(name=man.name, files=tuple(files))


def _staged_source(path: Path, man_path: Path, *, what: str) -> Path:
    """``path`` when it lies inside the output folder (the manifest's), after resolving links; a manifest
    edited to name ``../secret/id_rsa`` is refused, never uploaded."""
    from quantforge.errors import InputError
    from quantforge.paths import is_within

    if not is_within(path, man_path.resolve().parent):
        raise InputError(f"the {what} {path} named by {man_path.name} escapes the output folder",
                         where=man_path.name, hint="only files inside the output folder are published")
    return path.resolve()


def _imatrix_source(recipe: Any, man_path: Path, record: dict[str, Any]) -> Path | None:
    """The importance matrix to publish: the manifest's, when it is inside the output folder or is the
    recipe's own ``[imatrix] file`` (a trusted input), and its sha256 is the one the build recorded."""
    from quantforge.errors import InputError
    from quantforge.manifest import resolve_file
    from quantforge.paths import is_within, same_file

    im = resolve_file(man_path, str(record["path"]))
    own = recipe.resolve_path(recipe.imatrix.file) if recipe.imatrix is not None and recipe.imatrix.file else None
    trusted = own is not None and not own.startswith("hf://") and same_file(im, own)
    if not trusted and not is_within(im, man_path.resolve().parent):
        raise InputError(f"the importance matrix {im} named by {man_path.name} escapes the output folder",
                         where=man_path.name,
                         hint="publish with --no-imatrix, or put the imatrix in the output folder or the recipe")
    if not im.is_file():
        return None
    want = record.get("sha256")
    if want and cached_sha256(im) != want:
        raise InputError(f"{im.name} is not the importance matrix the variants were built with (sha256 differs)",
                         where=man_path.name, hint="publish with --no-imatrix, or rebuild the variants")
    return im


def collect(
    recipe: Any,
    *,
    repo: str | None,
    quants: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    max_file_bytes: int = HF_MAX_FILE_BYTES,
    include_imatrix: bool = True,
    targets: Sequence[str] | None = None,
    fit_ctx: int | None = None,
) -> Collected:
    """Read the manifests, lay out the files, plan the fit table and render the card (no network).

    ``targets``/``fit_ctx`` override the recipe's ``[publish] targets``/``ctx`` for the fit table.
    """
    from quantforge.publish.card import (
        Plot,
        card_data_from_manifests,
        card_targets,
        plan_card_fits,
        render_card,
    )

    card_targets(recipe, targets)  # a misspelt target is an input error before anything is read

    mans = find_manifests(recipe, quants, out_dir=out_dir)
    variants = [_variant_files(p, m) for p, m in mans]
    files_in_repo = {v.name: tuple(f.path_in_repo for f in layout_variant(v, max_file_bytes=max_file_bytes)) for v in variants}
    extras: list[tuple[str, str, FileKind]] = []
    plots: list[Plot] = []
    from quantforge.publish.card import plot_files

    for p, m in mans:
        for png in plot_files(p, m):
            _staged_source(png, p, what="plot")
            rel = f"plots/{png.name}"
            if rel not in [e[0] for e in extras]:
                extras.append((rel, str(png), "plot"))
                plots.append(Plot(title=png.stem.replace("_", " ").replace("-", " "), path=rel))
    if include_imatrix:
        for p, m in mans:
            if m.imatrix and m.imatrix.get("path"):
                im = _imatrix_source(recipe, p, m.imatrix)
                if im is not None:
                    extras.append((im.name, str(im), "imatrix"))
                break
    # The run commands name the file a reader downloads (the first shard of a split set).
    fits, runs, setup = plan_card_fits(recipe, [m.name for _, m in mans],
                                       {n: files[0] for n, files in files_in_repo.items()},
                                       targets=targets, ctx=fit_ctx)
    data = card_data_from_manifests(recipe, mans, repo=repo, files_in_repo=files_in_repo, plots=plots,
                                    fits=fits, run_commands=runs, fit=setup)
    return Collected(
        card=render_card(data),
        variants=tuple(variants),
        extras=tuple(extras),
        manifests=tuple(str(p) for p, _ in mans),
        recipe_sha256=recipe.sha256,
    )


def make_card(
    recipe_path: str | Path,
    *,
    repo: str | None = None,
    quants: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    output: str | Path | None = None,
    force: bool = False,
    targets: Sequence[str] | None = None,
    fit_ctx: int | None = None,
) -> CardResult:
    """Render README.md for the built variants; write it to ``output`` when given."""
    from quantforge.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    repo = repo or (recipe.publish.repo if recipe.publish else None)
    if repo:
        check_repo_id(repo)
    if output is not None:
        from quantforge.paths import refuse_input_as_output

        refuse_input_as_output(output, [("the recipe", recipe_path)], field="--output",
                               hint="write the card to README.md or another new file")
    col = collect(recipe, repo=repo, quants=quants, out_dir=out_dir, targets=targets, fit_ctx=fit_ctx)
    path = None
    if output is not None:
        from quantforge.fsutil import atomic_write_text
        from quantforge.paths import refuse_input_as_output

        out = Path(output)
        inputs: list[tuple[str, str | os.PathLike[str]]] = [("the recipe", recipe_path)]
        inputs += [("a manifest", m) for m in col.manifests]
        inputs += [("a built file", f.path) for v in col.variants for f in v.files]
        refuse_input_as_output(out, inputs, field="--output", hint="write the card to README.md or another new file")
        if out.exists() and not force:
            raise UsageError(f"{out} exists", where="--output", hint="pass --force to overwrite it")
        if out.exists() and not out.is_file():
            raise UsageError(f"{out} is not a file", where="--output", hint="give a file name for the card")
        atomic_write_text(out, col.card, what="model card")
        path = str(out)
    return CardResult(path=path, text=col.card, variants=tuple(v.name for v in col.variants))


def publish(
    recipe_path: str | Path,
    *,
    repo: str | None = None,
    quants: Sequence[str] | None = None,
    private: bool = False,
    dry_run: bool = False,
    staging: str | Path | None = None,
    out_dir: str | Path | None = None,
    max_file_bytes: int = HF_MAX_FILE_BYTES,
    include_imatrix: bool = True,
    force: bool = False,
    progress: bool = False,
    targets: Sequence[str] | None = None,
    fit_ctx: int | None = None,
    wait: bool = False,
) -> UploadResult:
    """Publish the built variants of a recipe: card + files, card last.

    Every check (repo id, manifests, files, per-file limit, token) runs before the first
    request, so bad input uploads nothing. ``dry_run`` writes ``staging`` (when given) and
    returns the plan without touching the network.
    """
    from quantforge.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    repo = repo or (recipe.publish.repo if recipe.publish else None)
    if not repo:
        raise UsageError("no repo to publish to", where="--repo",
                         hint="pass --repo ORG/NAME or set [publish] repo in the recipe")
    check_repo_id(repo)
    from quantforge.lock import folder_lock

    folder = Path(out_dir) if out_dir else (Path(recipe.path).parent if recipe.path else Path.cwd())
    with contextlib.ExitStack() as held:
        if folder.is_dir():  # nothing is built there otherwise, and collect says so
            held.enter_context(folder_lock(folder, purpose=f"quantforge publish {repo}", wait=wait))
        col = collect(recipe, repo=repo, quants=quants, out_dir=out_dir, max_file_bytes=max_file_bytes,
                      include_imatrix=include_imatrix, targets=targets, fit_ctx=fit_ctx)
        plan = build_plan(repo=repo, recipe_sha256=col.recipe_sha256, card=col.card, variants=col.variants,
                          extras=col.extras, private=private, max_file_bytes=max_file_bytes)
        if dry_run:
            if staging is not None:
                st = Path(staging)
                protect: list[tuple[str, str | os.PathLike[str]]] = [("the build folder", folder.resolve())]
                if recipe.path:
                    protect.append(("the recipe", recipe.path))
                protect += [("a published file", f.source) for f in plan.files if f.source]
                protect += [("a manifest", m) for m in col.manifests]
                parent = st.absolute().parent
                held.enter_context(folder_lock(parent, purpose=f"quantforge publish --staging {st.name}", wait=wait,
                                               name=f".{st.name}.staging.lock", where=str(st)))
                plan = write_staging(plan, st, force=force, protect=protect)
            return UploadResult(repo=repo, url="", plan=plan, commits=(), uploaded=(), skipped=(),
                                bytes_uploaded=0, dry_run=True)
        token = resolve_token()
        result = execute(plan, token=token, progress=progress)
        _record(col, result)
        return result


def _record(col: Collected, result: UploadResult) -> None:
    """Add a ``publish`` section to each manifest: repo, paths, commit (never the token)."""
    from quantforge.manifest import update_manifest

    last = next((c.oid for c in reversed(result.commits) if c.oid), None)
    for mp, v in zip(col.manifests, col.variants, strict=True):
        paths = [f.path_in_repo for f in result.plan.files if f.variant == v.name]
        try:
            update_manifest(mp, publish={"repo": result.repo, "paths": paths, "head_commit": last})
        except Exception:  # a read-only output folder must not turn a finished upload into a failure
            pass
