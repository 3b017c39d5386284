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

from pydantic import BaseModel, ConfigDict

from quantforge.errors import PublishError

NOT_MEASURED = "not measured"
GIB = 1024**3


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FitCell(_Frozen):
    """One hardware target for one variant: the largest context it fits at (None: does not fit)."""

    target: str
    ctx: int | None


class RunCommand(_Frozen):
    target: str
    ctx: int | None = None
    command: str


class VariantCardRow(_Frozen):
    name: str
    description: str | None = None
    files: tuple[str, ...]  # paths in the repo
    bytes: int
    bpw: float | None = None
    ppl: float | None = None
    ppl_err: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
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


def _fits(v: VariantCardRow) -> str:
    if not v.fits:
        return "not planned"
    parts = []
    for f in v.fits:
        parts.append(f"{f.target}: {f.ctx // 1024 if f.ctx >= 1024 else f.ctx}{'K' if f.ctx >= 1024 else ''}"
                     if f.ctx else f"{f.target}: does not fit")
    return "<br>".join(parts)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def front_matter(data: CardData) -> str:
    from huggingface_hub import ModelCardData

    tags = list(dict.fromkeys(["gguf", *(["imatrix"] if data.imatrix else []),
                               *(["ik_llama.cpp"] if _needs_ik(data) else []), *data.tags]))
    kwargs = {"quantized_by": data.quantized_by} if data.quantized_by else {}
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
    title = f"{data.model_name} GGUF"
    lines += [f"# {title}", ""]
    base = f"[{data.base_model}](https://huggingface.co/{data.base_model})" if data.base_model else data.model_name
    engine = "ik_llama.cpp" if data.engine == "ik" else "llama.cpp"
    lines += [
        f"Quantizations of {base} made with {engine}'s `llama-quantize` by "
        "[quantforge](https://github.com/quantforge/quantforge) from one recipe"
        + (f" (sha256 `{data.recipe_sha256}`)" if data.recipe_sha256 else "")
        + ". Every number below was measured on the files in this repo; "
        f"a missing measurement is shown as *{NOT_MEASURED}*.",
        "",
        "## Quants",
        "",
        "| Quant | Size (GiB) | BPW | PPL ± err | KLD mean | KLD 99% | Fits (target: max context) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for v in data.variants:
        lines.append(
            f"| {v.name} | {_gib(v.bytes)} | {_num(v.bpw, '.3f')} | {_ppl(v)} | {_num(v.kld_mean, '.6f')} "
            f"| {_num(v.kld_p99, '.6f')} | {_md_cell(_fits(v))} |"
        )
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

    if any(v.run_commands for v in data.variants):
        lines += ["## Run", ""]
        for v in data.variants:
            for rc in v.run_commands:
                ctx = f", {rc.ctx} context" if rc.ctx else ""
                lines += [f"**{v.name}** on {rc.target}{ctx}:", "", "```bash", rc.command, "```", ""]

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


_ABS = re.compile(r"(?<![\w.:/])/(?:home|root|Users|tmp|mnt|data|work)/\S*")


def check_card(text: str) -> None:
    """The card parses with huggingface_hub and carries no local absolute path or token."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
        meta = card.data.to_dict()
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


def eval_numbers(man: object) -> dict[str, float | None]:
    """PPL ± err, KLD mean and 99th percentile from a manifest's ``eval`` section (None: not measured)."""
    ev = getattr(man, "eval", None) or {}
    kld = ev.get("kld") if isinstance(ev.get("kld"), dict) else None
    return {
        "ppl": _float(ev, "ppl"),
        "ppl_err": _float(ev, "ppl_err"),
        "kld_mean": _float(kld, "mean"),
        "kld_p99": _kld_p99(kld) if kld else None,
    }


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


def card_data_from_manifests(
    recipe: object,
    manifests: Sequence[tuple[Path, object]],
    *,
    repo: str | None,
    files_in_repo: dict[str, tuple[str, ...]],
    plots: Sequence[Plot] = (),
    fits: dict[str, tuple[FitCell, ...]] | None = None,
    run_commands: dict[str, tuple[RunCommand, ...]] | None = None,
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
        rows.append(
            VariantCardRow(
                name=man.name,  # type: ignore[attr-defined]
                description=v.description,
                files=files_in_repo[man.name],  # type: ignore[attr-defined]
                bytes=man.actual_file_bytes,  # type: ignore[attr-defined]
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
        ev = man.eval or {}  # type: ignore[attr-defined]
        if ev and eval_setup is None:
            corpus = Path(str(ev.get("corpus") or "")).name or None
            eval_setup = ", ".join(x for x in (
                f"llama-perplexity ({ev.get('engine')})" if ev.get("engine") else "llama-perplexity",
                f"corpus {corpus}" if corpus else None,
                f"ctx {ev.get('ctx')}" if ev.get("ctx") else None,
                f"{ev.get('chunks')} chunks" if ev.get("chunks") else None,
                "KLD against the base model" if ev.get("kld") else None,
            ) if x)  # fmt: skip
            if ev.get("engine_commit"):
                tools["llama-perplexity"] = f"commit {ev.get('engine_commit')}"
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
        base_model=(pub.base_model if pub and pub.base_model else getattr(model, "id", None)),
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
    )
