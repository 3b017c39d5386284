"""Per-variant build manifests: ``<output>.manifest.json`` next to the output.

A manifest says what a GGUF is and how it was made: recipe (and its sha256), the emitted
command, engine and commit, base model source and sha256, imatrix sha256 and coverage,
output files with sizes and sha256, planned vs actual bytes, what the output was verified
against, timings. Later stages read it through the same model and add their own sections
(``eval``, ``sweeps``, ``fit``, ``publish``) with ``update_manifest``; every section is typed and
an unknown one is refused (a manifest of a newer quantforge says so by its ``schema_version``). File paths are
stored relative to the manifest's folder so a moved
output folder still works; no token or secret is ever written.

Writes are atomic (temp file in the same folder + ``os.replace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Required

from pydantic import BaseModel, ConfigDict, ValidationError, with_config
from typing_extensions import TypedDict

from quantforge.catalogue import Engine
from quantforge.errors import InputError
from quantforge.fsutil import atomic_write_text
from quantforge.paths import MAX_MANIFEST_BYTES, read_input_json

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str  # relative to the manifest's folder
    bytes: int
    sha256: str


# The sections are typed dicts: validated key by key when a manifest is read (a misspelt or
# mistyped key is an error naming it), and read as plain mappings (``man.recipe["sha256"]``).


class ToolchainRecord(TypedDict):
    """The llama-quantize that built the variant, as ``toolchain.Toolchain`` described it."""

    source: str
    quantize: str
    version: str
    compiler: str | None


class RecipeRecord(TypedDict):
    path: str | None
    sha256: str
    variant: str
    ftype: str


class BaseRecord(TypedDict):
    source: str  # as the recipe or --base named it (path or hf://)
    path: str  # relative to the manifest's folder
    bytes: int
    sha256: str


class CoverageRecord(TypedDict):
    covered: int
    total: int
    missing: list[str]


class ImatrixRecord(TypedDict):
    path: str  # relative to the manifest's folder
    sha256: str | None
    format: str  # "dat" | "gguf"
    dataset: str | None
    chunk_count: int
    entries: int
    coverage: CoverageRecord


class PlanSummary(TypedDict, total=False):
    """What the build verified the output against (the full plan is ``quantforge plan --json``)."""

    n_tensors: Required[int]
    n_params: Required[int]
    bpw: Required[float]
    types: Required[dict[str, int]]  # written type -> tensor count
    build_key: dict[str, Any]  # what makes two builds the same (``build._build_key``)


class VerificationRecord(TypedDict, total=False):
    ok: Required[bool]
    tensors: Required[int]
    tensor_bytes: Required[int]
    file_bytes: Required[int]
    metadata: Required[dict[str, Any]]  # general.* / quantize.* KV as written
    recovered: str  # how an interrupted commit was finished


@with_config(ConfigDict(extra="allow"))  # a single flat result, as manifests before {latest, runs} hold it
class EvalSection(TypedDict, total=False):
    """Evaluations ``quantforge eval`` recorded: each an ``evaluate.models.EvalResult`` as JSON."""

    latest: dict[str, Any]
    runs: list[dict[str, Any]]


class FitRecord(TypedDict):
    """What ``quantforge fit --verify`` measured against what the solver predicted."""

    predicted_kld: float
    measured_kld: float
    measured_kld_err: float | None
    error: float
    model: str
    sensitivity: str | None
    comment: str | None
    recipe: str


class PublishRecord(TypedDict, total=False):
    repo: Required[str]
    paths: list[str]
    head_commit: str | None


class PulledRecord(TypedDict):
    bytes: int
    seconds: float


class NodeRecord(TypedDict, total=False):
    """The Ray node a cluster build ran on (``cluster.tasks.identity``), and how the output came back."""

    node_id: str
    ip: str
    hostname: str
    pid: int
    scratch: str
    cluster: str
    out_dir: str
    pulled: PulledRecord


#: A speed sweep recorded beside the variant: ``quantforge sweep`` stores the whole
#: ``evaluate.models.SweepResult`` as JSON; the demo names its files (json, jsonl, plots).
SweepRecord = dict[str, Any]


class Manifest(BaseModel):
    """The build record of one variant, and what later stages added to it (eval, sweeps, fit, publish)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
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
    engine: Engine
    engine_build: int | None = None
    engine_commit: str | None = None
    # The build's own sections; None in a manifest that only records evaluations of a GGUF
    # quantforge did not build (``quantforge eval --model``).
    toolchain: ToolchainRecord | None = None
    recipe: RecipeRecord | None = None
    base: BaseRecord | None = None
    imatrix: ImatrixRecord | None = None
    plan: PlanSummary | None = None
    verification: VerificationRecord | None = None
    timings: dict[str, float] = {}
    log: str | None = None
    created: str | None = None
    eval: EvalSection | None = None
    sweeps: dict[str, SweepRecord] | None = None
    fit: FitRecord | None = None
    publish: PublishRecord | None = None
    node: NodeRecord | None = None  # cluster builds: the Ray node that built it

    def latest_eval(self) -> dict[str, Any]:
        """The newest evaluation recorded (``{}`` when none): ``eval.latest``, or a flat old record."""
        ev: dict[str, Any] = dict(self.eval or {})
        latest = ev.get("latest")
        return dict(latest) if isinstance(latest, dict) else ev


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
        raise InputError("manifest values nest too deeply", where=str(p),
                         hint="rebuild the variant") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise InputError(
            f"invalid manifest field {loc}: {first['msg']}", where=str(p), hint="rebuild the variant"
        ) from exc


def update_manifest(path: str | os.PathLike[str], **sections: object) -> Manifest:
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
