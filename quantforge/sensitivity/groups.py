"""Which tensor groups to measure at which types: the recipe's ``[sensitivity]`` table, with defaults
per architecture (every quantized kind, three layer buckets, two types below the base and one above).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import RecipeError
from quantforge.plan import QuantPlan, TensorPlan
from quantforge.recipe import Recipe, SensitivitySection, compile_layers, parse_layers
from quantforge.sensitivity.table import format_layers

_KIND_RE = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")
_GLOBAL_KINDS = {"token_embd.weight": "token_embd", "output.weight": "output"}

#: Candidate ladders (low -> high bpw) by engine and by the row length a type needs. The defaults
#: pick around the base type; a recipe names its own in ``[sensitivity] types`` / ``kind_types``.
LADDERS: dict[tuple[Engine, int], tuple[str, ...]] = {
    ("ik", 256): ("iq1_s", "iq1_m", "iq2_ks", "iq2_k", "iq2_kl", "iq3_ks", "iq3_k", "iq4_ks", "iq4_k", "iq5_ks",
                  "iq5_k", "iq6_k", "q8_0"),
    ("ik", 32): ("iq4_nl", "q5_0", "q6_0", "q8_0"),
    ("mainline", 256): ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "q3_K", "iq4_xs", "q4_K",
                        "q5_K", "q6_K", "q8_0"),
    ("mainline", 32): ("iq4_nl", "q5_0", "q5_1", "q8_0"),
}  # fmt: skip


class GroupSpec(BaseModel):
    """One group to measure: its tensors, the rule that changes them, the candidate types."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    kind: str
    layers: tuple[int, ...]
    tensors: tuple[str, ...]
    match: str  # the rule's match (kind regex), layers apart
    layers_spec: str | None  # "0-9" (None: not a per-layer kind)
    pattern: str  # the final regex (layers + match), for membership checks
    base_written: tuple[str, ...]  # the base variant's types for the tensors
    base_bytes: int
    candidates: tuple[str, ...]  # types asked for, low -> high bpw (none writes the base's types)
    written: dict[str, tuple[str, ...]]  # candidate -> what llama-quantize writes per tensor
    bytes: dict[str, int]  # candidate -> the group's tensor bytes


def kind_of(name: str) -> tuple[str, int | None] | None:
    """``blk.7.attn_q.weight`` -> ("attn_q", 7); ``token_embd.weight`` -> ("token_embd", None)."""
    if name in _GLOBAL_KINDS:
        return _GLOBAL_KINDS[name], None
    m = _KIND_RE.match(name)
    return (m.group(2), int(m.group(1))) if m else None


def _match_for(kind: str) -> str:
    if kind in ("token_embd", "output"):
        return rf"^{kind}\.weight"
    return re.escape(kind).replace(r"\_", "_") + r"\.weight"


def buckets_of(layers: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """``layers`` cut into ``n`` contiguous buckets of (nearly) equal size, the first ones larger."""
    xs = sorted(layers)
    n = max(1, min(n, len(xs)))
    size, extra = divmod(len(xs), n)
    out, i = [], 0
    for k in range(n):
        step = size + (1 if k < extra else 0)
        out.append(tuple(xs[i : i + step]))
        i += step
    return out


def quantized_tensors(plan: QuantPlan, engine: Engine) -> list[TensorPlan]:
    """The tensors whose type a recipe decides (llama-quantize quantizes them)."""
    cat = catalogue(engine)
    return [
        t for t in plan.tensors
        if t.requested_type is not None and len(t.shape) >= 2 and cat.get(t.type).block_size > 1
    ]  # fmt: skip


def default_candidates(engine: Engine, ne0: int, base_type: str) -> tuple[str, ...]:
    """Two ladder types below the base type's bpw and one above (three below at the top)."""
    cat = catalogue(engine)
    ladder = LADDERS[(engine, 256)] if ne0 % 256 == 0 else LADDERS[(engine, 32)]
    base_bpw = cat.get(cat.get(base_type).base or base_type).bpw
    below = [t for t in ladder if cat.get(t).bpw < base_bpw - 1e-9]
    above = [t for t in ladder if cat.get(t).bpw > base_bpw + 1e-9]
    if above:
        return (*below[-2:], above[0])
    return tuple(below[-3:])


def resolve_groups(
    recipe: Recipe,
    plan: QuantPlan,
    *,
    section: SensitivitySection | None,
    has_imatrix: bool,
    kinds: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    buckets: int | None = None,
) -> list[GroupSpec]:
    """The groups of ``[sensitivity]`` (command-line ``kinds``/``types``/``buckets`` override it)."""
    engine = recipe.engine
    cat = catalogue(engine)
    where = f"{recipe.path or 'recipe'}: sensitivity"
    tensors = quantized_tensors(plan, engine)
    by_kind: dict[str, list[TensorPlan]] = {}
    for t in tensors:
        k = kind_of(t.name)
        if k is not None:
            by_kind.setdefault(k[0], []).append(t)
    want = list(kinds or (section.kinds if section and section.kinds else by_kind))
    unknown = [k for k in want if k not in by_kind]
    if unknown:
        raise RecipeError(
            f"no quantized tensor of kind {', '.join(repr(k) for k in unknown)} in this model",
            where="--kind" if kinds else f"{where}.kinds", hint=f"kinds here: {', '.join(sorted(by_kind))}",
        )  # fmt: skip
    n_buckets = buckets or (section.buckets if section and section.buckets else 3)
    explicit: list[tuple[int, ...]] | None = None
    if section and section.layers:
        explicit = []
        for i, spec in enumerate(section.layers):
            try:
                explicit.append(tuple(parse_layers(spec)))
            except ValueError as exc:
                raise RecipeError(str(exc), where=f"{where}.layers[{i}]", hint='write e.g. "0-9"') from None
    kind_types = dict(section.kind_types) if section else {}
    for kt in kind_types:
        if kt not in by_kind:
            raise RecipeError(f"kind_types names {kt!r}, not a quantized kind of this model",
                              where=f"{where}.kind_types", hint=f"kinds here: {', '.join(sorted(by_kind))}")  # fmt: skip
    out: list[GroupSpec] = []
    for kind in want:
        members = by_kind[kind]
        layered = [t for t in members if t.layer is not None]
        if layered and len(layered) == len(members):
            present = sorted({t.layer for t in layered if t.layer is not None})
            if explicit is not None:
                parts = [tuple(x for x in b if x in present) for b in explicit]
                parts = [b for b in parts if b]
            else:
                parts = buckets_of(present, n_buckets)
        else:
            parts = [()]
        asked = list(types) if types else (kind_types.get(kind) or (section.types if section and section.types else None))
        for layers in parts:
            ts = sorted((t for t in members if not layers or t.layer in layers), key=lambda t: (t.layer or 0, t.name))
            layers_spec = format_layers(layers) if layers else None
            match = _match_for(kind)
            pattern = (compile_layers(layers_spec) + match) if layers_spec else match
            base_written = tuple(t.type for t in ts)
            cands = list(asked) if asked else list(default_candidates(engine, ts[0].shape[0], ts[0].type))
            written: dict[str, tuple[str, ...]] = {}
            sizes: dict[str, int] = {}
            seen: dict[tuple[str, ...], str] = {base_written: "(base)"}
            kept: list[str] = []
            for c in cands:
                try:
                    name = cat.normalise(c)
                    w = tuple(cat.resolve(name, t.shape, tensor_name=t.name)[0] for t in ts)
                except RecipeError as exc:
                    raise RecipeError(exc.message, where=f"{where}.types ({kind})", hint=exc.hint) from None
                if not has_imatrix and any(cat.needs_imatrix(x, tensor_name=t.name, ftype=plan.ftype)
                                           for x, t in zip(w, ts, strict=True)):  # fmt: skip
                    continue  # llama-quantize refuses it without an importance matrix
                if w in seen:
                    continue  # writes the base's types, or what another candidate writes
                seen[w] = name
                kept.append(name)
                written[name] = w
                sizes[name] = sum(cat.get(x).tensor_bytes(t.shape) for x, t in zip(w, ts, strict=True))
            kept.sort(key=lambda n: sizes[n])
            gname = f"{kind}@{layers_spec}" if layers_spec else kind
            out.append(
                GroupSpec(
                    name=gname, kind=kind, layers=tuple(layers), tensors=tuple(t.name for t in ts), match=match,
                    layers_spec=layers_spec, pattern=pattern, base_written=base_written,
                    base_bytes=sum(t.bytes for t in ts), candidates=tuple(kept), written=written, bytes=sizes,
                )
            )  # fmt: skip
    return out
