"""Per-variant build manifests: ``<output>.manifest.json`` next to the output.

A manifest says what a GGUF is and how it was made: recipe (and its sha256), the emitted
command, engine and commit, base model source and sha256, imatrix sha256 and coverage,
output files with sizes and sha256, planned vs actual bytes, timings. Evaluation and
publishing read it and add their own sections (``eval``, ``publish``) with
``update_manifest``. File paths are stored relative to the manifest's folder so a moved
output folder still works; no token or secret is ever written.

Writes are atomic (temp file in the same folder + ``os.replace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from quantforge.errors import InputError
from quantforge.fsutil import atomic_write_text

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str  # relative to the manifest's folder
    bytes: int
    sha256: str


class Manifest(BaseModel):
    """The build record of one variant. Unknown sections are kept (later schema additions)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    schema_version: int = SCHEMA_VERSION
    quantforge_version: str
    name: str  # variant name, e.g. "IQ2_KS"
    output: str  # nominal output file name (relative); split sets list their shards in files
    files: list[ManifestFile]
    planned_file_bytes: int | None
    planned_tensor_bytes: int | None = None
    actual_file_bytes: int
    file_bytes_exact: bool | None = None
    command: list[str]
    engine: str
    engine_build: int | None = None
    engine_commit: str | None = None
    toolchain: dict[str, Any] = {}
    recipe: dict[str, Any] = {}  # path, sha256, variant, ftype
    base: dict[str, Any] = {}  # source, path, bytes, sha256
    imatrix: dict[str, Any] | None = None  # path, sha256, format, dataset, chunk_count, entries, coverage
    plan: dict[str, Any] = {}  # n_tensors, n_params, bpw, type counts
    verification: dict[str, Any] = {}
    timings: dict[str, float] = {}
    log: str | None = None
    created: str | None = None
    eval: dict[str, Any] | None = None
    publish: dict[str, Any] | None = None
    node: dict[str, Any] | None = None  # cluster builds: the Ray node that built it (id, ip, hostname, folder)


def manifest_path(output: str | os.PathLike[str]) -> Path:
    """``<output>.manifest.json`` for a nominal output path."""
    p = Path(output)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def relative_to_manifest(manifest: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    return os.path.relpath(Path(path).resolve(), Path(manifest).resolve().parent)


def resolve_file(manifest: str | os.PathLike[str], rel: str) -> Path:
    """The absolute path of a manifest's relative file entry."""
    return (Path(manifest).resolve().parent / rel).resolve()


def write_manifest(path: str | os.PathLike[str], manifest: Manifest) -> Path:
    p = Path(path)
    atomic_write_text(p, json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", what="manifest")
    return p


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest (InputError naming the file for a missing, malformed or newer one)."""
    p = Path(path)
    if p.suffix != ".json" and not p.name.endswith(MANIFEST_SUFFIX):
        p = manifest_path(p)  # an output path was given
    from quantforge.paths import MAX_MANIFEST_BYTES, read_input_json

    if not p.exists() and not p.is_symlink():
        raise InputError(
            f"no manifest at {p}",
            where=str(p),
            hint="build the variant with `quantforge build RECIPE --quant NAME`",
        )
    data = read_input_json(p, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(data, dict):
        raise InputError("manifest is not a JSON object", where=str(p))
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise InputError(
            f"manifest schema_version {version} is newer than this quantforge understands ({SCHEMA_VERSION})",
            where=str(p),
            hint="upgrade quantforge",
        )
    try:
        return Manifest.model_validate(data)
    except RecursionError:
        raise InputError("manifest values nest too deeply", where=str(p), hint="rebuild the variant") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise InputError(
            f"invalid manifest field {loc}: {first['msg']}", where=str(p), hint="rebuild the variant"
        ) from exc


def update_manifest(path: str | os.PathLike[str], **sections: Any) -> Manifest:
    """Set top-level sections (``eval=...``, ``publish=...``) and rewrite atomically."""
    p = Path(path)
    if not p.name.endswith(MANIFEST_SUFFIX) and p.suffix != ".json":
        p = manifest_path(p)
    current = read_manifest(p)
    data = current.model_dump(mode="json")
    for key, value in sections.items():
        if key in ("schema_version",):
            raise InputError(f"{key} cannot be updated", where=str(p))
        data[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    try:
        updated = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(
            f"invalid manifest update {'.'.join(str(x) for x in first['loc'])}: {first['msg']}", where=str(p)
        ) from exc
    write_manifest(p, updated)
    return updated
