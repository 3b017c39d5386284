"""Lint: what is valid but probably wrong in a variant, with counts and first examples."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Literal

from quantforge.errors import RecipeError
from quantforge.regex_dialect import EngineRegex, RegexError
from quantforge.regex_dialect import check as check_engine_regex


def _examples(names: list[str]) -> tuple[str, ...]:
    return tuple(names[:5])


_BLK = re.compile(r"^blk\.\d+\.")
#: The MLA tensors whose presence and shape differ between the ik and mainline layouts.
_LAYOUT_KINDS = ("attn_kv_b.weight", "attn_k_b.weight", "attn_v_b.weight")


def tensor_kind(name: str) -> str:
    """The kind of a tensor: its name without the ``blk.N.`` prefix (``attn_output.weight``)."""
    return _BLK.sub("", name, count=1)


def _kinds_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _inside_word(name: str, start: int) -> bool:
    """Whether a match starting at ``start`` begins inside a word of the tensor's kind
    (``output\\.weight`` in ``blk.3.attn_output.weight``) rather than at the kind's start."""
    kind_start = len(name) - len(tensor_kind(name))
    return start > kind_start and (name[start - 1].isalnum() or name[start - 1] == "_")


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

    from quantforge.inventory import layout_load_error

    cannot = layout_load_error(engine, inventory) if hasattr(inventory, "layout") else None
    if cannot is not None:
        fix = 'set [model] layout = "mainline" (or plan a mainline-converted GGUF), or engine = "ik"'
        add("error", "layout", f"{cannot}; fix: {fix}", getattr(recipe, "path", None))

    from quantforge.inventory import base_model_of

    # Only for recipes set up to publish ([publish]); `card` and `publish` always say it. A base yet
    # to be made may still carry general.base_model, so only an existing one is judged.
    publishing = getattr(recipe, "publish", None) is not None and getattr(recipe, "model", None) is not None
    found, why = base_model_of(recipe) if publishing else ("", "")
    if found is None and why != "the base GGUF does not exist yet":
        add("warning", "no-base-model",
            f"the model card will have no base_model ({why}), so the Hub will not link the quant to its base "
            'model: set [publish] base_model = "org/name"', getattr(recipe, "path", None))  # fmt: skip

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
    exhausted = False
    layout = getattr(inventory, "layout", None)
    for k, (r, rx) in enumerate(compiled):
        matches = [(n, m.start()) for n in qnames if (m := rx.search(n)) is not None]
        hits = [n for n, _ in matches]
        if f"quant[{v.name}]" not in r.where:
            # inherited through `extends`: the child's own rules override them on purpose
            claimed.update(hits)
            continue
        if not hits:
            why = ""
            for kind in _LAYOUT_KINDS:
                stem = kind.removesuffix(".weight")
                if stem in r.pattern.replace("\\", "") and layout is not None and not any(
                    tensor_kind(n) == kind for n in qnames
                ):
                    why = f" ({stem} does not exist in the {layout} layout this model is planned in)"
            add("warning", "matches-nothing", f"rule {r.pattern!r} matches no quantizable tensor{why}", r.where)
        elif all(n in claimed for n in hits):
            add("warning", "shadowed", f"rule {r.pattern!r} is fully shadowed by earlier rules (all {len(hits)} matches taken)",
                r.where, hits)  # fmt: skip
        kinds: dict[str, int] = defaultdict(int)
        inside: dict[str, int] = defaultdict(int)
        for n, start in matches:
            kinds[tensor_kind(n)] += 1
            if _inside_word(n, start):
                inside[tensor_kind(n)] += 1
        if len(kinds) > 1 and inside and len(inside) < len(kinds):
            also = ", ".join(sorted(inside))
            add("warning", "multi-kind",
                f"rule {r.pattern!r} matches {len(kinds)} kinds of tensor: {_kinds_text(kinds)}; inside {also} it "
                f"matches the middle of a longer name, which is rarely meant (anchor it, e.g. ^{r.pattern}$ or a "
                f"leading \\.)", r.where, [n for n, s in matches if _inside_word(n, s)])  # fmt: skip
        claimed.update(hits)
        if not exhausted and qnames and len(claimed) == len(set(qnames)) and k + 1 < len(compiled):
            exhausted = True
            later = len(compiled) - k - 1
            add("warning", "nothing-left",
                f"after rule {r.pattern!r} no quantizable tensor is left to match: the {later} rule(s) after it "
                "and the default never apply", r.where)  # fmt: skip
    unclaimed = [n for n in qnames if n not in claimed]
    if layout is not None and v.rules:
        layout_default: dict[str, int] = defaultdict(int)
        for n in unclaimed:
            if tensor_kind(n) in _LAYOUT_KINDS:
                layout_default[tensor_kind(n)] += 1
        if layout_default:
            names = [n for n in unclaimed if tensor_kind(n) in layout_default]
            gets = f"the {ft.name} mixture" if v.default == MIXTURE else f"the default {v.default}"
            add("warning", "layout-default",
                f"{len(names)} tensors of the {layout} layout match no rule and get {gets}: "
                f"{_kinds_text(layout_default)} (write a rule for them, or plan the layout the recipe was written for)",
                getattr(v, "where", None), names)  # fmt: skip
            unclaimed = [n for n in unclaimed if n not in set(names)]
    if v.default == MIXTURE and unclaimed:
        add("warning", "no-default",
            f"{len(unclaimed)} quantizable tensors match no rule and get the {ft.name} mixture; set an explicit default",
            getattr(v, "where", None), unclaimed)  # fmt: skip

    try:
        plan = expand(recipe, variant, inventory, imatrix=imatrix)
    except RecipeError as exc:
        add("error", "expand-failed", exc.message, exc.where)
        return _sorted(out)
    from quantforge.plan import recipe_build

    build = recipe_build(recipe)
    if build is not None:
        # What the rules mean (first match wins, the replicated build) against what that build does.
        meant = expand(recipe, variant, inventory, imatrix=imatrix, engine_build=10**6)
        differ = [p.name for p, q in zip(plan.tensors, meant.tensors, strict=True) if p.type != q.type]
        if differ:
            add("warning", "engine-version",
                f"llama.cpp b{build} combines --tensor-type with its own mixture differently: {len(differ)} tensors "
                "get other types than the rules give them (see quantforge.plan._versions; the plan shows what that "
                "build writes)", getattr(v, "where", None), differ)  # fmt: skip
    # gpt-oss GGUFs carry their experts as MXFP4 straight from the checkpoint: both engines'
    # llama-quantize stop at the first quantized source tensor they would convert.
    requant = [
        p.name
        for p in plan.tensors
        if p.type != p.source_dtype and cat.find(p.source_dtype) is not None and cat.get(p.source_dtype).block_size > 1
    ]
    if requant:
        src = next(p.source_dtype for p in plan.tensors if p.name == requant[0])
        add("error", "requantize",
            f"{len(requant)} tensors are already {src} in the base and planned as other types: llama-quantize "
            f"refuses (\"requantizing from type {src} is disabled\"); keep them with a rule giving them {src}",
            getattr(v, "where", None), requant)  # fmt: skip
    imeta = _resolve_imatrix(recipe, imatrix)
    entries = frozenset(imeta.entries) if imeta else None
    if engine == "ik" and imeta is not None and imeta.fork == "mainline":
        add("error", "imatrix-fork",
            f"{imeta.path} is a GGUF-format imatrix (llama.cpp's); ik_llama.cpp's llama-quantize reads only the "
            "legacy .dat format: convert it with `llama-imatrix --in-file F --output-format dat` (llama.cpp) "
            "or ik_llama.cpp's convert_imatrix_gguf_to_dat.py", getattr(recipe, "path", None))  # fmt: skip
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
        if cat.needs_imatrix(p.type, tensor_name=p.name, ftype=ft.canonical) and (
            entries is None or not _imatrix_has(entries, p.name)
        ):
            need.append(p.name)
    if engine == "ik" and ft.needs_imatrix and imeta is None and not declared:
        # ik's quantize.cpp checks the ftype itself; mainline only refuses per tensor (above).
        add("error", "needs-imatrix",
            f"llama-quantize refuses the {ft.name} ftype without --imatrix (whatever the rules say)",
            getattr(v, "where", None))  # fmt: skip
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
