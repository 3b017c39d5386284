"""Lint: what is valid but probably wrong in a variant, with counts and first examples."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from quantforge.errors import RecipeError
from quantforge.regex_dialect import EngineRegex, RegexError
from quantforge.regex_dialect import check as check_engine_regex


def _examples(names: list[str]) -> tuple[str, ...]:
    return tuple(names[:5])


def lint(
    recipe: Any,
    variant: str | None,
    inventory: Any,
    *,
    imatrix: Any = None,
) -> list[Any]:
    """Findings for one variant (errors first). Never raises for a finding; raises only when
    the inventory or recipe cannot be read at all."""
    from quantforge.catalogue import catalogue
    from quantforge.catalogue import ftype as lookup_ftype
    from quantforge.plan import MIXTURE, LintFinding, _resolve_imatrix, expand, quantize_args_for
    from quantforge.plan._engine import skip_reason

    out: list[LintFinding] = []
    v = recipe.variant(variant)
    engine = recipe.engine
    cat = catalogue(engine)

    def add(
        severity: Literal["error", "warning"],
        code: str,
        message: str,
        where: str | None = None,
        names: list[str] | None = None,
    ) -> None:
        names = names or []
        out.append(
            LintFinding(
                severity=severity,
                code=code,
                message=message,
                where=where,
                count=len(names),
                examples=_examples(names),
            )  # fmt: skip
        )

    # unknown types / bad regexes (the loader normally stops on these; lint reports them all)
    bad = False
    compiled: list[tuple[Any, EngineRegex]] = []
    for r in v.rules:
        if cat.find(r.type) is None:
            close = cat.suggest(r.type)
            add(
                "error",
                "unknown-type",
                f"unknown quant type {r.type!r}" + (f" (did you mean {close[0]}?)" if close else ""),
                r.where,
            )
            bad = True
        try:
            compiled.append((r, check_engine_regex(r.pattern)))
        except RegexError as exc:
            add("error", "bad-regex", f"invalid regex {r.pattern!r}: {exc}", r.where)
            bad = True
    if v.default != MIXTURE and cat.find(v.default) is None:
        add("error", "unknown-type", f"unknown default type {v.default!r}", getattr(v, "where", None))
        bad = True
    try:
        quantize_args_for(engine, v, cat)
    except RecipeError as exc:
        add("error", "not-emittable", exc.message, exc.where)
        bad = True
    if bad:
        return _sorted(out)

    ft = lookup_ftype(engine, v.ftype)
    if ft.default_type is None or cat.get(ft.default_type).block_size == 1:
        add("error", "ftype-not-quantized",
            f"ftype {ft.name} is not a quantized type: llama-quantize ignores every rule and writes {ft.default_type}",
            getattr(v, "where", None))  # fmt: skip

    quantizable = [
        t for t in inventory.tensors if skip_reason(engine, t.name, tuple(t.shape), t.dtype) is None
    ]
    qnames = [t.name for t in quantizable]

    # rules matching nothing / fully shadowed by earlier rules
    claimed: set[str] = set()
    for r, rx in compiled:
        hits = [n for n in qnames if rx.search(n)]
        if f"quant[{v.name}]" not in r.where:
            # inherited through `extends`: the child's own rules override them on purpose
            claimed.update(hits)
            continue
        if not hits:
            add("warning", "matches-nothing", f"rule {r.pattern!r} matches no quantizable tensor", r.where)
        elif all(n in claimed for n in hits):
            add("warning", "shadowed", f"rule {r.pattern!r} is fully shadowed by earlier rules (all {len(hits)} matches taken)",
                r.where, hits)  # fmt: skip
        claimed.update(hits)
    unclaimed = [n for n in qnames if n not in claimed]
    if v.default == MIXTURE and unclaimed:
        add("warning", "no-default",
            f"{len(unclaimed)} quantizable tensors match no rule and get the {ft.name} mixture; set an explicit default",
            getattr(v, "where", None), unclaimed)  # fmt: skip

    try:
        plan = expand(recipe, variant, inventory, imatrix=imatrix)
    except RecipeError as exc:
        add("error", "expand-failed", exc.message, exc.where)
        return _sorted(out)
    imeta = _resolve_imatrix(recipe, imatrix)
    entries = frozenset(imeta.entries) if imeta else None
    # A recipe that names an imatrix we cannot read here (hf://, or one to compute from a
    # corpus) will have one at build time: assume it covers every tensor.
    declared = imatrix is None and _declares_imatrix(recipe)

    # fallbacks, grouped by (rule, requested -> written, reason)
    rule_where = {f"rules[{i}]": r.where for i, r in enumerate(v.rules)}
    rule_where["default"] = getattr(v, "where", None)
    fb: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for p in plan.tensors:
        if p.requested_type is not None and p.type != p.requested_type and p.note:
            fb[(p.rule, p.requested_type, p.type, p.note.split(":")[0])].append(p.name)
    for (rule, req, got, why), names in fb.items():
        where = rule_where.get(rule)
        if why.startswith("fallback"):
            msg = f"{req} falls back to {got} on {len(names)} tensors (row length not a multiple of {cat.get(req).row_multiple})"
            add("warning", "fallback", msg, where, names)
        elif "token_embd" in why:
            add("warning", "interleaved-token-embd", f"token_embd cannot be row-interleaved: {req} is written as {got}",
                where, names)  # fmt: skip
        else:
            add("warning", "deinterleaved",
                f"{req} becomes {got} on {len(names)} tensors (row count not a multiple of {cat.get(req).interleave})",
                where, names)  # fmt: skip

    by_name = {p.name: p for p in plan.tensors}
    # imatrix refusals
    from quantforge.plan import _imatrix_has

    need: list[str] = []
    for p in plan.tensors:
        if p.requested_type is None or p.type == p.source_dtype:
            continue
        if entries is None and declared:
            continue
        if cat.needs_imatrix(p.type, tensor_name=p.name, ftype=ft.name) and (
            entries is None or not _imatrix_has(entries, p.name)
        ):
            need.append(p.name)
    if need:
        t0 = by_name[need[0]].type
        add("error", "needs-imatrix",
            f"{len(need)} tensors get very-low-bit types (e.g. {t0}) without importance-matrix data: llama-quantize refuses",
            None, need)  # fmt: skip

    if engine == "ik":
        # up/gate expert types must match per layer for ik's fused -fmoe kernel
        per_layer: dict[int, dict[str, str]] = defaultdict(dict)
        for p in plan.tensors:
            if p.layer is not None and (".ffn_up_exps." in p.name or ".ffn_gate_exps." in p.name):
                per_layer[p.layer]["up" if ".ffn_up_exps." in p.name else "gate"] = p.type
        diff = [f"blk.{i}" for i, d in sorted(per_layer.items()) if len(set(d.values())) > 1]
        if diff:
            add("warning", "fmoe-mismatch", "ffn_up_exps and ffn_gate_exps differ in type: ik's fused -fmoe kernel is not used",
                None, diff)  # fmt: skip
        # interleaved type without CUDA matmul on a GPU-placed tensor
        slow = [
            p.name
            for p in plan.tensors
            if p.place == "gpu" and cat.get(p.type).interleave > 1 and not cat.get(p.type).cuda_matmul
        ]
        if slow:
            add("warning", "no-cuda-kernel",
                f"{by_name[slow[0]].type} has no CUDA matmul: these GPU-placed tensors will run on the CPU", None, slow)  # fmt: skip
    return _sorted(out)


def _declares_imatrix(recipe: Any) -> bool:
    spec = getattr(recipe, "imatrix", None)
    return spec is not None and bool(getattr(spec, "file", None) or getattr(spec, "corpus", None))


def _sorted(out: list[Any]) -> list[Any]:
    return sorted(out, key=lambda f: 0 if f.severity == "error" else 1)
