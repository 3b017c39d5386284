"""Every file-name convention, in one place: split shards, ``hf://`` sources, output names.

- Split sets as ``llama-gguf-split`` names them and Hub repositories hold them:
  ``<stem>-00001-of-00005.gguf`` … (five digits, 1-based); ``split_set`` gives every shard of
  the set a shard's name belongs to.
- ``hf://[datasets/]org/repo[@revision]/path`` sources (``parse_hf``): a model file or, with
  ``gguf=False``, any file of a model or dataset repository; the organisation and repository
  become cache paths, so they are checked as plain Hub names.
- A build's outputs: ``<stem>-<variant>.gguf`` in the output folder, where the stem is the
  recipe's ``[model] name`` or the base's file name without its precision and split suffixes;
  beside it ``.partial`` (being written), ``.log``, ``.manifest.json`` (``manifest.py``) and
  the split work folder. Build writes them, and evaluate, publish and the CLI find them, with
  these functions.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quantforge.errors import InputError, InventoryError
from quantforge.paths import relative_problem

if TYPE_CHECKING:  # names.py sits below the recipe format; it only reads [model] name
    from quantforge.recipe import Recipe

GGUF = ".gguf"
PARTIAL = ".partial"
LOG = ".log"

# ---------------------------------------------------------------------------------------
# split sets

#: ``<prefix>-<no>-of-<count>.gguf`` (the prefix is not empty).
SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
#: The split suffix of a stem (``Model-IQ2_K-00001-of-00005`` -> ``Model-IQ2_K``).
_SPLIT_SUFFIX_RE = re.compile(r"-\d{5}-of-\d{5}$")
_DIGITS5 = "[0-9]" * 5


def gguf_stem(name: str) -> str:
    """A file name without ``.gguf`` (any other suffix is kept)."""
    return name[: -len(GGUF)] if name.endswith(GGUF) else name


def shard_name(stem: str, k: int, n: int) -> str:
    """The ``k``-th of ``n`` shard names of ``stem`` (1-based)."""
    return f"{stem}-{k:05d}-of-{n:05d}{GGUF}"


def split_names(output: Path, n: int) -> list[Path]:
    """The ``n`` shard paths ``llama-gguf-split`` writes for the nominal ``output``."""
    stem = gguf_stem(output.name)
    return [output.with_name(shard_name(stem, k, n)) for k in range(1, n + 1)]


def split_siblings(path: Path) -> list[Path] | None:
    """Every shard path of the split set ``path`` belongs to (None when it has no split name)."""
    m = SPLIT_RE.match(path.name)
    if m is None:
        return None
    count = int(m["count"])
    return [path.with_name(shard_name(m["prefix"], k, count)) for k in range(1, count + 1)]


def split_set(path: Path) -> list[Path]:
    """Every shard of ``path``'s split set, or ``[path]`` for a single file."""
    return split_siblings(path) or [path]


def split_files(path_in_repo: str) -> list[str]:
    """``split_set`` of a repository path (``folder/x-00001-of-00003.gguf``): its shards, same folder."""
    folder, _, name = path_in_repo.rpartition("/")
    m = SPLIT_RE.match(name)
    if m is None:
        return [path_in_repo]
    count = int(m["count"])
    prefix = f"{folder}/" if folder else ""
    return [prefix + shard_name(m["prefix"], k, count) for k in range(1, count + 1)]


def strip_split_suffix(stem: str) -> str:
    """A stem without its ``-0000K-of-0000N`` suffix."""
    return _SPLIT_SUFFIX_RE.sub("", stem)


def existing_outputs(output: Path) -> list[Path]:
    """The nominal ``output`` or, when it was split, its shards as they exist on disk."""
    if output.is_file():
        return [output]
    stem = gguf_stem(output.name)
    pattern = f"{glob.escape(stem)}-{_DIGITS5}-of-{_DIGITS5}{GGUF}"
    return sorted(p for p in output.parent.glob(pattern) if p.is_file())


# ---------------------------------------------------------------------------------------
# hf:// sources

_HF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HINT_ANY = "write hf://org/repo/path/file.gguf (hf://datasets/org/repo/file.txt for a dataset)"
_HINT_GGUF = "write hf://org/repo/path/to/file.gguf (optionally hf://org/repo@revision/...)"


@dataclass(frozen=True)
class HfSource:
    """What an ``hf://`` source names."""

    repo_type: str  # "model" | "dataset"
    org: str
    repo: str
    revision: str | None
    path: str  # inside the repository

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.repo}"

    @property
    def files(self) -> list[str]:
        """The file, or every shard of its split set."""
        return split_files(self.path)


def is_hf(source: str | os.PathLike[str]) -> bool:
    return os.fspath(source).startswith("hf://")


def parse_hf(url: str, *, gguf: bool = False) -> HfSource:
    """``hf://[datasets/]org/repo[@rev]/path`` as its parts.

    ``gguf``: a model file (``.gguf``) of a model repository, as the inventory reads it
    (InventoryError); otherwise any file of a model or dataset repository (InputError).
    """
    error = InventoryError if gguf else InputError
    hint = _HINT_GGUF if gguf else _HINT_ANY
    rest = url[len("hf://") :] if url.startswith("hf://") else ""
    repo_type = "model"
    if rest.startswith("datasets/") and not gguf:
        repo_type, rest = "dataset", rest[len("datasets/") :]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or (gguf and not parts[-1].endswith(GGUF)):
        raise error("malformed hf:// source", where=url, hint=hint)
    org, repo, path = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not revision:
            raise error("malformed hf:// source", where=url, hint=hint)
    for what, part in (("organisation", org), ("repository", repo)):
        if not _HF_NAME.match(part) or ".." in part or len(part) > 96:
            raise error(f"malformed hf:// source: {what} {part!r} is not a Hub name", where=url,
                        hint="write hf://org/repo/path/file.gguf with letters, digits, '.', '_', '-'")
    # the revision and the path become cache paths too: plain names separated by '/' only
    for what, rel in (("revision", revision), ("file path", path)):
        why = relative_problem(rel) if rel is not None else None
        if why is not None:
            raise error(f"malformed hf:// source: the {what} {rel!r} {why}", where=url,
                        hint="only plain names separated by '/' can name a file in a repository")
    return HfSource(repo_type=repo_type, org=org, repo=repo, revision=revision, path=path)


def hf_file_name(url: str) -> str:
    """The file name an ``hf://`` source ends with (no parsing beyond the last ``/``)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------
# a build's outputs

#: A base's precision and split suffixes, dropped from the output stem.
_BASE_SUFFIX_RE = re.compile(r"([-_.](f16|bf16|f32|fp16|bf-16))?(-\d{5}-of-\d{5})?$", re.I)


def output_stem(recipe: Recipe, base: str | os.PathLike[str]) -> str:
    """The stem of every output of ``recipe``: ``[model] name`` made file-safe, else the base's
    file name without ``.gguf``, its precision (``-F16``, ``.bf16`` …) and split suffixes."""
    name = recipe.model.name
    if name:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    base_name = hf_file_name(os.fspath(base)) if is_hf(base) else Path(base).name
    stem = gguf_stem(base_name) if base_name.endswith(GGUF) else Path(base_name).stem
    return _BASE_SUFFIX_RE.sub("", stem) or stem


def variant_output(out_dir: Path, stem: str, variant: str) -> Path:
    """The nominal output of ``variant``: ``<out_dir>/<stem>-<variant>.gguf``."""
    return out_dir / f"{stem}-{variant}{GGUF}"


def partial_file(output: Path) -> Path:
    """Where ``output`` is written before it is verified and renamed into place."""
    return output.with_name(output.name + PARTIAL)


def log_file(output: Path) -> Path:
    """The tool log kept beside ``output``."""
    return output.with_name(output.name + LOG)


def split_work_dir(output: Path) -> Path:
    """Where ``llama-gguf-split`` writes the shards of ``output`` before they are renamed into place."""
    return output.with_name(f".{gguf_stem(output.name)}.splitting")


def find_variant_output(folder: Path, variant: str, *, stem: str | None = None) -> Path | None:
    """The built GGUF of ``variant`` in ``folder`` (the file, or the first shard of a split set).

    ``<stem>-<variant>.gguf`` when ``stem`` is given and it exists; otherwise the first
    ``*-<variant>.gguf`` (an output built under another stem, e.g. before ``[model] name``
    was set). None when there is none.
    """
    if stem is not None:
        found = existing_outputs(variant_output(folder, stem, variant))
        if found:
            return found[0]
    esc = glob.escape(variant)
    hits = sorted(folder.glob(f"*-{esc}{GGUF}")) or sorted(folder.glob(f"*-{esc}-00001-of-{_DIGITS5}{GGUF}"))
    return hits[0] if hits else None


def built_outputs(recipe: Recipe, variants: list[str], *,
                  out_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(variant, built GGUF) of each named variant of ``recipe`` in ``out_dir`` (default: the recipe's
    folder), as ``quantforge build`` named them; InputError naming the command for one not built."""
    folder = out_dir if out_dir is not None else (Path(recipe.path).parent if recipe.path else Path.cwd())
    base = recipe.model.base
    stem = output_stem(recipe, base) if base else None
    out: list[tuple[str, Path]] = []
    for name in variants:
        found = find_variant_output(folder, name, stem=stem)
        if found is None:
            raise InputError(f"variant {name} has not been built (no *-{name}.gguf in {folder})",
                             where=recipe.path, hint=f"quantforge build {recipe.path} --quant {name}")
        out.append((name, found))
    return out
