"""Charts for people: speed vs context depth, and quality vs size across a quant ladder.

matplotlib (Agg backend, imported lazily so the CLI starts fast); every chart is written as
PNG and SVG, with error bars (sample standard deviation of repeated runs, or the tool's ±).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from quantforge.errors import InputError
from quantforge.evaluate.models import EvalResult, SweepResult

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # real text in SVG: selectable, searchable, small
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path) -> list[Path]:
    base = Path(out)
    if base.suffix.lower() in (".png", ".svg"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in (".png", ".svg"):
        p = base.with_suffix(ext)
        fig.savefig(p, dpi=150 if ext == ".png" else None, bbox_inches="tight")
        paths.append(p)
    return paths


def plot_sweeps(results: Sequence[SweepResult], out: str | Path, *, title: str | None = None) -> list[Path]:
    """PP and TG speed (t/s) vs N_KV for one or more configurations, mean ± sd of the repeats."""
    if not results:
        raise InputError("nothing to plot", hint="pass at least one sweep result")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, res in enumerate(results):
        color = _COLORS[i % len(_COLORS)]
        s = res.summary
        kv = [r.n_kv for r in s]
        n = s[0].n if s else 0
        label = f"{res.label} (n={n})"
        axes[0].errorbar(kv, [r.s_pp_mean for r in s], yerr=[r.s_pp_std for r in s], marker="o", ms=4, capsize=3,
                         color=color, label=label, lw=1.6)
        axes[1].errorbar(kv, [r.s_tg_mean for r in s], yerr=[r.s_tg_std for r in s], marker="o", ms=4, capsize=3,
                         color=color, label=label, lw=1.6)
    pp, tg = results[0].ubatch, results[0].tg
    axes[0].set_title(f"Prompt processing (PP{pp})")
    axes[1].set_title(f"Token generation (TG{tg})")
    for ax in axes:
        ax.set_xlabel("N_KV: tokens already in the KV cache")
        ax.set_ylabel("speed, tokens/s")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "Speed vs context depth (mean ± sd of repeated runs)", fontsize=11)
    fig.tight_layout()
    paths = _save(fig, out)
    plt.close(fig)
    return paths


def plot_ladder(
    results: Sequence[EvalResult], out: str | Path, *, x: Literal["gib", "bpw"] = "gib",
    n_params: int | None = None, labels: Sequence[str] | None = None, title: str | None = None,
) -> list[Path]:
    """PPL (and mean KLD when measured) vs size across a quant ladder, the chart of model cards."""
    if not results:
        raise InputError("nothing to plot", hint="pass at least one evaluation result")
    if x == "bpw" and not n_params:
        raise InputError("bits per weight need the parameter count", hint="pass n_params or use x='gib'")
    plt = _plt()
    has_kld = any(r.kld is not None for r in results)
    fig, axes = plt.subplots(1, 2 if has_kld else 1, figsize=(11 if has_kld else 6, 4.2), squeeze=False)
    names = list(labels) if labels else [Path(r.model).stem for r in results]

    def xv(r: EvalResult) -> float:
        return r.model_bytes * 8 / n_params if x == "bpw" and n_params else r.model_bytes / 1024**3

    order = sorted(range(len(results)), key=lambda i: xv(results[i]))
    xs = [xv(results[i]) for i in order]
    ax = axes[0][0]
    ax.errorbar(xs, [results[i].ppl for i in order], yerr=[results[i].ppl_err for i in order], marker="o", ms=5,
                capsize=3, color=_COLORS[0], lw=1.4)
    for i in order:
        ax.annotate(names[i], (xv(results[i]), results[i].ppl), textcoords="offset points", xytext=(5, 5), fontsize=8)
    base = next((r.kld.ppl_base for r in results if r.kld is not None), None)
    if base is not None:
        ax.axhline(base, color="0.4", ls="--", lw=1, label=f"base PPL {base:.4f}")
        ax.legend(fontsize=8, loc="best")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"PPL vs size ({results[0].ctx} ctx, {results[0].chunks} chunks)")
    if has_kld:
        ax2 = axes[0][1]
        kl = [i for i in order if results[i].kld is not None]
        ax2.errorbar([xv(results[i]) for i in kl], [results[i].kld.mean for i in kl],  # type: ignore[union-attr]
                     yerr=[results[i].kld.mean_err for i in kl], marker="s", ms=5, capsize=3,  # type: ignore[union-attr]
                     color=_COLORS[1], lw=1.4)
        for i in kl:
            ax2.annotate(names[i], (xv(results[i]), results[i].kld.mean), textcoords="offset points",  # type: ignore[union-attr]
                         xytext=(5, 5), fontsize=8)
        ax2.set_ylabel("mean KL divergence vs base (lower is better)")
        ax2.set_title("KLD vs size")
    for a in axes[0]:
        a.margins(x=0.12, y=0.1)
        a.set_xlabel("bits per weight" if x == "bpw" else "file size, GiB")
        a.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    paths = _save(fig, out)
    plt.close(fig)
    return paths
