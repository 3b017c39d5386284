"""Expansion of a recipe variant against a tensor inventory (see the package docstring)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from quantforge.catalogue import Catalogue, Engine, catalogue, ftype_for_value
from quantforge.catalogue import ftype as lookup_ftype
from quantforge.errors import RecipeError
from quantforge.gguf_header import GGUFValue, ValueType, read_header, serialized_header_size
from quantforge.imatrix import ImatrixMeta, read_imatrix_meta
from quantforge.inventory import ModelSource
from quantforge.inventory_models import TensorEntry, TensorInventory
from quantforge.names import is_hf
from quantforge.plan._engine import MixtureState, count_attention_wv, mixture_type, skip_reason
from quantforge.plan._models import CollapsedRow, Group, QuantPlan, TensorPlan
from quantforge.plan._versions import emits_reversed, parse_engine_version, tensor_type_era
from quantforge.recipe import MIXTURE, QuantVariant, Recipe, Rule, format_layers
from quantforge.regex_dialect import EngineRegex, RegexError
from quantforge.regex_dialect import check as check_engine_regex

# ------------------------------------------------------------------------------- helpers


#: What ``expand``'s ``imatrix`` names: the imatrix llama-quantize gets (its facts, or a path read
#: for them), ``None`` for the recipe's own ``[imatrix] file`` when it exists locally, ``False``
#: for none (the output's ``quantize.imatrix.*`` KV, and so its exact size, depend on it).
ImatrixArg = ImatrixMeta | str | os.PathLike[str] | Literal[False] | None

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def tensor_group(name: str) -> Group:
    """The human-view group of a tensor name."""
    if name.startswith("token_embd"):
        return "token_embd"
    if name.startswith("output.") or name == "output.weight":
        return "output"
    if "_norm" in name or name.endswith("norm.weight"):
        return "norms"
    if "_shexp" in name:
        return "shared_experts"
    if "_exps" in name or "ffn_gate_inp" in name or "exp_probs" in name:
        return "routed_experts"
    if ".attn_" in name:
        return "attention"
    if ".ffn_" in name:
        return "dense_ffn"
    return "other"


def imatrix_has_entry(entries: frozenset[str], name: str) -> bool:
    # ik's lookup, with its aliases (merged gate/up experts, ffn_gate -> ffn_up, MLA kv_b <-> v_b).
    if name in entries:
        return True
    for a, b in (("ffn_up_exps.weight", "ffn_gate_up_exps.weight"), ("ffn_gate_exps.weight",
                                                                     "ffn_gate_up_exps.weight"),
                 ("ffn_gate_exps.weight", "ffn_up_exps.weight"), ("ffn_gate_up_exps.weight",
                                                                  "ffn_up_exps.weight"),
                 ("ffn_gate.weight", "ffn_up.weight"), (".attn_v_b.weight", ".attn_kv_b.weight"),
                 (".attn_kv_b.weight", ".attn_v_b.weight")):  # fmt: skip
        if a in name and name.replace(a, b) in entries:
            return True
    return False


def _compile(pattern: str, where: str) -> EngineRegex:
    """The rule's regex as the engines' std::regex matches it (the one dialect checker)."""
    try:
        return check_engine_regex(pattern)
    except RegexError as exc:
        raise RecipeError(f"bad match regex {pattern!r}: {exc}", where=where, hint="fix the regex") from None


def _hparam(inv: TensorInventory, *keys: str, default: int = 0) -> int:
    for k in keys:
        # shipped inventories name them "head_count", GGUF-read ones "attention.head_count"
        v = inv.hparams.get(k, inv.hparams.get(f"attention.{k}"))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, list) and v:  # per-layer arrays (e.g. head_count_kv)
            return int(max(v))
    return default


# ------------------------------------------------------------------------------- expansion


def expand(
    recipe: Recipe,
    variant: str | None,
    inventory: TensorInventory,
    *,
    imatrix: ImatrixArg = None,
    engine_build: int | None = None,
) -> QuantPlan:
    """Expand ``variant`` of ``recipe`` against ``inventory``.

    ``imatrix``: the imatrix passed to llama-quantize (its path string goes into the output's
    KV, so the exact size depends on it). ``None`` uses the recipe's ``[imatrix] file`` when it
    exists locally; ``False`` plans without one. ``engine_build``: the mainline llama.cpp build
    (b-number) whose rules apply (default: ``[model] engine_version``, else the replicated one,
    see ``quantforge.plan._versions``).
    """
    v = recipe.variant(variant)
    engine: Engine = recipe.engine
    cat = catalogue(engine)
    ft = lookup_ftype(engine, v.ftype)
    imeta = resolve_imatrix_meta(recipe, imatrix)
    build = recipe_build(recipe, engine_build)
    era = tensor_type_era(build)

    rules = [(idx, r, _compile(r.pattern, r.where)) for idx, r in enumerate(v.rules)]
    use_mixture = v.default == MIXTURE
    default_type = ft.default_type or "f16"
    default_q = cat.get(default_type)
    # ik/mainline apply rules and mixture only when the ftype's own type is a quantized one.
    rules_active = default_q.block_size > 1

    names = [t.name for t in inventory.tensors]
    has_output = "output.weight" in names
    st = MixtureState(
        engine=engine,
        ftype=ft.canonical,
        arch=inventory.arch,
        n_layer=_hparam(inventory, "block_count", "n_layer"),
        n_expert=_hparam(inventory, "expert_count", "n_expert"),
        n_gqa=max(
            1, _hparam(inventory, "head_count") // max(1, _hparam(inventory, "head_count_kv", "head_count"))
        ),
        has_output=has_output,
        has_imatrix=imeta is not None,
        n_attention_wv=count_attention_wv(engine, names),
        build=build,
    )
    emitted = _emitted_rules(v, rules, cat, build) if era != "current" else []
    get = cat.get
    plans: list[TensorPlan] = []
    n_params = 0
    total = 0
    row_meta = 0
    memo: dict[tuple[str, tuple[int, ...], str], tuple[str, str | None]] = {}
    for t, shape, ne, layer, group, why in _engine_order(_static(inventory, engine), engine):
        n_params += ne
        place = None
        if why is not None or not rules_active:
            requested: str | None = None
            typ = t.dtype if why is not None else get(default_type).name
            rule_label = why or f"ftype {ft.name} (not a quantized type)"
            note = None
            if why is None:
                requested = typ
        elif era != "current":
            requested, rule_label, place = _old_mainline_pick(
                era, emitted, st, default_type, default_q.block_size, t.name, shape, cat, use_mixture
            )
            if rule_label.startswith("mixture") or era == "first-differing-base":
                typ, note = _resolve(cat, engine, requested, shape, t.name)
            else:
                typ, note = _as_written(cat, requested, shape, t.name, build)
        else:
            matched = None
            matched_at = 0
            for idx, r, rx in rules:
                if rx.search(t.name):
                    matched, matched_at = r, idx
                    break
            mix = None
            if engine == "ik" and use_mixture:
                # ik runs the mixture for every quantized tensor (its counters advance even
                # when a --custom-q rule then overrides the result); mainline skips it on a match.
                try:
                    mix = mixture_type(st, default_type, t.name, shape, default_q.block_size)
                except RecipeError:
                    if matched is None:
                        raise  # an unreplicated mixture matters only where no rule decides
                    mix = None
            if matched is not None:
                requested = matched.type
                rule_label = f"rules[{matched_at}]"
                place = matched.place
            elif not use_mixture:
                requested = v.default
                rule_label = "default"
            else:
                if mix is None:
                    mix = mixture_type(st, default_type, t.name, shape, default_q.block_size)
                requested = mix
                rule_label = "mixture"
            rkey = (requested, shape, t.name if t.name.endswith("token_embd.weight") else "")
            hit = memo.get(rkey)
            if hit is None:
                hit = memo[rkey] = _resolve(cat, engine, requested, shape, t.name)
            typ, note = hit
        qt = get(typ)
        nbytes = qt.tensor_bytes(shape)
        total += nbytes
        if qt.row_meta_size:
            row_meta += ne // (shape[0] or 1) * qt.row_meta_size
        plans.append(
            _fast(TensorPlan, {
                "name": t.name, "shape": shape, "source_dtype": t.dtype, "requested_type": requested,
                "type": typ,
                "bytes": nbytes, "rule": rule_label, "note": note, "place": place, "group": group,
                "layer": layer,
            })
        )  # fmt: skip
    args = quantize_args_for(engine, v, cat, engine_build=build)
    header, exact = _header_size(inventory, plans, cat, ft.value, imeta)
    spec = recipe.imatrix
    if imatrix is None and imeta is None and spec is not None and (spec.file or spec.corpus):
        exact = False  # the build will add quantize.imatrix.* KV we cannot size yet
    file_bytes = None
    if header is not None:
        align = _alignment(inventory)
        file_bytes = header + sum((p.bytes + align - 1) // align * align for p in plans)
    else:
        # Estimate: tensor data padded + the source's header block if known.
        meta = inventory.metadata_bytes or 0
        file_bytes = meta + sum((p.bytes + 31) // 32 * 32 for p in plans)
    return QuantPlan.model_construct(
        name=v.name,
        engine=engine,
        ftype=ft.name,
        tensors=tuple(plans),
        n_params=n_params,
        tensor_bytes=total,
        file_bytes=file_bytes,
        file_bytes_exact=exact,
        bpw=(8.0 * total / n_params) if n_params else 0.0,
        quantize_args=args,
        header_bytes=header,
        imatrix=imeta.path if imeta else None,
        source=inventory.source,
        row_meta_bytes=row_meta,
    )


def file_plan(inventory: TensorInventory, *, engine: Engine | None = None, name: str | None = None,
              places_from: QuantVariant | None = None) -> QuantPlan:
    """A GGUF as it is, as a plan: every tensor keeps the type the file holds, bytes exact.

    This is what ``plan``/``fit``/``card`` use for a model given without a recipe (a published
    quant, a downloaded BF16): ``engine`` (default: the file's fork, else ik) is the engine that
    will run it. The file size is exact for a real GGUF (every shard's header plus the data
    padded to the alignment) and an estimate for a synthesized inventory. ``places_from``: the
    recipe variant the file was built from, whose rules' ``place`` (first match, as ``expand``)
    the tensors keep (the card plans a built variant's fit this way, without expanding it again).
    """
    eng: Engine = engine or inventory.fork or "ik"
    cat = catalogue(eng)
    other = catalogue("mainline" if eng == "ik" else "ik")
    plans: list[TensorPlan] = []
    n_params = total = meta = 0
    by_shard: dict[int, int] = {}
    align = _alignment(inventory)
    rules = [(r, _compile(r.pattern, r.where)) for r in places_from.rules] if places_from is not None else []
    for t, shape, ne, layer, group, why in _static(inventory, eng):
        place = None
        if why is None:
            place = next((r.place for r, rx in rules if rx.search(t.name)), None)
        qt = cat.find(t.dtype) or other.find(t.dtype)
        if qt is None:
            raise RecipeError(f"tensor {t.name} has a type no engine knows ({t.dtype})",
                              where=inventory.source,
                              hint="the file needs a newer quantforge, or it is damaged")  # fmt: skip
        nbytes = qt.tensor_bytes(shape)
        n_params += ne
        total += nbytes
        meta += ne // (shape[0] or 1) * qt.row_meta_size
        by_shard[t.shard] = by_shard.get(t.shard, 0) + (nbytes + align - 1) // align * align
        plans.append(_fast(TensorPlan, {
            "name": t.name, "shape": shape, "source_dtype": t.dtype, "requested_type": None, "type": qt.name,
            "bytes": nbytes, "rule": "as in the file", "note": None, "place": place, "group": group,
            "layer": layer,
        }))  # fmt: skip
    headers = inventory.shard_metadata_bytes
    exact = inventory.kv is not None and len(headers) == inventory.n_shards
    if exact:
        file_bytes = sum(headers) + sum(by_shard.values())
    else:
        file_bytes = (inventory.metadata_bytes or 0) + sum(by_shard.values())
    value = inventory.kv_value("general.file_type") if inventory.kv is not None else None
    ft = ftype_for_value(eng, value) if isinstance(value, int) and not isinstance(value, bool) else None
    label = name or (ft.name if ft else "as-is")
    return QuantPlan.model_construct(
        name=label, engine=eng, ftype=ft.name if ft else "COPY", tensors=tuple(plans), n_params=n_params,
        tensor_bytes=total, file_bytes=file_bytes, file_bytes_exact=exact,
        bpw=(8.0 * total / n_params) if n_params else 0.0, quantize_args=[],
        header_bytes=headers[0] if exact and headers else None, imatrix=None, source=inventory.source,
        row_meta_bytes=meta,
    )  # fmt: skip


def source_plans(source: ModelSource, quant: str | None = None, *,
                 engine: Engine | None = None) -> list[QuantPlan]:
    """The plans a ``SOURCE`` stands for (``inventory.load_source``): a recipe's variants (one
    when ``quant`` names it) expanded against its inventory, or the model file as it is."""
    recipe = source.recipe
    if recipe is not None:
        names = [recipe.variant(quant).name] if quant else [q.name for q in recipe.quants]
        return [expand(recipe, n, source.inventory, imatrix=False) for n in names]
    if quant is not None:
        raise RecipeError(
            "--quant names a recipe variant, but this source is a model file, not a recipe",
            where=source.source,
            hint="drop --quant (the file is planned as it is), or give the recipe",
        )
    return [file_plan(source.inventory, engine=engine)]


def recipe_build(recipe: Recipe, engine_build: int | None = None) -> int | None:
    """The mainline build whose rules a plan follows: ``engine_build``, else ``[model]
    engine_version``, else None (the replicated current one). ik plans ignore it."""
    if recipe.engine != "mainline":
        return None
    if engine_build is not None:
        return engine_build
    return parse_engine_version(recipe.model.engine_version, where=recipe.path)


def _emitted_rules(
    v: QuantVariant, rules: Sequence[tuple[int, Rule, EngineRegex]], cat: Catalogue, build: int | None
) -> list[Any]:
    """(regex, type, label, place) in the order quantforge passes them to this build."""
    out = [(rx, cat.get(r.type).name, f"rules[{idx}]", r.place) for idx, r, rx in rules]
    if v.default != MIXTURE:
        out.append((check_engine_regex(".*"), cat.get(v.default).name, "default", None))
    return list(reversed(out)) if emits_reversed(build) else out


def _old_mainline_pick(
    era: str, emitted: list[Any], st: MixtureState, default_type: str, blck: int, name: str,
    shape: tuple[int, ...], cat: Catalogue, use_mixture: bool,
) -> tuple[str, str, Literal["cpu", "gpu"] | None]:
    """(requested type, rule label, place) as an older mainline llama-quantize chose it."""
    matches = [(typ, label, place) for rx, typ, label, place in emitted if rx.search(name)]
    if era == "first-differing-base":
        for typ, label, place in matches:
            if typ != cat.get(default_type).name:
                return typ, label, place
        return mixture_type(st, default_type, name, shape, blck), "mixture", None
    # The mixture runs first, for every tensor (its counters advance), fallback included.
    pre = mixture_type(st, default_type, name, shape, blck)
    post = cat.fallback_for(pre, shape[0]) or pre
    fell_back = post != pre
    label = "mixture"
    if era == "first":
        return (matches[0][0], matches[0][1], matches[0][2]) if matches else (pre, label, None)
    if era == "first-differing-mixture":
        for typ, lab, place in matches:
            if typ != post:
                return typ, lab, place
        return pre, label, None
    if era == "last-unless-fallback" and fell_back:
        return pre, "mixture (its fallback keeps --tensor-type out)", None
    if matches:
        typ, lab, place = matches[-1]
        return typ, lab, place
    return pre, label, None


def _as_written(cat: Catalogue, requested: str, shape: tuple[int, ...], name: str,
                build: int | None) -> tuple[str, str | None]:
    """Before b7807 a --tensor-type override got no row-length fallback: it is written as it is,
    and a type the rows cannot take makes llama-quantize abort."""
    qt = cat.get(requested)
    if shape[0] % qt.row_multiple != 0:
        raise RecipeError(
            f"llama.cpp b{build} writes --tensor-type types without the row-length fallback, and {qt.name} "
            f"cannot take {name}'s {shape[0]}-wide rows: that llama-quantize aborts",
            where=name,
            hint=f"give {name} a type whose block divides {shape[0]} (or use a newer llama.cpp)",
        )
    return qt.name, None


def _mainline_key(row: tuple[Any, ...]) -> tuple[int, str]:
    # llama_model_loader::weight_name_comparer: by the blk.N layer (-1 for the others), then name.
    layer = row[3]
    return (-1 if layer is None else layer, row[0].name)


def _engine_order(rows: list[Any], engine: str) -> list[Any]:
    """Tensors in the order the engine's llama-quantize visits (and writes) them: ik walks the
    file's order; mainline its ``weights_map``, sorted by layer number and then name. The mixture's
    counters (``i_attention_wv``, a dense model's ``i_ffn_down``) follow that order."""
    return sorted(rows, key=_mainline_key) if engine == "mainline" else rows


_TP_FIELDS = frozenset(TensorPlan.model_fields)


def _fast(cls: type[TensorPlan], values: dict[str, Any]) -> TensorPlan:
    # The values are built above from validated inputs; pydantic's model_construct costs
    # ~20 µs a tensor, which alone would eat the 100 ms budget for a 1000-tensor MoE x 5.
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(_TP_FIELDS))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


# Per-inventory facts that do not depend on the recipe (shape, elements, layer, group, skip
# reason), kept for the few inventories in use so a ladder of variants pays for them once.
_STATIC: dict[
    tuple[int, str], tuple[Any, list[tuple[Any, tuple[int, ...], int, int | None, Any, str | None]]]
] = {}


def _static(
    inventory: TensorInventory, engine: str
) -> list[tuple[TensorEntry, tuple[int, ...], int, int | None, Group, str | None]]:
    key = (id(inventory.tensors), engine)
    hit = _STATIC.get(key)
    if hit is not None and hit[0] is inventory.tensors:
        return hit[1]
    rows = []
    for t in inventory.tensors:
        shape = tuple(t.shape)
        ne = 1
        for d in shape:
            ne *= d
        m = _LAYER_RE.match(t.name)
        rows.append(
            (
                t,
                shape,
                ne,
                int(m.group(1)) if m else None,
                tensor_group(t.name),
                skip_reason(engine, t.name, shape, t.dtype),
            )
        )
    if len(_STATIC) >= 8:
        _STATIC.pop(next(iter(_STATIC)))
    _STATIC[key] = (inventory.tensors, rows)
    return rows


def _resolve(
    cat: Catalogue, engine: str, requested: str, shape: tuple[int, ...], name: str
) -> tuple[str, str | None]:
    if engine == "ik":
        try:
            return cat.resolve(requested, shape, tensor_name=name)
        except RecipeError as exc:
            raise RecipeError(exc.message, where=name, hint=exc.hint) from None
    ne0 = shape[0]
    fb = cat.fallback_for(requested, ne0)
    if fb is not None:
        return (
            fb,
            f"fallback: {ne0} columns not divisible by {cat.get(requested).row_multiple} for {requested}",
        )
    return requested, None


def resolve_imatrix_meta(recipe: Recipe, imatrix: ImatrixArg) -> ImatrixMeta | None:
    if imatrix is False:
        return None
    if isinstance(imatrix, ImatrixMeta):
        return imatrix
    if imatrix is not None:
        return read_imatrix_meta(imatrix)
    f = recipe.imatrix.file if recipe.imatrix is not None else None
    if not f or is_hf(f):
        return None
    path = recipe.resolve_path(f)
    if path is None or not Path(path).is_file():
        return None
    return read_imatrix_meta(path)


def _alignment(inventory: TensorInventory) -> int:
    kv = inventory.kv or {}
    a = kv.get("general.alignment")
    a = getattr(a, "value", a)
    return int(a) if isinstance(a, int) and a > 0 else 32


def _header_size(
    inventory: TensorInventory, plans: Sequence[TensorPlan], cat: Catalogue, ftype_value: int | None,
    imeta: ImatrixMeta | None,
) -> tuple[int | None, bool]:
    """Exact size of the output header, from the source KV with llama-quantize's changes."""
    kv_src = inventory.kv
    if not kv_src or not all(isinstance(x, GGUFValue) for x in kv_src.values()):
        kv_src = _source_kv(inventory)
    if kv_src is None:
        return None, False
    kv: dict[str, GGUFValue] = dict(kv_src)
    for k in ("split.no", "split.count", "split.tensors.count"):
        kv.pop(k, None)
    kv["general.quantization_version"] = GGUFValue.of(2, ValueType.UINT32)
    if ftype_value is not None:
        kv["general.file_type"] = GGUFValue.of(ftype_value, ValueType.UINT32)
    if imeta is not None:
        # quantize.cpp copies these through KV overrides; strings are cut at 127 bytes.
        kv["quantize.imatrix.file"] = GGUFValue.of(_cut127(imeta.path), ValueType.STRING)
        if imeta.dataset:
            kv["quantize.imatrix.dataset"] = GGUFValue.of(_cut127(imeta.dataset), ValueType.STRING)
        kv["quantize.imatrix.entries_count"] = GGUFValue.of(len(imeta.entries), ValueType.INT32)
        if imeta.chunks > 0:
            kv["quantize.imatrix.chunks_count"] = GGUFValue.of(imeta.chunks, ValueType.INT32)
    return serialized_header_size(kv, plans, _alignment(inventory)), True


def _cut127(s: str) -> str:
    b = s.encode("utf-8")
    return b[:127].decode("utf-8", "ignore") if len(b) > 127 else s


def _source_kv(inventory: TensorInventory) -> dict[str, Any] | None:
    src = str(inventory.source or "")
    if not src.endswith(".gguf") or not Path(src).is_file():
        return None

    return dict(read_header(src).kv)


# ------------------------------------------------------------------------------- emission


def quantize_args_for(engine: str, variant: QuantVariant, cat: Catalogue, *,
                      engine_build: int | None = None) -> list[str]:
    """The rule arguments that make ``engine``'s llama-quantize reproduce the expansion (for a
    mainline build where the last matching ``--tensor-type`` wins, in reverse order)."""
    pairs: list[tuple[str, str, str]] = [(r.pattern, cat.get(r.type).name, r.where) for r in variant.rules]
    if variant.default != MIXTURE:
        pairs.append((".*", cat.get(variant.default).name, variant.where))
    if engine == "mainline" and emits_reversed(engine_build):
        pairs.reverse()
    if not pairs:
        return []
    for pattern, _t, where in pairs:
        _compile(pattern, where)  # what the engines' std::regex rejects or reads differently
        if "=" in pattern:
            raise RecipeError(
                "llama-quantize splits rules at '=', so a pattern cannot contain '='",
                where=where,
                hint="rewrite the regex without '='",
            )
    if engine == "ik":
        for pattern, _t, where in pairs:
            if "," in pattern:
                raise RecipeError(
                    f"ik --custom-q splits rules at ',', so the pattern {pattern!r} cannot be passed",
                    where=where,
                    hint="write {1,2} as (a|aa) or split the rule in two",
                )
        return ["--custom-q", ",".join(f"{p}={t}" for p, t, _w in pairs)]
    out: list[str] = []
    for pattern, t, where in pairs:
        if pattern.lower() != pattern:
            raise RecipeError(
                f"llama.cpp lower-cases --tensor-type patterns, so {pattern!r} would change meaning",
                where=where,
                hint="write the pattern in lower case (tensor names are lower case)",
            )
        if any(c.isspace() for c in pattern):
            raise RecipeError("a --tensor-type pattern cannot contain spaces", where=where, hint="use \\s")
        out += ["--tensor-type", f"{pattern}={t}"]
    return out


def quantize_command(
    plan: QuantPlan,
    *,
    binary: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    imatrix: str | Path | None | Literal[False] = None,
    threads: int | None = None,
) -> list[str]:
    """The full ``llama-quantize`` argument list (never a shell string; see ``shell_join``).

    ``imatrix=None`` passes the imatrix the plan's size prediction assumed (``plan.imatrix``: its
    path string lands in the output header, so it must be the same); ``False`` passes none.
    """
    if imatrix is None:
        imatrix = plan.imatrix
    cmd = [str(binary)]
    if imatrix:
        cmd += ["--imatrix", str(imatrix)]
    cmd += list(plan.quantize_args)
    cmd += [str(input_path), str(output_path), plan.ftype]
    if threads:
        cmd.append(str(threads))
    return cmd


def shell_join(cmd: Sequence[str]) -> str:
    """A copy-pasteable rendering of an argument list."""
    return shlex.join(list(cmd))




# ------------------------------------------------------------------------------- views


def collapse(plan: QuantPlan) -> list[CollapsedRow]:
    """Rows of tensors sharing name (minus the layer), type and requested type, in file order."""
    groups: dict[tuple[str, str, str | None], list[TensorPlan]] = {}
    for t in plan.tensors:
        key_name = _LAYER_RE.sub("blk.*.", t.name) if t.layer is not None else t.name
        groups.setdefault((key_name, t.type, t.requested_type), []).append(t)
    rows = []
    for (key_name, typ, req), ts in groups.items():
        layers = sorted({t.layer for t in ts if t.layer is not None})
        name = (
            key_name.replace("blk.*.", f"blk.[{format_layers(layers)}].", 1)
            if layers and len(layers) > 1
            else ts[0].name
        )
        rows.append(
            CollapsedRow(
                pattern=name,
                count=len(ts),
                type=typ,
                requested_type=req,
                bytes=sum(t.bytes for t in ts),
                group=ts[0].group,
                note=ts[0].note,
            )  # fmt: skip
        )
    return rows


def group_totals(plan: QuantPlan) -> dict[str, int]:
    """Bytes per group (token_embd, output, attention, shared/routed experts, dense FFN, norms, other)."""
    out: dict[str, int] = {}
    for t in plan.tensors:
        out[t.group] = out.get(t.group, 0) + t.bytes
    return out


def layer_totals(plan: QuantPlan) -> dict[int, int]:
    """Bytes per layer."""
    out: dict[int, int] = {}
    for t in plan.tensors:
        if t.layer is not None:
            out[t.layer] = out.get(t.layer, 0) + t.bytes
    return out


