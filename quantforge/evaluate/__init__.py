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

__all__ = [
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
