"""The evaluate stage: PPL/KLD runs, speed sweeps, statistics and plots."""

from quantforge.evaluate.models import (
    BenchRow,
    CompareReport,
    EvalResult,
    KLDStats,
    MetricComparison,
    PerplexityLog,
    RowStats,
    SweepResult,
    SweepRow,
)
from quantforge.evaluate.parsers import (
    parse_bench_json,
    parse_bench_markdown,
    parse_perplexity_log,
    parse_sweep,
)
from quantforge.evaluate.perplexity import evaluate, record_in_manifest
from quantforge.evaluate.plots import plot_ladder, plot_sweeps
from quantforge.evaluate.stats import compare, summarize
from quantforge.evaluate.sweep import (
    binary_runner,
    bundled_runner,
    load_result,
    run_sweeps,
    save_result,
    sweep_command_from_run,
)

__all__ = [
    "binary_runner",
    "bundled_runner",
    "compare",
    "evaluate",
    "load_result",
    "plot_ladder",
    "plot_sweeps",
    "record_in_manifest",
    "run_sweeps",
    "save_result",
    "summarize",
    "sweep_command_from_run",
    "BenchRow",
    "CompareReport",
    "EvalResult",
    "KLDStats",
    "MetricComparison",
    "PerplexityLog",
    "RowStats",
    "SweepResult",
    "SweepRow",
    "parse_bench_json",
    "parse_bench_markdown",
    "parse_perplexity_log",
    "parse_sweep",
]
