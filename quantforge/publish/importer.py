"""``recipe import``: a recipe that reproduces an existing quant's per-tensor types; ``recipe diff``.

Only the GGUF header is read (local file, split set, or ``hf://`` with range requests, through
``quantforge.inventory``). Each tensor's *written* type becomes a rule type: a type the engine
wrote after a fallback (iq4_ks → iq4_nl on a 576-wide row) is requested as written, which
re-expands to itself. Tensors are grouped by kind (the name without ``blk.N.``); per kind the
layers of each type are compressed into ranges (``layers = "3-60"``). The most common type
overall becomes ``default`` and needs no rule. The importer expands its own result against the
file's shapes and reports any tensor whose type would differ.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge.errors import UsageError

_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImportedRule(_Frozen):
    match: str
    layers: str | None = None
    type: str
    tensors: int


class ImportResult(_Frozen):
    source: str
    engine: str
    name: str
    ftype: str
    default: str
    rules: tuple[ImportedRule, ...]
    text: str  # the recipe TOML
    path: str | None = None
    n_tensors: int
    #: tensors whose re-expanded type differs from the file's (empty: exact)
    mismatches: tuple[str, ...] = ()


def layers_spec(layers: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5,9"``."""
    nums = sorted(set(layers))
    runs: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(f"{start}-{prev}" if prev > start else f"{start}")
        if n is not None:
            start = prev = n
    return ",".join(runs)


def _kind_match(kind: str, *, layered: bool) -> str:
    esc = re.escape(kind)
    return f"{esc}$" if layered else rf"^blk\.\d+\.{esc}$"


def _quantizable(shape: Sequence[int]) -> bool:
    return len([d for d in shape if d > 1]) >= 2 or len(shape) >= 2 and shape[1] > 1


def _engine_for(types: set[str]) -> str:
    from quantforge.catalogue import catalogue

    main = catalogue("mainline")
    return "mainline" if all(t in main for t in types) else "ik"


def _ftype_name(engine: str, value: Any, default: str) -> str:
    from quantforge.catalogue import ftypes

    value = getattr(value, "value", value)
    table = ftypes(engine)
    for name, ft in table.items():
        if ft.value is not None and ft.value == value and ft.listed:
            return name
    # No file_type (or an unknown one): the ftype whose base type is the default.
    for name, ft in table.items():
        if ft.default_type == default and ft.listed:
            return name
    return "Q8_0"


def rules_for(tensors: Sequence[tuple[str, tuple[int, ...], str]]) -> tuple[str, list[ImportedRule]]:
    """(default type, rules) reproducing ``(name, shape, written type)`` for every quantizable tensor."""
    quant = [(n, s, t) for n, s, t in tensors if _quantizable(s)]
    if not quant:
        raise UsageError("the file has no quantizable (2-D) tensor", where="SOURCE")
    counts = Counter(t for _, _, t in quant)
    default = counts.most_common(1)[0][0]
    rules: list[ImportedRule] = []
    by_kind: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    kinds_order: list[str] = []
    for name, _shape, typ in quant:
        m = _BLK.match(name)
        if m is None:
            if typ != default:
                rules.append(ImportedRule(match=f"^{re.escape(name)}$", type=typ, tensors=1))
            continue
        kind = m.group(2)
        if kind not in by_kind:
            kinds_order.append(kind)
        by_kind[kind][typ].append(int(m.group(1)))
    for kind in kinds_order:
        per_type = by_kind[kind]
        # The type covering most layers of this kind takes a kind-wide rule (or the default);
        # the others get layer ranges placed before it (first match wins).
        main_type = max(per_type, key=lambda t: (len(per_type[t]), t == default))
        for typ, layers in sorted(per_type.items(), key=lambda kv: min(kv[1])):
            if typ == main_type:
                continue
            rules.append(ImportedRule(match=_kind_match(kind, layered=True), layers=layers_spec(layers), type=typ,
                                      tensors=len(layers)))
        if main_type != default:
            rules.append(ImportedRule(match=_kind_match(kind, layered=False), type=main_type,
                                      tensors=len(per_type[main_type])))
    return default, rules


def import_recipe(
    source: str,
    *,
    name: str | None = None,
    engine: str | None = None,
    output: str | Path | None = None,
    force: bool = False,
) -> ImportResult:
    """Read ``source``'s header and write (or return) a recipe reproducing its tensor types."""
    import tomlkit

    from quantforge.inventory import load_source
    from quantforge.recipe import QuantSection, RuleSpec, parse_recipe, variant_table

    if output is not None and not source.startswith("hf://"):
        from quantforge.paths import refuse_input_as_output

        # before the source is read: whatever it turns out to be, it is never overwritten
        refuse_input_as_output(Path(output), [("the quant it is imported from", source)], field="--output",
                               hint="write the recipe to a new .toml file")
    src = load_source(source, engine=engine)  # type: ignore[arg-type]
    if src.recipe is not None:
        raise UsageError(f"{_display(source)} is already a recipe", where="SOURCE",
                         hint="give a quantized GGUF (local, any shard, or hf://) to import")  # fmt: skip
    if not src.is_quant:
        raise UsageError(
            f"{_display(source)} is not a quant (every tensor is f32/f16/bf16): there are no types to import",
            where="SOURCE",
            hint="give a quantized GGUF (local, any shard, or hf://org/repo/file.gguf)",
        )
    inv = src.inventory
    tensors = [(t.name, tuple(t.shape), t.dtype) for t in inv.tensors]
    default, rules = rules_for(tensors)
    eng = engine or inv.fork or _engine_for({t for _, _, t in tensors})
    kv = inv.kv or {}
    model_name = _kv(kv, "general.name") or Path(str(source)).name.removesuffix(".gguf")
    ftype = _ftype_name(eng, _kv(kv, "general.file_type"), default)
    variant_name = name or _variant_name(str(source), ftype)

    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Imported by `quantforge recipe import` from {_display(source)}"))
    doc.add(tomlkit.comment(f"{len(tensors)} tensors; written types reproduced exactly, fallbacks requested as written."))
    doc.add(tomlkit.comment("Point [model] base at the BF16/F16 GGUF of this model (or of a fine-tune of it)."))
    doc.add(tomlkit.nl())
    model = tomlkit.table()
    model.add("name", str(model_name))
    model.add("base", "model-BF16.gguf")
    model.add("engine", eng)
    doc.add("model", model)
    im_file = _kv(kv, "quantize.imatrix.file")
    if im_file:
        imx = tomlkit.table()
        imx.add(tomlkit.comment(f"the source was made with an importance matrix ({im_file}, "
                                f"dataset {_kv(kv, 'quantize.imatrix.dataset') or 'unknown'})"))
        imx.add("file", Path(str(im_file)).name)
        chunks = _kv(kv, "quantize.imatrix.chunks_count")
        if isinstance(chunks, int) and not isinstance(chunks, bool) and chunks > 0:  # metadata may be anything
            imx.add("chunks", chunks)
        doc.add("imatrix", imx)
    section = QuantSection(
        name=variant_name,
        ftype=ftype,
        default=default,
        description=f"Imported from {_display(source)}",
        rules=[RuleSpec(match=r.match, layers=r.layers, type=r.type) for r in rules],
    )
    quants = tomlkit.aot()
    quants.append(variant_table(section))
    doc.add("quant", quants)
    text = tomlkit.dumps(doc)
    recipe = parse_recipe(text, path=str(output) if output else None)  # validates what we wrote

    mismatches = _self_check(recipe, variant_name, inv)
    path = None
    if output is not None:
        from quantforge.fsutil import atomic_write_text

        out = Path(output)
        if out.exists() and not force:
            raise UsageError(f"{out} exists", where="--output", hint="pass --force to overwrite it")
        atomic_write_text(out, text, what="recipe")
        path = str(out)
    return ImportResult(source=_display(source), engine=eng, name=variant_name, ftype=ftype, default=default,
                        rules=tuple(rules), text=text, path=path, n_tensors=len(tensors),
                        mismatches=tuple(mismatches))


def _self_check(recipe: Any, variant: str, inv: Any) -> list[str]:
    """Expand against the file's own shapes (as an F16 source) and list tensors that would differ."""
    from quantforge.plan import expand

    src = inv.model_copy(update={"tensors": tuple(
        t.model_copy(update={"dtype": "f16" if _quantizable(t.shape) else "f32"}) for t in inv.tensors)})
    plan = expand(recipe, variant, src, imatrix=False)
    want = {t.name: t.dtype for t in inv.tensors}
    return [f"{t.name}: {t.type} != {want[t.name]}" for t in plan.tensors if t.type != want.get(t.name)]


def _kv(kv: dict[str, Any], key: str) -> Any:
    v = kv.get(key)
    return getattr(v, "value", v)


def _display(source: str | Path) -> str:
    s = str(source)
    return s if s.startswith("hf://") else Path(s).name


def variant_name_of(source: str, ftype: str) -> str:
    """The variant a published file's name says it is (``Model-IQ2_K_R4-00001-of-00005.gguf`` ->
    ``IQ2_K_R4``), else ``ftype``."""
    return _variant_name(source, ftype)


def _variant_name(source: str, ftype: str) -> str:
    stem = Path(source.split("@")[0]).name.removesuffix(".gguf")
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    m = re.search(r"[-.]((?:IQ|Q|F|BF)\d[\w]*?)$", stem, re.IGNORECASE)
    return m.group(1) if m else ftype


# -- diff ---------------------------------------------------------------------------------


class TensorDiff(_Frozen):
    name: str
    type_a: str | None
    type_b: str | None
    bytes_a: int | None
    bytes_b: int | None


class DiffGroup(_Frozen):
    pattern: str  # blk.*.ffn_down.weight
    layers: str | None
    type_a: str | None
    type_b: str | None
    count: int
    bytes_a: int
    bytes_b: int


class QuantDiff(_Frozen):
    a: str
    b: str
    tensors: tuple[TensorDiff, ...]
    groups: tuple[DiffGroup, ...]
    n_same: int
    bytes_a: int  # total tensor bytes of A
    bytes_b: int
    delta_bytes: int  # of the differing tensors, B - A


def diff_quants(a: str, b: str) -> QuantDiff:
    """Per-tensor type/byte differences between two quants (headers only), grouped by kind and type pair."""
    from quantforge.inventory import load_inventory

    ia, ib = load_inventory(a), load_inventory(b)
    ta = {t.name: t for t in ia.tensors}
    tb = {t.name: t for t in ib.tensors}
    diffs: list[TensorDiff] = []
    same = 0
    for name in list(ta) + [n for n in tb if n not in ta]:
        x, y = ta.get(name), tb.get(name)
        if x is not None and y is not None and x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape):
            same += 1
            continue
        diffs.append(TensorDiff(name=name, type_a=x.dtype if x else None, type_b=y.dtype if y else None,
                                bytes_a=_bytes(ia, x) if x else None, bytes_b=_bytes(ib, y) if y else None))
    groups: dict[tuple[str, str | None, str | None], list[tuple[int | None, TensorDiff]]] = defaultdict(list)
    for d in diffs:
        m = _BLK.match(d.name)
        key = (f"blk.*.{m.group(2)}" if m else d.name, d.type_a, d.type_b)
        groups[key].append((int(m.group(1)) if m else None, d))
    out_groups = []
    for (pattern, t1, t2), items in groups.items():
        layers = [n for n, _ in items if n is not None]
        out_groups.append(DiffGroup(
            pattern=pattern, layers=layers_spec(layers) if layers else None, type_a=t1, type_b=t2, count=len(items),
            bytes_a=sum(d.bytes_a or 0 for _, d in items), bytes_b=sum(d.bytes_b or 0 for _, d in items)))
    return QuantDiff(
        a=_display(a), b=_display(b), tensors=tuple(diffs), groups=tuple(out_groups), n_same=same,
        bytes_a=sum(_bytes(ia, t) for t in ia.tensors), bytes_b=sum(_bytes(ib, t) for t in ib.tensors),
        delta_bytes=sum((d.bytes_b or 0) - (d.bytes_a or 0) for d in diffs),
    )


def _bytes(inv: Any, t: Any) -> int:
    from quantforge.catalogue import catalogue

    q = catalogue("ik").find(t.dtype) or catalogue("mainline").find(t.dtype)
    return q.tensor_bytes(t.shape) if q is not None else 0
