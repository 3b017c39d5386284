"""Charts for people: speed vs context depth, and quality vs size across a quant ladder.

matplotlib (Agg backend, imported lazily so the CLI starts fast); every chart is written as
PNG and SVG, with error bars (sample standard deviation of repeated runs, or the tool's ±).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from quantforge.errors import InputError
from quantforge.evaluate.models import EvalResult, SweepResult

if TYPE_CHECKING:
    from quantforge.evaluate.bisect import BisectReport

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _plt() -> Any:
    import matplotlib  # startup

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # real text in SVG: selectable, searchable, small
    import matplotlib.pyplot as plt  # startup

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
        n = res.summary[0].n if res.summary else 0
        label = f"{res.label} (n={n})"
        for ax, metric in ((axes[0], "pp"), (axes[1], "tg")):
            pts = [(r.n_kv, getattr(r, f"s_{metric}_mean"),
                    getattr(r, f"s_{metric}_std") or 0.0) for r in res.summary
                   if getattr(r, f"s_{metric}_mean") is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            ms=4,
                            capsize=3, color=color, label=label, lw=1.6)
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
    ax.errorbar(xs, [results[i].ppl for i in order], yerr=[results[i].ppl_err for i in order], marker="o",
                ms=5,
                capsize=3, color=_COLORS[0], lw=1.4)
    for i in order:
        ax.annotate(names[i], (xv(results[i]), results[i].ppl), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    base = next((r.kld.ppl_base for r in results if r.kld is not None), None)
    if base is not None:
        ax.axhline(base, color="0.4", ls="--", lw=1, label=f"base PPL {base:.4f}")
        ax.legend(fontsize=8, loc="best")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"PPL vs size ({results[0].ctx} ctx, {results[0].chunks} chunks)")
    if has_kld:
        ax2 = axes[0][1]
        kl = [i for i in order if results[i].kld is not None]
        ax2.errorbar([xv(results[i]) for i in kl],
                     [results[i].kld.mean for i in kl],  # type: ignore[union-attr]
                     yerr=[results[i].kld.mean_err for i in kl], marker="s", ms=5,  # type: ignore[union-attr]
                     capsize=3,
                     color=_COLORS[1], lw=1.4)
        for i in kl:
            ax2.annotate(names[i], (xv(results[i]), results[i].kld.mean),  # type: ignore[union-attr]
                         textcoords="offset points",
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


def plot_vary(knob: str, values: Sequence[str], results: Sequence[SweepResult], out: str | Path, *,
              title: str | None = None) -> list[Path]:
    """PP and TG speed against one knob's values (geometric mean over each run's rows, mean ± sd of runs)."""
    import numpy as np  # startup

    if not results or len(values) != len(results):
        raise InputError("nothing to plot", hint="one sweep result per value of the knob")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    numeric = all(v.lstrip("-").isdigit() for v in values)
    xs: list[Any] = [int(v) for v in values] if numeric else list(range(len(values)))
    for ax, metric, color in ((axes[0], "pp", _COLORS[0]), (axes[1], "tg", _COLORS[1])):
        means, sds = [], []
        for res in results:
            per_run = []
            for run in res.runs:
                vals = [getattr(r, f"s_{metric}") for r in run if getattr(r, f"s_{metric}")]
                if vals:
                    per_run.append(float(np.exp(np.mean(np.log(vals)))))
            means.append(float(np.mean(per_run)) if per_run else float("nan"))
            sds.append(float(np.std(per_run, ddof=1)) if len(per_run) > 1 else 0.0)
        ax.errorbar(xs, means, yerr=sds, marker="o", ms=5, capsize=3, color=color, lw=1.6)
        for x, m in zip(xs, means, strict=True):
            if m == m:
                ax.annotate(f"{m:.1f}", (x, m), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=8)
        if numeric and len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels(list(values))
        ax.set_xlabel(f"{knob}")
        ax.set_ylabel("speed, tokens/s (geometric mean over N_KV)")
        ax.set_title(f"{'Prompt processing' if metric == 'pp' else 'Token generation'} vs {knob}")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.suptitle(title or f"Speed vs {knob} (mean ± sd of repeated runs)", fontsize=11)
    fig.tight_layout()
    paths = _save(fig, out)
    plt.close(fig)
    return paths


def plot_bisect(report: BisectReport, out: str | Path) -> list[Path]:
    """Each tested commit's change vs GOOD (with its interval), in commit order; the threshold and the first
    bad."""
    plt = _plt()
    seq = [report.references[0], *report.steps, report.references[1]]  # steps are in commit order
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(seq) + 2), 4.2))
    colors = {"good": "#2ca02c", "bad": "#d62728", "skip": "#7f7f7f"}
    for i, s in enumerate(seq):
        y = s.change_pct if s.change_pct is not None else 0.0
        if s.ci_low_pct is not None and s.ci_high_pct is not None:
            ax.errorbar([i], [y], yerr=[[y - s.ci_low_pct], [s.ci_high_pct - y]], fmt="none", ecolor="0.4",
                        capsize=4)
        marker = "x" if s.verdict == "skip" else ("D" if s.commit == report.first_bad else "o")
        ax.scatter([i], [y], color=colors[s.verdict], marker=marker, s=70 if marker == "D" else 45, zorder=3)
        if s.verdict == "skip":
            ax.annotate("skipped", (i, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8,
                        color=colors["skip"])
    ax.axhline(-report.threshold_pct, color="#d62728", ls="--", lw=1,
               label=f"threshold -{report.threshold_pct:.1f} % ({report.threshold_source})")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(seq)))
    ax.set_xticklabels([("GOOD " if s.role == "good reference" else "BAD " if s.role == "bad reference"
                         else "")
                        + s.commit[:8] for s in seq], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{report.metric.upper()} change vs GOOD, %")
    first = f"first bad: {report.first_bad[:12]}" if report.first_bad else "first bad: not found"
    ax.set_title(f"git bisect of {report.metric.upper()} speed ({first})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths = _save(fig, out)
    plt.close(fig)
    return paths
