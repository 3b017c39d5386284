"""Statistics of repeated speed runs, and the comparison that says whether a difference is real.

Per N_KV row: mean, sample standard deviation and n of PP and TG speed. Comparing a baseline
with a candidate: Welch's t-test (unequal variances) with a 95 % confidence interval of the
difference, *and* the 3-sigma rule (|difference| > 3 standard errors of the difference);
a change is only called a regression or an improvement when both agree, so run-to-run noise
on identical configurations does not produce verdicts. Overall: each run's geometric mean
across rows is one sample, and the same test is applied to their logarithms, which gives
the ratio's confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from quantforge.errors import InputError
from quantforge.evaluate.models import (
    CompareReport,
    MetricComparison,
    RowStats,
    SweepResult,
    SweepRow,
    Verdict,
)

ALPHA = 0.05
SIGMA_RULE = 3.0
#: Changes smaller than this are never called a regression or an improvement: one sweep-bench
#: run differs from the next by about 2 % on a quiet machine, so a smaller "significant" change
#: is usually drift of the machine between the runs, not a property of the configuration.
MIN_EFFECT_PCT = 2.0


def summarize(runs: Sequence[Sequence[SweepRow]]) -> tuple[RowStats, ...]:
    """Mean ± sample standard deviation per N_KV row across runs (rows matched by N_KV)."""
    by_kv: dict[int, list[SweepRow]] = {}
    for run in runs:
        for row in run:
            by_kv.setdefault(row.n_kv, []).append(row)
    out = []
    for n_kv in sorted(by_kv):
        rows = by_kv[n_kv]
        pp = np.array([r.s_pp for r in rows], dtype=float)
        tg = np.array([r.s_tg for r in rows], dtype=float)
        n = len(rows)
        out.append(
            RowStats(
                n_kv=n_kv, pp=rows[0].pp, tg=rows[0].tg, n=n, s_pp_mean=float(pp.mean()),
                s_pp_std=float(pp.std(ddof=1)) if n > 1 else 0.0, s_tg_mean=float(tg.mean()),
                s_tg_std=float(tg.std(ddof=1)) if n > 1 else 0.0,
            )
        )
    return tuple(out)


def welch(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, alpha: float = ALPHA) -> tuple[float, float, float, float | None, float | None]:
    """(difference b-a, CI low, CI high, p-value, sigmas) with Welch's t-test; p/sigmas None when n < 2."""
    from scipy import stats

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(xb.mean() - xa.mean())
    if len(xa) < 2 or len(xb) < 2:
        return diff, float("nan"), float("nan"), None, None
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0.0:
        same = diff == 0.0
        return diff, diff, diff, (1.0 if same else 0.0), (0.0 if same else math.inf)
    df = (va + vb) ** 2 / ((va**2 / (len(xa) - 1)) + (vb**2 / (len(xb) - 1)))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    q = float(stats.t.ppf(1 - alpha / 2, df))
    return diff, diff - q * se, diff + q * se, p, abs(t)


def _verdict(diff: float, p: float | None, sigmas: float | None, *, alpha: float, sigma_rule: float,
             change_pct: float = math.inf, min_effect_pct: float = 0.0) -> Verdict:
    if p is None or sigmas is None:
        return "no significant change"
    if p < alpha and sigmas > sigma_rule and abs(change_pct) >= min_effect_pct:
        # speed: higher is better
        return "improvement" if diff > 0 else "regression"
    return "no significant change"


def _compare(metric: Literal["pp", "tg"], n_kv: int | None, a: Sequence[float], b: Sequence[float], *,
             alpha: float, sigma_rule: float, log_space: bool = False,
             min_effect_pct: float = MIN_EFFECT_PCT) -> MetricComparison:
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if log_space:
        diff, lo, hi, p, sig = welch(np.log(xa), np.log(xb), alpha=alpha)
        change, lo_pct, hi_pct = (math.exp(diff) - 1) * 100, (math.exp(lo) - 1) * 100, (math.exp(hi) - 1) * 100
        ma, mb = float(np.exp(np.log(xa).mean())), float(np.exp(np.log(xb).mean()))
    else:
        diff, lo, hi, p, sig = welch(xa, xb, alpha=alpha)
        ma, mb = float(xa.mean()), float(xb.mean())
        change, lo_pct, hi_pct = diff / ma * 100, lo / ma * 100, hi / ma * 100
    return MetricComparison(
        metric=metric, n_kv=n_kv, baseline_mean=ma, baseline_std=float(xa.std(ddof=1)) if len(xa) > 1 else 0.0,
        baseline_n=len(xa), candidate_mean=mb, candidate_std=float(xb.std(ddof=1)) if len(xb) > 1 else 0.0,
        candidate_n=len(xb), change_pct=change, ci_low_pct=lo_pct, ci_high_pct=hi_pct, p_value=p, sigmas=sig,
        verdict=_verdict(diff, p, sig, alpha=alpha, sigma_rule=sigma_rule, change_pct=change,
                         min_effect_pct=min_effect_pct),
    )


def _per_row(runs: Sequence[Sequence[SweepRow]], n_kv: int, metric: str) -> list[float]:
    return [getattr(r, f"s_{metric}") for run in runs for r in run if r.n_kv == n_kv]


def compare(baseline: SweepResult, candidate: SweepResult, *, alpha: float = ALPHA,
            sigma_rule: float = SIGMA_RULE, min_effect_pct: float = MIN_EFFECT_PCT) -> CompareReport:
    """Per N_KV row and overall: the change of PP and TG speed, its 95 % CI and a verdict."""
    kv_a = {r.n_kv for run in baseline.runs for r in run}
    kv_b = {r.n_kv for run in candidate.runs for r in run}
    common = sorted(kv_a & kv_b)
    if not common:
        raise InputError("the two results share no N_KV row, so they cannot be compared",
                         hint="run both with the same context and u-batch")
    rows = []
    metrics: tuple[Literal["pp", "tg"], ...] = ("pp", "tg")
    for n_kv in common:
        for metric in metrics:
            rows.append(_compare(metric, n_kv, _per_row(baseline.runs, n_kv, metric),
                                 _per_row(candidate.runs, n_kv, metric), alpha=alpha, sigma_rule=sigma_rule,
                                 min_effect_pct=min_effect_pct))
    overall = []
    for metric in metrics:
        ga = [_geo(run, common, metric) for run in baseline.runs]
        gb = [_geo(run, common, metric) for run in candidate.runs]
        overall.append(_compare(metric, None, ga, gb, alpha=alpha, sigma_rule=sigma_rule,
                                log_space=True, min_effect_pct=min_effect_pct))
    return CompareReport(baseline=baseline.label, candidate=candidate.label, alpha=alpha, sigma_rule=sigma_rule,
                         min_effect_pct=min_effect_pct, rows=tuple(rows), overall=tuple(overall))


def _geo(run: Sequence[SweepRow], kvs: Sequence[int], metric: str) -> float:
    vals = [getattr(r, f"s_{metric}") for r in run if r.n_kv in kvs]
    return float(np.exp(np.mean(np.log(vals))))
