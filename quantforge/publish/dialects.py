"""Recipe dialects other tools and publishers use, read into quantforge recipes and written back.

* ik_llama.cpp ``--custom-q "re1=t1,re2=t2"``: the argument itself, or the multi-line form
  published in model cards (``custom="`` ... ``"``, one rule a line, ``#`` comments), which a
  shell pipeline (``grep -v '^#' | sed -Ez 's:\\n+:,:g'``) turns into the argument;
* llama.cpp ``--tensor-type name=type`` (repeated) and ``--tensor-type-file FILE`` (the same
  ``name=type`` items separated by spaces or newlines; patterns are lower-cased by the tool);
* Thireus' GGUF-Tool-Suite ``.recipe`` files: ``^regex$=type`` lines grouped under ``#`` headers,
  ``=f32`` lines for the tensors that stay f32, and a summary in comments.

All three are ordered first-match-wins rule lists over tensor names (``std::regex_search``), so
they map one to one onto a variant's ``rules``; what no rule matches gets the ftype's own mixture
in llama-quantize, which is what ``default = "mixture"`` plans. Rules that can only ever meet
tensors llama-quantize copies unchanged (norms, biases, the router) are dropped when the model is
known, and counted.
"""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantforge.errors import UsageError
from quantforge.inventory import Layout

Dialect = Literal["custom-q", "tensor-type", "tensor-type-file", "thireus"]
DIALECTS: tuple[Dialect, ...] = ("custom-q", "tensor-type", "tensor-type-file", "thireus")
_ENGINE_OF: dict[Dialect, str] = {"custom-q": "ik", "tensor-type": "mainline", "tensor-type-file": "mainline",
                                  "thireus": "ik"}  # fmt: skip


class DialectRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: str
    type: str
    line: int  # 1-based line of the source text it came from
    comment: str | None = None  # the nearest '#' header above it


class ParsedDialect(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dialect: Dialect
    rules: tuple[DialectRule, ...]


def detect_dialect(text: str, name: str = "") -> Dialect:
    """Which dialect ``text`` is written in (from its file name and content)."""
    if name.endswith(".recipe") or "Thireus" in text[:500] or re.search(r"(?m)^\^[^=\s]+\$=\w+\s*$", text):
        return "thireus"
    if "--tensor-type" in text:
        return "tensor-type"
    if "custom=" in text or "--custom-q" in text or ("," in text and "\n" not in text.strip()):
        return "custom-q"
    return "tensor-type-file" if re.search(r"\S+=\S+\s+\S+=\S+", text) and "#" not in text else "custom-q"


def parse_dialect(text: str, dialect: Dialect, *, where: str = "<text>") -> ParsedDialect:
    """The ordered rules of ``text`` in ``dialect``; ``UsageError`` naming the line of a bad item."""
    items: list[tuple[str, int, str | None]] = []  # (item, line, header)
    if dialect in ("custom-q", "thireus"):
        header: str | None = None
        body = text
        m = re.search(r"""custom=(["'])(.*?)\1""", text, re.S)
        if dialect == "custom-q" and m:
            # custom="..." as published: rules start on the line of the opening quote
            body = "\n" * text[: m.start(2)].count("\n") + m.group(2)
        else:
            m2 = re.search(r"""--custom-q\s+(["']?)(.+?)\1(?:\s|$)""", text, re.S)
            if dialect == "custom-q" and m2:
                body = "\n" * text[: m2.start(2)].count("\n") + m2.group(2)
        for n, raw in enumerate(body.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                header = line.lstrip("#").strip() or header
                continue
            for item in line.split(","):
                if item.strip():
                    items.append((item.strip(), n, header))
    else:
        found = list(re.finditer(r"\S+", text))
        tokens = [m.group(0) for m in found]
        n_line = {i: text.count("\n", 0, m.start()) + 1 for i, m in enumerate(found)}
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok == "--tensor-type":
                if i + 1 >= len(tokens):
                    raise UsageError("--tensor-type without a value", where=f"{where}:{n_line[i]}",
                                     hint="write --tensor-type name=type")  # fmt: skip
                i += 1
                tok = tokens[i]
            elif dialect == "tensor-type" and tok.startswith("-"):
                i += 2  # another llama-quantize option and its value
                continue
            elif dialect == "tensor-type" and "=" not in tok:
                i += 1  # the binary, the input/output files, the ftype
                continue
            items.append((tok.strip("'\""), n_line[i], None))
            i += 1
    rules = []
    for item, at, header in items:
        pattern, sep, typ = item.rpartition("=")
        if not sep or not pattern or not typ:
            raise UsageError(f"{item!r} is not a regex=type rule", where=f"{where}:{at}",
                             hint="write each rule as regex=type")  # fmt: skip
        if dialect in ("tensor-type", "tensor-type-file"):
            pattern = pattern.lower()  # llama-quantize's parse_tensor_type lower-cases the name
        rules.append(DialectRule(pattern=pattern, type=typ.strip(), line=at, comment=header))
    if not rules:
        raise UsageError(f"no rules found in this {dialect} text", where=where, hint="give the rule list itself")
    return ParsedDialect(dialect=dialect, rules=tuple(rules))


class DialectImport(BaseModel):
    """A dialect file turned into a quantforge recipe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dialect: Dialect
    engine: str
    text: str  # the recipe TOML
    rules: int
    #: Rules that can meet only tensors llama-quantize never quantizes (norms, biases ...): dropped.
    dropped: tuple[str, ...] = ()
    path: str | None = None


def import_dialect(
    source: str,
    *,
    model: str,
    dialect: Dialect | None = None,
    engine: str | None = None,
    layout: str | None = None,
    ftype: str | None = None,
    name: str | None = None,
    output: str | Path | None = None,
    force: bool = False,
) -> DialectImport:
    """Read a ``--custom-q`` / ``--tensor-type`` / ``--tensor-type-file`` / Thireus ``.recipe`` file
    and write a recipe for ``model`` (any SOURCE: shipped id, config.json, GGUF, hf://) with its
    rules in order, ``default = "mixture"`` under ``ftype`` for whatever they leave unmatched."""
    import tomlkit

    from quantforge.catalogue import catalogue
    from quantforge.catalogue import ftype as lookup_ftype
    from quantforge.fsutil import atomic_write_text
    from quantforge.inventory import load_source
    from quantforge.paths import MAX_RECIPE_BYTES, read_input_text, refuse_input_as_output
    from quantforge.plan._engine import skip_reason
    from quantforge.recipe import QuantSection, RuleSpec, parse_recipe, variant_table
    from quantforge.regex_dialect import RegexError
    from quantforge.regex_dialect import check as check_engine_regex

    p = Path(source)
    if output is not None:
        # checked before anything is read: an input is never an output, with --force or not
        inputs = [("the rule file it is imported from", source)]
        if not model.startswith("hf://") and Path(model).exists():
            inputs.append(("the model it is imported for", model))
        refuse_input_as_output(Path(output), inputs, field="--output", hint="write the recipe to a new .toml file")
    # a regular file of bounded size, never a FIFO or device (opening one would block)
    text = read_input_text(p, what="rule file", max_bytes=MAX_RECIPE_BYTES, error=UsageError)
    dia = dialect or detect_dialect(text, p.name)
    parsed = parse_dialect(text, dia, where=source)
    rx_of: dict[str, Any] = {}
    for r in parsed.rules:
        try:  # llama-quantize matches with std::regex: the one dialect checker decides
            rx_of[r.pattern] = check_engine_regex(r.pattern)
        except RegexError as exc:
            raise UsageError(f"bad match regex {r.pattern!r}: {exc}", where=f"{source}:{r.line}",
                             hint="fix the regex in the rule file") from None
    eng = engine or _ENGINE_OF[dia]
    src = load_source(model, engine=eng, layout=layout)  # type: ignore[arg-type]
    inferred = layout is None and src.kind in ("shipped", "config") and src.inventory.layout is not None
    if inferred and (meant := rules_layout(parsed.rules)) not in (None, src.inventory.layout):
        # A synthesized DeepSeek/Kimi inventory can be either layout; the rules say which BF16
        # they were written against (V3.1-Terminus recipes name attn_v_b and no attn_kv_b).
        src = load_source(model, engine=eng, layout=meant)  # type: ignore[arg-type]
    inv = src.inventory
    cat = catalogue(eng)
    quantizable = [t.name for t in inv.tensors if skip_reason(eng, t.name, tuple(t.shape), t.dtype) is None]
    kept: list[DialectRule] = []
    dropped: list[str] = []
    for r in parsed.rules:
        rx = rx_of[r.pattern]
        if not any(rx.search(n) for n in quantizable) and any(rx.search(t.name) for t in inv.tensors):
            dropped.append(f"{r.pattern}={r.type}")  # only ever meets tensors that are copied as they are
            continue
        kept.append(r)
    counts: dict[str, int] = defaultdict(int)
    for r in kept:
        if cat.find(r.type) is not None and cat.get(r.type).block_size > 1:
            counts[cat.get(r.type).name] += 1
    ft = ftype or _ftype_for(eng, counts)
    lookup_ftype(eng, ft)  # type: ignore[arg-type] # a bad --ftype is a RecipeError here
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Imported by `quantforge recipe import` from {p.name} ({dia}); rules in their order,"))
    doc.add(tomlkit.comment(f"first match wins; unmatched tensors get the {ft} mixture as in llama-quantize."))
    if dropped:
        doc.add(tomlkit.comment(f"{len(dropped)} rule(s) for tensors llama-quantize never quantizes were left out."))
    doc.add(tomlkit.nl())
    msec = tomlkit.table()
    if src.kind == "shipped":
        msec.add("id", inv.source)
    else:
        msec.add("base", model)
    msec.add("engine", eng)
    if inv.layout is not None:
        msec.add("layout", inv.layout)
    doc.add("model", msec)
    section = QuantSection(
        name=name or p.stem.split(".")[0][:64] or "imported",
        ftype=ft,
        default="mixture",
        description=f"Imported from {p.name} ({dia})",
        rules=[RuleSpec(match=r.pattern, type=r.type, comment=r.comment) for r in kept],
    )
    quants = tomlkit.aot()
    quants.append(variant_table(section))
    doc.add("quant", quants)
    out_text = tomlkit.dumps(doc)
    parse_recipe(out_text, path=str(output) if output else None)  # validates what we wrote
    path = None
    if output is not None:
        out = Path(output)
        if out.exists() and not force:
            raise UsageError(f"{out} exists", where="--output", hint="pass --force to overwrite it")
        atomic_write_text(out, out_text)
        path = str(out)
    return DialectImport(dialect=dia, engine=eng, text=out_text, rules=len(kept), dropped=tuple(dropped), path=path)


def rules_layout(rules: Sequence[DialectRule]) -> Layout | None:
    """The MLA layout a rule file was written for, where its rules say it: attn_v_b named without
    attn_kv_b is the mainline layout, attn_kv_b without attn_k_b/attn_v_b the legacy one; None
    when they do not tell (both, or neither, or only attn_k_b, which ik's layout also has)."""
    text = " ".join(r.pattern.replace("\\", "") for r in rules)
    kv_b, v_b, k_b = "attn_kv_b" in text, "attn_v_b" in text, "attn_k_b" in text
    if v_b and not kv_b:
        return "mainline"
    if kv_b and not (k_b or v_b):
        return "legacy"
    return None


def _ftype_for(engine: str, counts: dict[str, int]) -> str:
    """The ftype named after the type most rules give (``iq2_k`` rules -> ``IQ2_K``), else Q8_0."""
    from quantforge.catalogue import ftypes

    table = ftypes(engine)
    for typ, _n in sorted(counts.items(), key=lambda kv: -kv[1]):
        for f in table.values():
            if f.default_type == typ and f.listed and f.alias_of is None:
                return f.name
    return "Q8_0"


# -- export -------------------------------------------------------------------------------------


def export_dialect(recipe: Any, variant: str | None, dialect: Dialect, *, plan: Any = None) -> str:
    """The variant's rules in ``dialect``.

    ``custom-q`` and ``tensor-type`` give exactly what quantforge passes to llama-quantize (the
    recipe's rules and its default as a last ``.*`` rule); ``tensor-type-file`` the same items one
    a line; ``thireus`` is written from a ``plan`` (required): one anchored ``^...$=type`` line per
    tensor kind and type, layer ranges compressed, norms and biases as ``=f32`` lines.
    """
    from quantforge.catalogue import catalogue
    from quantforge.plan import quantize_args_for

    v = recipe.variant(variant)
    if dialect == "custom-q":
        args = quantize_args_for("ik", v, catalogue("ik"))
        return args[1] if args else ""
    if dialect in ("tensor-type", "tensor-type-file"):
        args = quantize_args_for("mainline", v, catalogue("mainline"))
        items = args[1::2]
        if dialect == "tensor-type":
            return " ".join(shlex.join(["--tensor-type", it]) for it in items)
        return "\n".join(items) + ("\n" if items else "")
    if plan is None:
        raise UsageError("a Thireus .recipe lists every tensor: it is written from the expanded plan",
                         where="export", hint="expand the variant against its model first")  # fmt: skip
    return _thireus_text(plan)


def _thireus_text(plan: Any) -> str:
    from quantforge.recipe import layers_regex

    by_kind: dict[tuple[str, bool], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    order: list[tuple[str, bool]] = []
    for t in plan.tensors:
        m = re.match(r"^blk\.(\d+)\.(.+)$", t.name)
        key = (m.group(2), True) if m else (t.name, False)
        if key not in by_kind:
            order.append(key)
        by_kind[key][t.type].append(int(m.group(1)) if m else -1)
    lines = [f"## Quant mix recipe written by quantforge for {plan.name} ({plan.engine} {plan.ftype})",
             f"# tensor data {plan.tensor_bytes / 2**30:.3f} GiB, of which row metadata "
             f"{plan.row_meta_bytes / 2**30:.3f} GiB", ""]  # fmt: skip
    for kind, layered in order:
        for typ, layers in sorted(by_kind[(kind, layered)].items(), key=lambda kv: min(kv[1])):
            esc = re.escape(kind)
            if layered:
                alt = layers_regex(layers)
                lines.append(f"^blk\\.{'(' + alt + ')' if '|' in alt else alt}\\.{esc}$={typ}")
            else:
                lines.append(f"^{esc}$={typ}")
    return "\n".join(lines) + "\n"


def rules_of(text: str, dialect: Dialect) -> list[tuple[str, str]]:
    """``(pattern, type)`` pairs of a dialect text, for comparisons."""
    return [(r.pattern, r.type) for r in parse_dialect(text, dialect).rules]


__all__ = [
    "DIALECTS",
    "Dialect",
    "DialectImport",
    "DialectRule",
    "ParsedDialect",
    "detect_dialect",
    "export_dialect",
    "import_dialect",
    "parse_dialect",
    "rules_of",
]

