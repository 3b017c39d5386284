"""The model card (``README.md``) rendered from what was built and measured.

``CardData``/``VariantCardRow`` are a plain data model; ``card_data_from_manifests`` fills
them from the recipe and the build/eval manifests, ``render_card`` turns them into Markdown
with YAML front matter the Hub understands (validated with huggingface_hub's ``ModelCard``).
Numbers come only from the data: a missing measurement is printed as "not measured". Commands
carry no local paths and no token: paths become their base names (``model-F16.gguf``,
``imatrix.dat``) so a reader can run them from the folder holding those files.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quantforge.errors import PublishError
from quantforge.inventory import base_model_from_gguf, base_model_of

NOT_MEASURED = "not measured"
GIB = 1024**3


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FitCell(_Frozen):
    """One hardware target for one variant: the largest context it fits at (None: does not fit)."""

    target: str
    ctx: int | None
    #: The planner's verdict at ``at_ctx``: fits | fits_smaller_ctx | does_not_fit (None: not planned).
    verdict: str | None = None
    at_ctx: int | None = None


class RunCommand(_Frozen):
    target: str
    ctx: int | None = None
    command: str


class VariantCardRow(_Frozen):
    name: str
    description: str | None = None
    files: tuple[str, ...]  # paths in the repo
    bytes: int  # of the file(s)
    #: Tensor data (ik's per-row scales included), as llama.cpp's load log and model cards print it.
    tensor_bytes: int | None = None
    #: ik's per-row metadata inside ``tensor_bytes`` (gguf-py's and Thireus' sizes leave it out).
    row_meta_bytes: int | None = None
    bpw: float | None = None
    ppl: float | None = None
    ppl_err: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    #: What ``quantforge fit`` predicted for a solved variant (its manifest's ``fit`` section).
    kld_predicted: float | None = None
    fits: tuple[FitCell, ...] = ()
    command: tuple[str, ...] = ()  # the portable llama-quantize command (argv)
    types: tuple[str, ...] = ()  # the tensor types the file holds
    labels: tuple[str, ...] = ()  # compatibility labels
    run_commands: tuple[RunCommand, ...] = ()


class ImatrixProvenance(_Frozen):
    file: str | None = None  # base name
    sha256: str | None = None
    dataset: str | None = None  # base name of the calibration corpus
    chunks: int | None = None
    entries: int | None = None


class FitSetup(_Frozen):
    """How the fit table was planned: the context, the run settings, the targets (name, summary)."""

    ctx: int
    settings: str  # the KV/batch flags the plan assumes, as on the command line
    targets: tuple[tuple[str, str], ...]
    note: str | None = None  # why nothing was planned (the planner could not read the model)


class Plot(_Frozen):
    title: str
    path: str  # relative to the repo root


class CardData(_Frozen):
    model_name: str
    repo: str | None = None
    base_model: str | None = None
    license: str | None = None
    quantized_by: str | None = None
    pipeline_tag: str | None = "text-generation"
    library_name: str = "gguf"
    tags: tuple[str, ...] = ()
    engine: str = "ik"
    recipe_sha256: str | None = None
    variants: tuple[VariantCardRow, ...]
    imatrix: ImatrixProvenance | None = None
    plots: tuple[Plot, ...] = ()
    tools: tuple[tuple[str, str], ...] = ()  # (tool, version/commit)
    eval_setup: str | None = None
    fit: FitSetup | None = None
    #: The quantforge version that wrote the card (named, not linked: link only to what exists).
    quantforge_version: str | None = None


# -- compatibility -----------------------------------------------------------------------


def compat_labels(types: Sequence[str], engine: str) -> tuple[str, ...]:
    """Labels a reader needs before downloading: ik-only types, _rN CPU caveats, no-CUDA types."""
    from quantforge.catalogue import catalogue

    labels: list[str] = []
    cat = catalogue("ik" if engine == "ik" else "mainline")
    main = catalogue("mainline")
    ik_only = sorted({t for t in types if t not in main})
    if engine == "ik" and ik_only:
        labels.append(f"ik_llama.cpp only ({', '.join(ik_only)})")
    rn = sorted({t for t in types if (q := cat.find(t)) is not None and q.interleave > 1})
    if rn:
        labels.append(f"row-interleaved {', '.join(rn)}: for CPU-resident tensors")
    no_cuda = sorted({t for t in types if (q := cat.find(t)) is not None and q.quantizable and not q.cuda_matmul})
    if no_cuda:
        labels.append(f"no CUDA matmul for {', '.join(no_cuda)}: those tensors run on the CPU")
    if not labels:
        labels.append("mainline llama.cpp and ik_llama.cpp")
    return tuple(labels)


def portable_command(argv: Sequence[str]) -> tuple[str, ...]:
    """The command with every path reduced to its base name (no home, no absolute path)."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if i == 0:
            out.append(Path(a).name)
            continue
        if os.path.isabs(a) or (os.sep in a and not _looks_like_rule(a) and os.path.exists(a)):
            out.append(Path(a).name)
        else:
            out.append(a)
    return tuple(out)


def _looks_like_rule(arg: str) -> bool:
    # --custom-q / --tensor-type values: regex=type lists, never paths
    return "=" in arg


# -- rendering ---------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}" if n >= GIB else f"{n / GIB:.3f}"


def _num(x: float | None, fmt: str) -> str:
    return NOT_MEASURED if x is None else format(x, fmt)


def _ppl(v: VariantCardRow) -> str:
    if v.ppl is None:
        return NOT_MEASURED
    return f"{v.ppl:.4f} ± {v.ppl_err:.4f}" if v.ppl_err is not None else f"{v.ppl:.4f}"


def ctx_label(n: int) -> str:
    """8192 -> "8K", 1792 -> "1792" (contexts are multiples of 256; K only when whole)."""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _fits(v: VariantCardRow) -> str:
    """The quant table's cell: the targets the variant runs on, grouped by their largest context
    (``8K: a, b``; ``2K only: c`` when only a smaller context than the table's fits)."""
    if not v.fits:
        return "not planned"
    groups: dict[str, list[str]] = {}
    for f in v.fits:
        if f.ctx:
            label = ctx_label(f.ctx) + (" only" if f.verdict == "fits_smaller_ctx" else "")
            groups.setdefault(label, []).append(f.target)
    if not groups:
        return f"none of the {len(v.fits)} targets"
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(v.fits) > 1:
        return f"all {len(v.fits)} targets: {next(iter(groups))}"
    return "<br>".join(f"{label}: {', '.join(names)}" for label, names in groups.items())


def fit_cell_text(f: FitCell) -> str:
    """The fit matrix cell for one planner verdict (the card's wording of each verdict)."""
    if f.verdict == "fits":
        return f"fits (max {ctx_label(f.ctx or 0)})"
    if f.verdict == "fits_smaller_ctx":
        return f"only up to {ctx_label(f.ctx or 0)}"
    if f.verdict == "does_not_fit":
        return "does not fit"
    return "not planned"


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def front_matter(data: CardData) -> str:
    from huggingface_hub import ModelCardData

    tags = list(dict.fromkeys(["gguf", *(["imatrix"] if data.imatrix else []),
                               *(["ik_llama.cpp"] if _needs_ik(data) else []), *data.tags]))
    kwargs: dict[str, Any] = {"quantized_by": data.quantized_by} if data.quantized_by else {}
    meta = ModelCardData(
        base_model=data.base_model,
        base_model_relation="quantized" if data.base_model else None,
        license=data.license,
        pipeline_tag=data.pipeline_tag,
        library_name=data.library_name,
        tags=tags,
        **kwargs,
    )
    return meta.to_yaml()


def _needs_ik(data: CardData) -> bool:
    return any(lbl.startswith("ik_llama.cpp only") for v in data.variants for lbl in v.labels)


def render_card(data: CardData) -> str:
    """Markdown with YAML front matter; raises ``PublishError`` if huggingface_hub cannot parse it."""
    lines: list[str] = ["---", front_matter(data).rstrip("\n"), "---", ""]
    predicted = any(v.kld_predicted is not None for v in data.variants)
    title = f"{data.model_name} GGUF"
    lines += [f"# {title}", ""]
    base = f"[{data.base_model}](https://huggingface.co/{data.base_model})" if data.base_model else data.model_name
    engine = "ik_llama.cpp" if data.engine == "ik" else "llama.cpp"
    made_by = f"quantforge {data.quantforge_version}" if data.quantforge_version else "quantforge"
    if data.recipe_sha256:
        origin = (
            f"Quantizations of {base} made with {engine}'s `llama-quantize` by {made_by} (the `quantforge` "
            f"Python package) from one recipe (sha256 `{data.recipe_sha256}`). Every number below was measured on "
            f"the files in this repo; a missing measurement is shown as *{NOT_MEASURED}*."
        )
    else:
        origin = (
            f"A quantization of {base} for {engine}, described by {made_by} (the `quantforge` Python package) from "
            f"the file's header: sizes exact, no measurement (shown as *{NOT_MEASURED}*)."
        )
    lines += [
        origin,
        "",
        "## Quants",
        "",
        "| Quant | Size (GiB) | Row metadata (GiB) | File (bytes) | BPW | PPL ± err | KLD mean | KLD 99% "
        + ("| KLD predicted " if predicted else "") + "| Fits (target: max context) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | " + ("---: | " if predicted else "") + "--- |",
    ]
    for v in data.variants:
        size = f"{v.tensor_bytes / GIB:.3f}" if v.tensor_bytes is not None else NOT_MEASURED
        meta = f"{v.row_meta_bytes / GIB:.3f}" if v.row_meta_bytes is not None else NOT_MEASURED
        pred = f"| {_num(v.kld_predicted, '.6f')} " if predicted else ""
        lines.append(
            f"| {v.name} | {size} | {meta} | {v.bytes:,} | {_num(v.bpw, '.3f')} | {_ppl(v)} "
            f"| {_num(v.kld_mean, '.6f')} | {_num(v.kld_p99, '.6f')} {pred}| {_md_cell(_fits(v))} |"
        )
    if predicted:
        lines += [
            "",
            "*KLD predicted* is what `quantforge fit` expected of a variant it solved for (the KLD of its base "
            "variant plus the measured cost of each tensor group it changed), beside the KLD measured on the "
            "built file.",
        ]
    lines += [
        "",
        "Size is the tensor data (GiB = 2^30 bytes) as llama.cpp's load log prints it, ik_llama.cpp's per-row "
        "scales included; *Row metadata* is that part alone (gguf-py's and Thireus' listings leave it out); "
        "*File* is the bytes to download (every shard of a split set).",
    ]
    lines.append("")
    if data.eval_setup:
        lines += [f"Measured with {data.eval_setup}.", ""]
    for p in data.plots:
        lines += [f"![{p.title}]({p.path})", ""]

    lines += ["## Compatibility", ""]
    for v in data.variants:
        lines.append(f"- **{v.name}**: " + "; ".join(v.labels))
    lines.append("")

    lines += ["## Download", ""]
    if data.variants:
        v = data.variants[0]
        repo = data.repo or "ORG/NAME"
        include = f"{v.name}/*" if len(v.files) > 1 or "/" in v.files[0] else v.files[0]
        lines += [
            f"Download one quant (here {v.name}) instead of the whole repo:",
            "",
            "```bash",
            "pip install -U huggingface_hub",
            f"hf download {repo} --include {shlex.quote(include)} --local-dir ./",
            "```",
            "",
        ]

    lines += ["## Recipes", ""]
    for v in data.variants:
        lines += [
            "<details>",
            f"<summary>{v.name}: exact llama-quantize command</summary>",
            "",
        ]
        if v.description:
            lines += [v.description, ""]
        if v.command:
            lines += ["```bash", shlex.join(v.command), "```"]
        else:
            lines += [f"*{NOT_MEASURED}: no build record*"]
        lines += ["", "</details>", ""]

    if data.fit is not None:
        lines += _fit_section(data)

    if any(v.run_commands for v in data.variants):
        lines += ["## Run", "",
                  "Commands from quantforge's planner for each target the quant fits (ik_llama.cpp or llama.cpp "
                  "`llama-server`; `-ot` keeps the listed tensors on the named device). Run them from the folder "
                  "holding the downloaded files.", ""]  # fmt: skip
        for v in data.variants:
            if not v.run_commands:
                continue
            lines += ["<details>", f"<summary>{v.name}: run commands ({len(v.run_commands)} targets)</summary>", ""]
            for rc in v.run_commands:
                ctx = f" ({ctx_label(rc.ctx)} context)" if rc.ctx else ""
                lines += [f"**{rc.target}**{ctx}:", "", "```bash", rc.command, "```", ""]
            lines += ["</details>", ""]

    lines += ["## Importance matrix", ""]
    if data.imatrix:
        im = data.imatrix
        lines += [
            f"- file: `{im.file or NOT_MEASURED}`",
            f"- sha256: `{im.sha256 or NOT_MEASURED}`",
            f"- calibration corpus: {im.dataset or NOT_MEASURED}",
            f"- chunks: {im.chunks if im.chunks is not None else NOT_MEASURED}",
        ]
        if im.entries is not None:
            lines.append(f"- entries: {im.entries}")
    else:
        lines.append("None: these quants were made without an importance matrix.")
    lines.append("")

    lines += ["## Tools", ""]
    if data.tools:
        lines += [f"- {name}: {ver}" for name, ver in data.tools]
    else:
        lines.append(f"- {NOT_MEASURED}")
    lines.append("")
    text = "\n".join(lines)
    check_card(text)
    return text


def _fit_section(data: CardData) -> list[str]:
    fit = data.fit
    assert fit is not None
    lines = ["## Hardware fit", ""]
    if fit.note:
        return lines + [f"Not planned: {fit.note}", ""]
    lines += [
        f"Planned by quantforge at {ctx_label(fit.ctx)} context ({fit.settings}): weights and KV cache "
        "exact, compute buffers estimated. *only up to N*: fits with a smaller context; the run commands "
        "below use the context shown.",
        "",
        "| Quant | " + " | ".join(name for name, _ in fit.targets) + " |",
        "| --- |" + " --- |" * len(fit.targets),
    ]
    for v in data.variants:
        cells = {f.target: fit_cell_text(f) for f in v.fits}
        lines.append(f"| {v.name} | " + " | ".join(cells.get(n, "not planned") for n, _ in fit.targets) + " |")
    lines += ["", "Targets:", ""]
    lines += [f"- **{name}**: {_md_cell(summary)}" for name, summary in fit.targets]
    lines.append("")
    return lines


_ABS = re.compile(r"(?<![\w.:/])/(?:home|root|Users|tmp|mnt|data|work)/\S*")


def check_card(text: str) -> None:
    """The card parses with huggingface_hub and carries no local absolute path or token."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
        card_data: Any = card.data  # huggingface_hub leaves CardData.to_dict unannotated
        meta = card_data.to_dict()
    except Exception as exc:  # huggingface_hub raises ValueError/yaml errors
        raise PublishError(f"the generated card does not parse: {exc}", where="README.md") from exc
    if meta.get("base_model") and meta.get("base_model_relation") != "quantized":
        raise PublishError("card metadata lacks base_model_relation: quantized", where="README.md")
    m = _ABS.search(text)
    if m:
        raise PublishError(f"the card would publish a local path {m.group(0)!r}", where="README.md",
                           hint="report this: commands must use base names only")
    if re.search(r"\bhf_[A-Za-z0-9]{20,}\b", text):
        raise PublishError("the card contains something that looks like a token", where="README.md")


# -- from the recipe and the manifests ---------------------------------------------------


def _kld_p99(kld: dict[str, object]) -> float | None:
    for key in ("p99", "99", "99.0"):
        if isinstance(kld.get(key), int | float):
            return float(kld[key])  # type: ignore[arg-type]
    pct = kld.get("percentiles")
    if isinstance(pct, dict):
        for key in ("99.0", "99"):
            if isinstance(pct.get(key), int | float):
                return float(pct[key])
    return None


def _float(d: dict[str, object] | None, key: str) -> float | None:
    if not d:
        return None
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def latest_eval(man: object) -> dict[str, Any]:
    """The newest evaluation recorded in a manifest (``eval = {latest, runs}``, see evaluate)."""
    ev = getattr(man, "eval", None) or {}
    if isinstance(ev.get("latest"), dict):
        return dict(ev["latest"])
    return dict(ev)


_EVAL_METHOD = {
    "bundled": "the bundled evaluator (ik_llama.cpp's libllama through ctypes, llama-perplexity's method)",
    "ik": "ik_llama.cpp's llama-perplexity",
    "mainline": "llama.cpp's llama-perplexity",
}


def eval_numbers(man: object) -> dict[str, float | None]:
    """PPL ± err, KLD mean and 99th percentile from a manifest's ``eval`` section (None: not measured)."""
    ev = latest_eval(man)
    kld = ev.get("kld") if isinstance(ev.get("kld"), dict) else None
    return {
        "ppl": _float(ev, "ppl"),
        "ppl_err": _float(ev, "ppl_err"),
        "kld_mean": _float(kld, "mean"),
        "kld_p99": _kld_p99(kld) if kld else None,
        "kld_predicted": _float(_fit_record(man), "predicted_kld"),
    }


def _fit_record(man: object) -> dict[str, object] | None:
    """The ``fit`` section ``quantforge fit --verify`` adds to a manifest (predicted vs measured KLD)."""
    extra = getattr(man, "model_extra", None) or {}
    section = extra.get("fit") if isinstance(extra, dict) else None
    return section if isinstance(section, dict) else None


def plot_files(man_path: Path, man: object) -> list[Path]:
    """``*.png`` files the evaluation recorded in a manifest (eval/sweeps sections), that exist."""
    found: list[Path] = []

    def walk(x: object) -> None:
        if isinstance(x, str) and x.lower().endswith(".png"):
            p = Path(x) if os.path.isabs(x) else man_path.parent / x
            if p.is_file() and p.resolve() not in found:
                found.append(p.resolve())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    extra = getattr(man, "model_extra", None) or {}
    walk(getattr(man, "eval", None))
    walk(extra.get("sweeps"))
    walk(extra.get("plots"))
    return found


def _tensor_sizes(man_path: Path, man: object) -> tuple[int | None, int | None]:
    """Tensor data and row metadata of a built variant, from its file's header (exact)."""
    from quantforge.errors import QuantforgeError
    from quantforge.inventory import load_inventory
    from quantforge.manifest import resolve_file
    from quantforge.plan import file_plan

    files = getattr(man, "files", None) or []
    verified = (getattr(man, "verification", None) or {}).get("tensor_bytes")
    planned = verified if isinstance(verified, int) else getattr(man, "planned_tensor_bytes", None)
    if not files:
        return planned, None
    try:
        plan = file_plan(load_inventory(resolve_file(man_path, files[0].path), engine=getattr(man, "engine", None)))
    except QuantforgeError:
        return planned, None
    return plan.tensor_bytes, plan.row_meta_bytes


def card_data_from_manifests(
    recipe: object,
    manifests: Sequence[tuple[Path, object]],
    *,
    repo: str | None,
    files_in_repo: dict[str, tuple[str, ...]],
    plots: Sequence[Plot] = (),
    fits: dict[str, tuple[FitCell, ...]] | None = None,
    run_commands: dict[str, tuple[RunCommand, ...]] | None = None,
    fit: FitSetup | None = None,
) -> CardData:
    """Everything the card shows, taken from the recipe and the variants' manifests only."""
    pub = getattr(recipe, "publish", None)
    model = recipe.model  # type: ignore[attr-defined]
    engine = recipe.engine  # type: ignore[attr-defined]
    rows: list[VariantCardRow] = []
    tools: dict[str, str] = {}
    imatrix: ImatrixProvenance | None = None
    eval_setup: str | None = None
    for _man_path, man in manifests:
        v = recipe.variant(man.name)  # type: ignore[attr-defined]
        types = tuple(sorted((man.plan or {}).get("types", {})))  # type: ignore[attr-defined]
        nums = eval_numbers(man)
        tensor_bytes, row_meta = _tensor_sizes(_man_path, man)
        rows.append(
            VariantCardRow(
                name=man.name,  # type: ignore[attr-defined]
                description=v.description,
                files=files_in_repo[man.name],  # type: ignore[attr-defined]
                bytes=man.actual_file_bytes,  # type: ignore[attr-defined]
                tensor_bytes=tensor_bytes,
                row_meta_bytes=row_meta,
                bpw=_float(man.plan, "bpw"),  # type: ignore[attr-defined]
                fits=(fits or {}).get(man.name, ()),  # type: ignore[attr-defined]
                command=portable_command(man.command),  # type: ignore[attr-defined]
                types=types,
                labels=compat_labels(types, engine),
                run_commands=(run_commands or {}).get(man.name, ()),  # type: ignore[attr-defined]
                **nums,
            )
        )
        tc = man.toolchain or {}  # type: ignore[attr-defined]
        label = "ik_llama.cpp" if man.engine == "ik" else "llama.cpp"  # type: ignore[attr-defined]
        ver = " ".join(str(x) for x in (tc.get("version"), f"commit {man.engine_commit}" if man.engine_commit and man.engine_commit not in str(tc.get("version")) else None) if x)  # type: ignore[attr-defined]
        if ver:
            tools[f"{label} llama-quantize"] = ver
        tools["quantforge"] = man.quantforge_version  # type: ignore[attr-defined]
        ev = latest_eval(man)
        if ev and eval_setup is None:
            corpus = Path(str(ev.get("corpus") or "")).name or None
            eval_setup = ", ".join(x for x in (
                _EVAL_METHOD.get(str(ev.get("engine")), "llama-perplexity"),
                f"corpus {corpus}" if corpus else None,
                f"ctx {ev.get('ctx')}" if ev.get("ctx") else None,
                f"{ev.get('chunks')} chunks" if ev.get("chunks") else None,
                "KLD against the base model" if ev.get("kld") else None,
            ) if x)  # fmt: skip
            if ev.get("engine_commit"):
                key = "bundled evaluator" if ev.get("engine") == "bundled" else "llama-perplexity"
                tools[key] = str(ev.get("engine_commit"))
        im = man.imatrix  # type: ignore[attr-defined]
        if im and imatrix is None:
            imatrix = ImatrixProvenance(
                file=Path(str(im.get("path") or "")).name or None,
                sha256=im.get("sha256"),
                dataset=Path(str(im.get("dataset"))).name if im.get("dataset") else None,
                chunks=im.get("chunk_count") if isinstance(im.get("chunk_count"), int) and im.get("chunk_count") >= 0 else None,
                entries=im.get("entries"),
            )
    return CardData(
        model_name=getattr(model, "name", None) or getattr(model, "id", None) or "model",
        repo=repo,
        base_model=base_model_of(recipe)[0],
        license=pub.license if pub else None,
        quantized_by=pub.quantized_by if pub else None,
        pipeline_tag=(pub.pipeline_tag if pub and pub.pipeline_tag else "text-generation"),
        tags=tuple(pub.tags) if pub else (),
        engine=engine,
        recipe_sha256=recipe.sha256,  # type: ignore[attr-defined]
        variants=tuple(rows),
        imatrix=imatrix,
        plots=tuple(plots),
        tools=tuple(sorted(tools.items())),
        eval_setup=eval_setup,
        fit=fit,
        quantforge_version=_quantforge_version(),
    )


def _quantforge_version() -> str:
    from quantforge import __version__

    return __version__


# -- hardware fit: the planner's verdicts and run commands --------------------------------

#: Models below this many parameters are planned at 8K context by default (they are trained
#: for short contexts and run anywhere); larger ones at 32K, the context people ask about.
SMALL_MODEL_PARAMS = 1_000_000_000
MODEL_PLACEHOLDER = "MODEL.gguf"  # the planner's stand-in for the model path


def default_fit_ctx(n_params: int) -> int:
    return 8192 if n_params < SMALL_MODEL_PARAMS else 32768


def card_targets(recipe: object, targets: Sequence[str] | None = None) -> list[object]:
    """The hardware targets of the fit table: ``targets`` (names or TOML paths) when given, else
    the recipe's ``[publish] targets``, else every shipped target. Paths are relative to the recipe."""
    from quantforge.errors import TargetError
    from quantforge.targets import list_targets, load_target

    pub = getattr(recipe, "publish", None)
    from_recipe = targets is None
    names = list(targets) if targets is not None else list(pub.targets if pub else [])
    if not names:
        return list(list_targets())
    rpath = getattr(recipe, "path", None)
    rdir = Path(rpath).parent if rpath else Path.cwd()
    out: list[object] = []
    for i, n in enumerate(names):
        p = Path(n).expanduser()
        is_path = p.suffix == ".toml" or "/" in n or os.sep in n
        src: str | Path = (p if p.is_absolute() else rdir / p) if is_path else n
        try:
            out.append(load_target(src))
        except TargetError as exc:
            where = f"{rpath or 'recipe'}: publish.targets[{i}]" if from_recipe else f"--target {n}"
            raise TargetError(f"{n}: {exc.message}", where=where, hint=exc.hint) from None
    return out


def plan_card_fits(
    recipe: object,
    names: Sequence[str],
    model_files: dict[str, str],
    *,
    targets: Sequence[str] | None = None,
    ctx: int | None = None,
) -> tuple[dict[str, tuple[FitCell, ...]], dict[str, tuple[RunCommand, ...]], FitSetup]:
    """For each variant in ``names``: the planner's verdict and largest context on every target
    at the card's context, and the run command per target it fits (at the card's context, or at
    its largest context when only a smaller one fits), with ``model_files[name]`` (the published
    file, first shard of a split set) in place of the model path.

    The targets and the context come from ``[publish] targets`` / ``[publish] ctx`` unless given.
    A bad target is an input error; a model the planner cannot read (an ``hf://`` base while
    offline) leaves the table unplanned with the reason, so the card can still be written.
    """
    from quantforge.errors import QuantforgeError
    from quantforge.fit.api import recipe_plans

    tgts = card_targets(recipe, targets)
    summaries = tuple((t.name, t.summary()) for t in tgts)  # type: ignore[attr-defined]
    pub = getattr(recipe, "publish", None)
    want_ctx = ctx or (pub.ctx if pub and pub.ctx else None)
    try:
        plans, dims = recipe_plans(recipe)
    except QuantforgeError as exc:
        setup = FitSetup(ctx=want_ctx or 0, settings="", targets=summaries, note=exc.one_line())
        return {}, {}, setup
    return fits_for_plans(plans, dims, names, model_files, tgts, ctx=want_ctx,
                          engine=recipe.engine)  # type: ignore[attr-defined]  # fmt: skip


def fits_for_plans(
    plans: Sequence[Any],
    dims: Any,
    names: Sequence[str],
    model_files: dict[str, str],
    tgts: Sequence[Any],
    *,
    ctx: int | None,
    engine: str,
) -> tuple[dict[str, tuple[FitCell, ...]], dict[str, tuple[RunCommand, ...]], FitSetup]:
    """The fit table and run commands of ``names`` among ``plans`` (a recipe's or a file's)."""
    from quantforge.fit.api import breakpoint_matrix
    from quantforge.fit.placement import fit_tensors, prepare
    from quantforge.fit.report import Settings, plan_fit

    summaries = tuple((t.name, t.summary()) for t in tgts)
    by_name = {p.name: p for p in plans}
    sel = [by_name[n] for n in names]
    n_ctx = ctx or default_fit_ctx(max((p.n_params for p in sel), default=0))
    settings = Settings(n_ctx=n_ctx)
    flags = f"-ctk {settings.ctk} -ctv {settings.ctv}, -b {settings.batch} -ub {settings.ub}"
    flags += ", flash attention" if settings.flash_attn else ""
    setup = FitSetup(ctx=n_ctx, settings=flags, targets=summaries)
    matrix = breakpoint_matrix(sel, dims, list(tgts), settings=settings)
    tgt_by_name = {t.name: t for t in tgts}
    fits: dict[str, list[FitCell]] = {n: [] for n in names}
    runs: dict[str, list[RunCommand]] = {n: [] for n in names}
    prepared = {p.name: prepare(fit_tensors(p), engine=p.engine, n_layer=dims.n_layer) for p in sel}
    for cell in matrix.cells:
        fits[cell.quant].append(FitCell(target=cell.target, ctx=cell.max_ctx or None, verdict=cell.verdict,
                                        at_ctx=n_ctx))
        if cell.verdict == "does_not_fit":
            continue
        run_ctx = n_ctx if cell.verdict == "fits" else cell.max_ctx
        rep = plan_fit(by_name[cell.quant], dims, tgt_by_name[cell.target],
                       settings=settings.model_copy(update={"n_ctx": run_ctx}), engine=engine,  # type: ignore[arg-type]
                       prepared=prepared[cell.quant])
        argv = [model_files[cell.quant] if a == MODEL_PLACEHOLDER else a for a in rep.command]
        runs[cell.quant].append(RunCommand(target=cell.target, ctx=run_ctx, command=shlex.join(argv)))
    return ({n: tuple(v) for n, v in fits.items()}, {n: tuple(v) for n, v in runs.items()}, setup)


def card_from_source(
    source: str,
    *,
    repo: str | None = None,
    targets: Sequence[str] | None = None,
    ctx: int | None = None,
    engine: str | None = None,
) -> str:
    """The card of a GGUF given without a recipe (local, any shard, or ``hf://`` header bytes):
    sizes and types from its header, the fit table from the planner, ``base_model`` from its
    ``general.base_model.*``, and a ``llama-quantize`` command that reproduces its types."""
    from quantforge.errors import QuantforgeError, UsageError
    from quantforge.fit.dims import dims_from_hparams
    from quantforge.inventory import load_source, split_siblings
    from quantforge.plan import file_plan
    from quantforge.publish.importer import import_recipe, variant_name_of

    src = load_source(source, engine=engine)  # type: ignore[arg-type]
    if src.recipe is not None:
        raise UsageError("card_from_source takes a model file; a recipe's card comes from its builds",
                         where=source, hint="use `quantforge card RECIPE.toml`")  # fmt: skip
    if not src.is_quant:
        raise UsageError(f"{Path(source).name} is not a quant (every tensor is f32/f16/bf16)", where=source,
                         hint="give the quantized GGUF the card is for")  # fmt: skip
    inv = src.inventory
    plan = file_plan(inv, engine=engine)  # type: ignore[arg-type]
    name = variant_name_of(source, plan.ftype)
    plan = plan.model_copy(update={"name": name})
    if source.startswith("hf://"):
        from quantforge.inventory import parse_hf_url

        _repo, _rev, path = parse_hf_url(source)
        first = Path(path)
    else:
        first = Path(source)
    shards = split_siblings(first) or [first]
    in_repo = tuple(str(p) if source.startswith("hf://") else p.name for p in shards)
    types = tuple(sorted({t.type for t in plan.tensors}))
    imported = import_recipe(source, engine=plan.engine)
    command = ("llama-quantize", *_quantize_args_of(imported.text, plan.engine), "model-BF16.gguf", shards[0].name,
               plan.ftype)  # fmt: skip
    tgts = card_targets(None, targets)
    try:
        dims = dims_from_hparams(inv.arch, inv.hparams)
        fits, runs, setup = fits_for_plans([plan], dims, [name], {name: in_repo[0]}, tgts, ctx=ctx, engine=plan.engine)
    except QuantforgeError as exc:
        fits, runs = {}, {}
        setup = FitSetup(ctx=ctx or 0, settings="", targets=tuple((t.name, t.summary()) for t in tgts),  # type: ignore[attr-defined]
                         note=exc.one_line())  # fmt: skip
    row = VariantCardRow(
        name=name, files=in_repo, bytes=plan.file_bytes or 0, tensor_bytes=plan.tensor_bytes,
        row_meta_bytes=plan.row_meta_bytes, bpw=plan.bpw, fits=fits.get(name, ()), command=command,
        description="A command that writes these per-tensor types from the BF16 base (read back from the file's "
                    "header; the importance matrix it was made with, if any, is not known).",
        types=types, labels=compat_labels(types, plan.engine), run_commands=runs.get(name, ()),
    )  # fmt: skip
    general = inv.kv_value
    data = CardData(
        model_name=str(general("general.name") or first.name.removesuffix(".gguf")), repo=repo,
        base_model=base_model_from_gguf(inv.kv), license=_plain_str(general("general.license")),
        engine=plan.engine, variants=(row,), tools=(("quantforge", _quantforge_version()),), fit=setup,
        quantforge_version=_quantforge_version(),
    )  # fmt: skip
    return render_card(data)


def _plain_str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _quantize_args_of(recipe_text: str, engine: str) -> list[str]:
    from quantforge.catalogue import catalogue
    from quantforge.plan import quantize_args_for
    from quantforge.recipe import parse_recipe

    recipe = parse_recipe(recipe_text)
    return quantize_args_for(engine, recipe.quants[0], catalogue(engine))
