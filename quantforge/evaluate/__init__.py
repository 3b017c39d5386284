"""The evaluate stage: PPL/KLD runs, speed sweeps, statistics and plots."""

from quantforge.evaluate.models import (
    BenchRow,
    CompareReport,
    EvalResult,
    KLDStats,
    MetricComparison,
    MetricVerdict,
    PairedTest,
    PerplexityLog,
    RowStats,
    SettingDifference,
    SweepResult,
    SweepRow,
    VaryReport,
)
from quantforge.evaluate.parsers import (
    parse_bench_json,
    parse_bench_markdown,
    parse_perplexity_log,
    parse_sweep,
)
from quantforge.evaluate.perplexity import evaluate, record_in_manifest
from quantforge.evaluate.plots import plot_bisect, plot_ladder, plot_sweeps, plot_vary
from quantforge.evaluate.stats import compare, paired_test, summarize
from quantforge.evaluate.sweep import (
    binary_runner,
    bundled_runner,
    load_result,
    run_sweeps,
    save_result,
    sweep_command_from_run,
    vary_report,
)
from quantforge.evaluate.tables import ParsedTable, read_table

__all__ = [
    "binary_runner",
    "bundled_runner",
    "compare",
    "evaluate",
    "load_result",
    "paired_test",
    "plot_bisect",
    "plot_ladder",
    "plot_sweeps",
    "plot_vary",
    "read_table",
    "vary_report",
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
    "MetricVerdict",
    "PairedTest",
    "ParsedTable",
    "PerplexityLog",
    "RowStats",
    "SettingDifference",
    "SweepResult",
    "SweepRow",
    "VaryReport",
    "parse_bench_json",
    "parse_bench_markdown",
    "parse_perplexity_log",
    "parse_sweep",
]
