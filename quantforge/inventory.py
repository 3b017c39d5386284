"""Tensor inventories: what tensors a model has (names, ggml shapes, source dtypes, shards).

An inventory is read from a local GGUF (one file or a ``-0000K-of-0000N`` split set), from a
GGUF on Hugging Face (``hf://org/repo[@rev]/path.gguf``, only the header bytes fetched with
HTTP range requests), or, for an HF id or shipped name, synthesized by
``quantforge.inventory_synth``. Only the headers are ever read: inventories of 700 GB models
cost a few megabytes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge.errors import InventoryError
from quantforge.gguf_header import GGUFHeader, StringArray, detect_fork, read_header, resolve_fork

# Same alias as ``quantforge.catalogue.Engine`` (the catalogue owns it); spelled here so the
# contract models import without loading the catalogue's tables.
Engine = Literal["ik", "mainline"]
#: Converter layouts of MLA models (deepseek2): ik keeps attn_kv_b next to 2-D attn_k_b/attn_v_b,
#: mainline writes 3-D attn_k_b/attn_v_b only, legacy (both converters before MLA, spring 2025)
#: attn_kv_b only.
Layout = Literal["ik", "mainline", "legacy"]
#: GLM MTP-block variants (see inventory_synth.NextN).
NextN = Literal["full", "shared", "none"]


class TensorEntry(BaseModel):
    """One tensor of a model, as its GGUF header (or a synthesized listing) describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: ggml order: ne0 (the row length) first.
    shape: tuple[int, ...]
    #: Source type name in the catalogue's spelling ("bf16", "f32", "q4_1", "iq4_k").
    dtype: str
    #: 0-based shard index of a split set.
    shard: int = 0


class TensorInventory(BaseModel):
    """Every tensor of a model plus the architecture facts the planner and fit stages need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: A path, ``hf://org/repo/path.gguf``, or a shipped id.
    source: str
    #: ``general.architecture``: "llama", "deepseek2", "qwen3moe", "glm4moe", ...
    arch: str
    #: Converter layout where it matters (deepseek2: "ik" keeps ``attn_kv_b``), else None.
    layout: Layout | None
    hparams: dict[str, int | float | bool | str]
    tensors: tuple[TensorEntry, ...]
    #: The full GGUF KV of a real source (None when synthesized); needed for exact file bytes.
    kv: dict[str, Any] | None
    #: Size of the source header block (KV + tensor infos + padding) when known.
    metadata_bytes: int | None
    #: Bytes fetched over HTTP to read a remote source's headers (None for local/synthesized).
    bytes_fetched: int | None = None
    #: Number of files of a split set (1 for a single file).
    n_shards: int = 1
    #: The fork whose type ids a real GGUF uses (``gguf_header.detect_fork``): "ik" or "mainline"
    #: when something in the file belongs to one fork only, None when it reads the same in both.
    fork: Engine | None = None
    #: Why (``type id 139 (iq4_k) exists only in ik_llama.cpp`` ...).
    fork_evidence: tuple[str, ...] = ()
    #: Header block (KV + tensor infos + padding) of every shard of a real split set, in order;
    #: with the per-tensor padding this gives the exact bytes of the whole set.
    shard_metadata_bytes: tuple[int, ...] = ()

    def kv_value(self, key: str, default: Any = None) -> Any:
        """The plain value of a GGUF KV key of a real source (``kv`` holds typed ``GGUFValue``)."""
        if self.kv is None or key not in self.kv:
            return default
        v = self.kv[key]
        return v.plain() if hasattr(v, "plain") else v

    @property
    def n_params(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total


# ---------------------------------------------------------------------------------------------
# loading

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_HF_RE = re.compile(r"^hf://(?P<org>[^/@]+)/(?P<repo>[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+\.gguf)$")
# An HF model id ("org/name") or a shipped inventory name: no scheme, not a .gguf path.
_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def load_inventory(
    source: str | os.PathLike[str],
    *,
    engine: Engine | None = None,
    layout: Layout | None = None,
    nextn: NextN | None = None,
) -> TensorInventory:
    """The tensor inventory of ``source``.

    - a local ``.gguf`` path (one file, or any shard of a ``-0000K-of-0000N`` split set);
    - ``hf://org/repo[@revision]/path.gguf`` (all shards of a split set), header bytes only;
    - a Hugging Face ``config.json`` (any ``*.json`` file): synthesized;
    - an HF model id or shipped name (``deepseek-ai/DeepSeek-R1-0528``): a synthesized
      inventory from ``quantforge.inventory_synth``.

    ``engine`` names the fork whose catalogue spells type ids when the file itself does not
    decide it (``gguf_header.detect_fork``); a file of the other fork with an ambiguous id is
    refused. ``layout`` picks the converter layout of a synthesized inventory (default: the
    engine's usual one, mainline when none is named); ``nextn`` the GLM MTP-block variant (see
    ``inventory_synth.NextN``; default: the published one). For a GGUF both must match the file.
    """
    text = os.fspath(source)
    if text.startswith("hf://"):
        return _check_layout(_load_remote(text, engine=engine), layout, nextn)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json" and (path.exists() or os.sep in text or "/" in text):
        from quantforge.inventory_synth import inventory_from_config_file

        return inventory_from_config_file(path, engine=layout or engine or "mainline", nextn=nextn)
    if path.exists() or text.endswith(".gguf") or os.sep in text and not _ID_RE.match(text):
        return _check_layout(_load_local(path, source=text, engine=engine), layout, nextn)
    if _ID_RE.match(text):
        from quantforge import inventory_synth

        return inventory_synth.shipped_inventory(text, engine=engine, layout=layout, nextn=nextn)
    raise InventoryError(
        "not a GGUF path, hf:// URL, config.json or model id",
        where=text,
        hint="give a .gguf file, hf://org/repo/file.gguf, a config.json, or an HF id such as deepseek-ai/DeepSeek-R1-0528",
    )


SourceKind = Literal["recipe", "gguf", "hf", "shipped", "config"]


class ModelSource(BaseModel):
    """What a ``SOURCE`` argument named: the model's inventory and, for a recipe, the recipe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    kind: SourceKind
    inventory: TensorInventory
    #: The recipe when ``source`` was one (its inventory is the one it plans against).
    recipe: Any = None

    @property
    def is_quant(self) -> bool:
        """A real GGUF whose tensors are already quantized (a published quant, not a base)."""
        from quantforge.catalogue import catalogue

        if self.inventory.kv is None:
            return False
        cat = catalogue(self.inventory.fork or "ik")
        return any((q := cat.find(t.dtype)) is not None and q.block_size > 1 for t in self.inventory.tensors)


def load_source(
    source: str | os.PathLike[str],
    *,
    engine: Engine | None = None,
    layout: Layout | None = None,
    nextn: NextN | None = None,
) -> ModelSource:
    """Read any ``SOURCE`` the CLI takes where a model is read (``inventory``, ``plan``, ``fit``,
    ``recipe import``, ``card``): a recipe (``.toml``: the inventory it plans against, its
    ``[model] layout``/engine unless ``layout`` is given), a local GGUF or any shard of a split
    set, ``hf://org/repo[@rev]/file.gguf`` (header bytes only), a ``config.json``, or an HF id
    with a shipped inventory. ``engine`` and ``layout`` as in ``load_inventory``.
    """
    text = os.fspath(source)
    if Path(text).suffix.lower() == ".toml":
        from quantforge.plan import recipe_inventory
        from quantforge.recipe import load_recipe

        recipe = load_recipe(text)
        over = {k: v for k, v in (("layout", layout), ("nextn", nextn)) if v is not None}
        if over:
            recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update=over)})
        return ModelSource(source=text, kind="recipe", inventory=recipe_inventory(recipe), recipe=recipe)
    inv = load_inventory(text, engine=engine, layout=layout, nextn=nextn)
    kind: SourceKind
    if text.startswith("hf://"):
        kind = "hf"
    elif Path(text).suffix.lower() == ".json":
        kind = "config"
    elif inv.kv is not None:
        kind = "gguf"
    else:
        kind = "shipped"
    return ModelSource(source=text, kind=kind, inventory=inv)


_HF_REPO_URL = re.compile(r"^https?://huggingface\.co/([\w.\-]+/[\w.\-]+)/?$")


def base_model_from_gguf(kv: dict[str, Any] | None) -> str | None:
    """``org/name`` of the first ``general.base_model.*`` entry whose ``repo_url`` is a Hub model
    (what convert_hf_to_gguf.py records from the model card), else None."""
    if not kv:
        return None
    table = kv

    def plain(key: str) -> Any:
        v: Any = table.get(key)
        return v.plain() if hasattr(v, "plain") else v

    count = plain("general.base_model.count")
    for i in range(int(count) if isinstance(count, int) else 0):
        url = plain(f"general.base_model.{i}.repo_url")
        m = _HF_REPO_URL.match(url) if isinstance(url, str) else None
        if m:
            return m.group(1)
    return None


def base_model_of(recipe: object) -> tuple[str | None, str]:
    """The card's ``base_model`` and where it comes from: ``[publish] base_model``, else
    ``[model] id``, else ``general.base_model.*`` of a local base GGUF; (None, why) otherwise."""
    pub = getattr(recipe, "publish", None)
    model = getattr(recipe, "model", None)
    if pub is not None and pub.base_model:
        return pub.base_model, "[publish] base_model"
    if model is not None and model.id:
        return model.id.removeprefix("hf://"), "[model] id"
    base = getattr(model, "base", None)
    if base and not str(base).startswith("hf://"):
        from quantforge.errors import QuantforgeError

        path = recipe.resolve_path(base)  # type: ignore[attr-defined]
        if path and Path(path).is_file():
            try:
                found = base_model_from_gguf(dict(read_header(path).kv))
            except QuantforgeError:
                found = None
            if found:
                return found, f"general.base_model of {Path(path).name}"
            return None, f"{Path(path).name} has no general.base_model.* pointing at a Hub model"
        return None, "the base GGUF does not exist yet"
    return None, "the recipe names no Hub model"


def detect_nextn(names: Sequence[str]) -> NextN | None:
    """The NextN (MTP) variant of a GLM-style tensor list, None without NextN tensors."""
    if not any(".nextn." in n for n in names):
        return None
    return "full" if any(n.endswith(".nextn.embed_tokens.weight") for n in names) else "shared"


def _check_layout(inv: TensorInventory, layout: Layout | None, nextn: NextN | None = None) -> TensorInventory:
    if nextn is not None and inv.arch == "glm4moe":
        have = detect_nextn([t.name for t in inv.tensors]) or "none"
        if have != nextn:
            raise InventoryError(
                f"this GGUF has the {have!r} NextN variant, not {nextn!r}",
                where=inv.source,
                hint="drop nextn (the file says what it has), or give the GGUF of that variant",
            )
    if layout is not None and inv.layout is not None and inv.layout != layout:
        raise InventoryError(
            f"this GGUF has the {inv.layout} layout ({_LAYOUT_SHAPE[inv.layout]}), not the {layout} layout",
            where=inv.source,
            hint=f'plan it as it is (layout = "{inv.layout}" or no layout), or convert the model with {layout}\'s converter',
        )
    return inv


#: What each MLA layout holds (DeepSeek-V2/V3/R1, Kimi-K2: deepseek2).
_LAYOUT_SHAPE = {
    "ik": "attn_kv_b kept next to 2-D attn_k_b/attn_v_b",
    "mainline": "3-D attn_k_b/attn_v_b, no attn_kv_b",
    "legacy": "attn_kv_b only, as converted before MLA",
}


def layout_load_error(engine: Engine, inventory: TensorInventory) -> str | None:
    """Why ``engine`` cannot load a model of this inventory's layout, or None when it can.

    ik_llama.cpp loads both deepseek2 layouts (llama-load-tensors.cpp: without ``attn_kv_b`` it
    takes the 3-D ``attn_k_b``/``attn_v_b`` of a mainline conversion); mainline llama.cpp expects
    3-D ``attn_k_b``/``attn_v_b`` (src/models/deepseek2.cpp) and fails on the ik layout's extra
    ``attn_kv_b`` and 2-D shapes ("wrong number of tensors" / shape mismatch).
    """
    if engine == "mainline" and inventory.layout == "ik":
        return (
            f"llama.cpp cannot load the ik layout of {inventory.arch} ({_LAYOUT_SHAPE['ik']}): it expects "
            f"{_LAYOUT_SHAPE['mainline']}"
        )
    return None


def split_siblings(path: Path) -> list[Path] | None:
    """All shard paths of the split set ``path`` belongs to (None if it is no split name)."""
    m = _SPLIT_RE.match(path.name)
    if m is None:
        return None
    count = int(m["count"])
    return [path.with_name(f"{m['prefix']}-{k:05d}-of-{count:05d}.gguf") for k in range(1, count + 1)]


def _load_local(path: Path, *, source: str, engine: Engine | None) -> TensorInventory:
    shards = split_siblings(path) or [path]
    if len(shards) > 1:
        for p in shards:
            if not p.is_file():
                raise InventoryError(
                    f"shard {p.name} of the split set is missing",
                    where=str(path),
                    hint=f"put all {len(shards)} shards in {p.parent}",
                )
    headers = [read_header(p) for p in shards]
    return inventory_from_headers(headers, source=source, engine=engine, names=[str(p) for p in shards])


def inventory_from_headers(
    headers: Sequence[GGUFHeader],
    *,
    source: str,
    engine: Engine | None,
    names: Sequence[str],
    bytes_fetched: int | None = None,
) -> TensorInventory:
    """Assemble an inventory from the parsed headers of one file or of every shard, in order."""
    first = headers[0]
    where = names[0]
    if len(headers) > 1:
        _check_split(headers, names)
    elif "split.count" in first.kv and _split_int(first, "split.count", where) > 1:
        raise InventoryError(
            f"this file is shard {_split_int(first, 'split.no', where, 0) + 1} of a "
            f"{_split_int(first, 'split.count', where)}-file split set but its name has no -0000K-of-0000N suffix",
            where=where,
            hint="keep the names llama-gguf-split gave the shards",
        )
    if "general.architecture" in first.kv and not isinstance(first.get("general.architecture"), str):
        raise _bad_hparam(where, "general.architecture", first.get("general.architecture"), "a string")
    arch = first.architecture
    if arch is None:
        raise InventoryError("general.architecture is missing", where=where, hint="re-convert the model")
    # The fork is decided before any type id gets a name: id 41 is q1_0 in one and q1_0_g128 in the other.
    verdict = detect_fork(headers, where=where)
    spelling = resolve_fork(verdict, engine, where=where)
    tensors: list[TensorEntry] = []
    for shard, h in enumerate(headers):
        for t in h.tensors:
            tensors.append(TensorEntry(name=t.name, shape=t.shape, dtype=type_name(t.type_id, spelling), shard=shard))
    names_seen: set[str] = set()
    for entry in tensors:
        if entry.name in names_seen:
            raise InventoryError(f"tensor {entry.name} appears in two shards", where=where)
        names_seen.add(entry.name)
    return TensorInventory(
        source=source,
        arch=arch,
        layout=detect_layout(arch, [t.name for t in tensors]),
        hparams=extract_hparams(first, arch, tensors, where=where),
        tensors=tuple(tensors),
        kv=dict(first.kv),
        metadata_bytes=first.data_offset,
        bytes_fetched=bytes_fetched,
        n_shards=len(headers),
        fork=verdict.fork,
        fork_evidence=verdict.evidence,
        shard_metadata_bytes=tuple(h.data_offset for h in headers),
    )


def _split_int(h: GGUFHeader, key: str, where: str, default: int | None = None) -> int:
    """A ``split.*`` count: an integer from 0 to 99999 (shard names have five digits)."""
    value = h.get(key, default)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 99_999:
        raise _bad_hparam(where, key, value, "an integer from 0 to 99999")
    return value


def _check_split(headers: Sequence[GGUFHeader], names: Sequence[str]) -> None:
    count = len(headers)
    total = sum(len(h.tensors) for h in headers)
    for k, (h, name) in enumerate(zip(headers, names, strict=True)):
        if h.get("split.no") is None or h.get("split.count") is None:
            raise InventoryError("split.no / split.count are missing from a shard", where=name,
                                 hint="the shards were not written by llama-gguf-split")
        no, cnt = _split_int(h, "split.no", name), _split_int(h, "split.count", name)
        if int(no) != k or int(cnt) != count:
            raise InventoryError(f"shard says it is {int(no) + 1} of {cnt}, expected {k + 1} of {count}", where=name,
                                 hint="the shards come from different split sets; download them again")
    expected = headers[0].get("split.tensors.count")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
        raise _bad_hparam(names[0], "split.tensors.count", expected, "an integer")
    if expected is not None and int(expected) != total:
        raise InventoryError(f"the split set holds {total} tensors but split.tensors.count is {expected}",
                             where=names[0], hint="a shard is from another split set")


def type_name(type_id: int, engine: Engine | None = None) -> str:
    """The catalogue spelling of a ggml type id (ik first, then mainline, when no engine is given)."""
    from quantforge.catalogue import catalogue

    for eng in ((engine,) if engine else ("ik", "mainline")):
        qt = catalogue(eng).by_id(type_id)
        if qt is not None:
            return qt.name
    # Unknown to both engines: keep the id visible rather than failing to list the file.
    return f"type{type_id}"


def detect_layout(arch: str, names: Sequence[str]) -> Layout | None:
    """The converter layout of an MLA model (see ``Layout``), None for other models."""
    has_kv_b = any(n.endswith(".attn_kv_b.weight") for n in names)
    has_k_b = any(n.endswith(".attn_k_b.weight") for n in names)
    if has_kv_b and has_k_b:
        return "ik"
    if has_k_b:
        return "mainline"
    if has_kv_b:
        return "legacy"
    return None


#: Integer hparams the planners compute with, and the largest value a real model could have:
#: llama.cpp reads them as uint32 and refuses another type; a NaN, a string or 2**40 layers here
#: is a damaged file (one line), not a loop over a trillion layers.
INT_HPARAMS: dict[str, int] = {
    "block_count": 10_000, "embedding_length": 1 << 20, "feed_forward_length": 1 << 24,
    "context_length": 1 << 32, "vocab_size": 1 << 26, "attention.head_count": 1 << 16,
    "attention.head_count_kv": 1 << 16, "attention.key_length": 1 << 16, "attention.value_length": 1 << 16,
    "attention.kv_lora_rank": 1 << 20, "attention.q_lora_rank": 1 << 20, "expert_count": 1 << 16,
    "expert_used_count": 1 << 16, "expert_shared_count": 1 << 16, "expert_feed_forward_length": 1 << 24,
    "expert_shared_feed_forward_length": 1 << 24, "leading_dense_block_count": 10_000,
    "nextn_predict_layers": 10_000, "rope.dimension_count": 1 << 16,
}


def _bad_hparam(where: str, key: str, value: Any, expected: str) -> InventoryError:
    shown = repr(value) if not isinstance(value, (list, StringArray)) else f"an array of {len(value)}"
    return InventoryError(f"malformed GGUF metadata: {key} is {shown}, expected {expected}", where=where,
                          hint="the file is damaged or was written by a broken converter; re-convert the model")


def _check_hparam(where: str, arch: str, name: str, value: Any) -> None:
    key = f"{arch}.{name}"
    items = value if isinstance(value, list) else [value]
    for x in items:
        if isinstance(x, float) and not math.isfinite(x):
            raise _bad_hparam(where, key, x, "a finite number")
    bound = INT_HPARAMS.get(name)
    if bound is None:
        return
    expected = f"an integer from 0 to {bound}"
    if isinstance(value, list) and not value:
        raise _bad_hparam(where, key, value, expected)
    for x in items:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= bound:
            raise _bad_hparam(where, key, x if not isinstance(value, list) else value, expected)


def extract_hparams(header: GGUFHeader, arch: str, tensors: Sequence[TensorEntry],
                    *, where: str | None = None) -> dict[str, int | float | bool | str]:
    """Architecture hyper-parameters from the ``{arch}.*`` KVs.

    Naming: the GGUF key without the ``{arch}.`` prefix (``llama.attention.head_count`` ->
    ``attention.head_count``, ``deepseek2.rope.dimension_count`` -> ``rope.dimension_count``), the
    same spelling ``inventory_synth`` uses, so real and synthesized inventories compare equal.
    Per-layer arrays become one number (their value, or their maximum when layers differ, which
    is what memory planning needs). ``vocab_size`` is added from the token list when absent.
    """
    out: dict[str, int | float | bool | str] = {}
    prefix = f"{arch}."
    for key, v in header.kv.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        value = v.plain()
        _check_hparam(where or header.path or "GGUF", arch, name, value)
        if isinstance(value, list):
            nums = [x for x in value if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if not value or len(nums) != len(value):
                continue
            value = max(nums)
        if isinstance(value, (bool, int, float, str)):
            out[name] = value
    if "vocab_size" not in out:
        tokens = header.kv.get("tokenizer.ggml.tokens")
        if tokens is not None and isinstance(tokens.value, (list, StringArray)):
            out["vocab_size"] = len(tokens.value)
        else:
            emb = next((t for t in tensors if t.name == "token_embd.weight"), None)
            if emb is not None and len(emb.shape) == 2:
                out["vocab_size"] = emb.shape[1]
    return out


# ---------------------------------------------------------------------------------------------
# remote: hf://org/repo[@revision]/path.gguf, header bytes only, through HTTP range requests

#: First range request; later ones grow with the bytes fetched so far, so a header of H bytes
#: costs less than 2*H + this.
REMOTE_FIRST_CHUNK = 64 * 1024


class _RangeReader:
    """A file-like ``read`` over HTTP ``Range:`` GETs through huggingface_hub's session."""

    def __init__(self, *, url: str, size: int, headers: dict[str, str], where: str) -> None:
        from huggingface_hub import get_session

        self.session = get_session()
        self.url = url
        self.size = size
        self.headers = headers
        self.where = where
        self.pos = 0
        self.fetched = 0
        self.requests = 0

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        headers = {**self.headers, "Range": f"bytes={self.pos}-{self.pos + n - 1}"}
        with _hub_errors(self.where):
            response = self.session.get(self.url, headers=headers, follow_redirects=True)
            from huggingface_hub.utils import hf_raise_for_status  # type: ignore[attr-defined]

            hf_raise_for_status(response)
        self.requests += 1
        if response.status_code != 206:
            # A 200 would carry the whole file: refuse rather than download hundreds of GB.
            raise InventoryError(
                f"the server ignored the byte range request (HTTP {response.status_code})",
                where=self.where,
                hint="HF_ENDPOINT must point at a server that supports Range requests",
            )
        data = bytes(response.content)
        if len(data) > n:
            data = data[:n]
        self.pos += len(data)
        self.fetched += len(data)
        return data


class _hub_errors:
    """Turn huggingface_hub / transport exceptions into one InventoryError with the fix."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, InventoryError):
            return False
        from huggingface_hub import errors as e

        w = self.where
        if isinstance(exc, e.OfflineModeIsEnabled):
            raise InventoryError("offline mode is on (HF_HUB_OFFLINE=1)", where=w,
                                 hint="unset HF_HUB_OFFLINE, or give a local .gguf path") from None
        if isinstance(exc, e.GatedRepoError):
            raise InventoryError("the repository is gated", where=w,
                                 hint="accept its terms on huggingface.co and set HF_TOKEN") from None
        if isinstance(exc, e.RepositoryNotFoundError):
            raise InventoryError("repository not found (or private)", where=w,
                                 hint="check the org/repo spelling; for a private repo set HF_TOKEN") from None
        if isinstance(exc, e.RevisionNotFoundError):
            raise InventoryError("revision not found", where=w, hint="check the @revision (branch, tag or commit)") from None
        if isinstance(exc, e.EntryNotFoundError):
            raise InventoryError("file not found in the repository", where=w,
                                 hint="check the path; `hf download --dry-run` lists the files") from None
        if isinstance(exc, e.HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise InventoryError(f"access denied (HTTP {status})", where=w,
                                     hint="set HF_TOKEN to a token that can read this repository") from None
            raise InventoryError(f"the Hub answered HTTP {status}: {str(exc).splitlines()[0]}", where=w,
                                 hint="try again later") from None
        if isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise InventoryError(f"cannot reach the Hub: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                 where=w, hint="check the network connection or HF_ENDPOINT") from None
        return False


def parse_hf_url(url: str) -> tuple[str, str | None, str]:
    """``hf://org/repo[@rev]/path.gguf`` -> (repo_id, revision, path)."""
    m = _HF_RE.match(url)
    if m is None:
        raise InventoryError(
            "malformed hf:// source",
            where=url,
            hint="write hf://org/repo/path/to/file.gguf (optionally hf://org/repo@revision/...)",
        )
    return f"{m['org']}/{m['repo']}", m["rev"], m["path"]


def _load_remote(url: str, *, engine: Engine | None) -> TensorInventory:
    from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    repo_id, revision, path = parse_hf_url(url)
    if constants.is_offline_mode():
        raise InventoryError("offline mode is on (HF_HUB_OFFLINE=1)", where=url,
                             hint="unset HF_HUB_OFFLINE, or give a local .gguf path")
    # Read at call time (not at import, like huggingface_hub does) so a changed HF_ENDPOINT counts.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    files = [path]
    m = _SPLIT_RE.match(path.rsplit("/", 1)[-1])
    if m is not None:
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        count = int(m["count"])
        files = [f"{folder}{m['prefix']}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]
        with _hub_errors(url):
            info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
        present = {s.rfilename for s in (info.siblings or [])}
        for f in files:
            if f not in present:
                raise InventoryError(f"shard {f} of the split set is missing from {repo_id}", where=url,
                                     hint="the upload is incomplete; pick another revision or repository")
        # Pin every shard to the commit the listing came from.
        revision = info.sha or revision
    headers_http = build_hf_headers()
    headers_http["Accept-Encoding"] = "identity"
    headers: list[GGUFHeader] = []
    fetched = 0
    rev_label = f"@{parse_hf_url(url)[1]}" if parse_hf_url(url)[1] else ""
    for f in files:
        where = f"hf://{repo_id}{rev_label}/{f}"
        file_url = hf_hub_url(repo_id, f, revision=revision, endpoint=endpoint)
        with _hub_errors(where):
            meta = get_hf_file_metadata(file_url, endpoint=endpoint)
        if meta.size is None:
            raise InventoryError("the Hub did not report the file size", where=where, hint="try again later")
        reader = _RangeReader(url=file_url, size=meta.size, headers=headers_http, where=where)
        headers.append(read_header(reader, size=meta.size, where=where, first_chunk=REMOTE_FIRST_CHUNK))
        fetched += reader.fetched
    return inventory_from_headers(headers, source=url, engine=engine, names=[f"hf://{repo_id}/{f}" for f in files],
                                  bytes_fetched=fetched)
