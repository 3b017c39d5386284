"""Statistics of speed runs, and the comparison that says whether a difference is real.

Per N_KV row with repeated runs: mean, sample standard deviation and n of PP and TG speed, and
Welch's t-test (unequal variances) with the confidence interval of the difference, *and* the
3-sigma rule (|difference| > 3 standard errors); a change is called a regression or an
improvement only when both agree and it is at least ``min_effect_pct`` (2 %: one sweep-bench run
differs from the next by about that much). Overall with repeats: each run's geometric mean
across rows is one sample, tested the same way on logarithms (the ratio's interval).

One run per side is the common case (two pasted tables): there is no run-to-run variance, but
the rows are *paired* by depth (same N_KV, same PP/TG sizes). The per-depth log-ratios
candidate/baseline are then tested with a one-sample t-test (depths as replicates: their
spread stands in for the unknown noise, which the report says), checked by the Wilcoxon
signed-rank test and the sign test. With repeats the paired test is reported too.

Nothing here returns NaN: an interval or a p-value that does not exist is ``None`` and the
report says why, so ``--json`` is strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from quantforge.errors import InputError
from quantforge.evaluate import knobs
from quantforge.evaluate.models import (
    CompareReport,
    Metric,
    MetricComparison,
    MetricVerdict,
    PairedTest,
    ReportedSpread,
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
METRICS: tuple[Metric, ...] = ("pp", "tg")

RowKey = tuple[int, int, int]  # (n_kv, pp, tg)


def row_key(r: SweepRow | RowStats | ReportedSpread) -> RowKey:
    return (r.n_kv, r.pp, r.tg)


def _speed(r: SweepRow, metric: str) -> float | None:
    v = r.s_pp if metric == "pp" else r.s_tg
    return v if v is not None and math.isfinite(v) and v > 0 else None


def summarize(runs: Sequence[Sequence[SweepRow]]) -> tuple[RowStats, ...]:
    """Mean ± sample standard deviation per row across runs (rows matched by N_KV, PP and TG)."""
    by_key: dict[RowKey, list[SweepRow]] = {}
    for run in runs:
        for row in run:
            by_key.setdefault(row_key(row), []).append(row)
    out = []
    for key in sorted(by_key):
        rows = by_key[key]
        stats: dict[str, float | None] = {}
        for metric in METRICS:
            vals = np.array([v for r in rows if (v := _speed(r, metric)) is not None], dtype=float)
            stats[f"s_{metric}_mean"] = float(vals.mean()) if len(vals) else None
            stats[f"s_{metric}_std"] = (float(vals.std(ddof=1)) if len(vals) > 1
                                        else 0.0) if len(vals) else None
        out.append(RowStats(n_kv=key[0], pp=key[1], tg=key[2], n=len(rows), **stats))
    return tuple(out)


def welch(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
          alpha: float = ALPHA) -> tuple[float, float | None, float | None, float | None, float | None]:
    """(difference b-a, CI low, CI high, p-value, sigmas) with Welch's t-test; all but the difference None
    when n < 2."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(xb.mean() - xa.mean())
    if len(xa) < 2 or len(xb) < 2:
        return diff, None, None, None, None
    return welch_summary(float(xa.mean()), float(xa.std(ddof=1)), len(xa), float(xb.mean()),
                         float(xb.std(ddof=1)),
                         len(xb), alpha=alpha)


def welch_summary(ma: float, sa: float, na: int, mb: float, sb: float, nb: int, *,
                  alpha: float = ALPHA) -> tuple[float, float | None, float | None, float | None,
                                                 float | None]:
    """Welch's t-test from means, sample standard deviations and counts (what llama-bench prints)."""
    from scipy import stats  # startup

    diff = mb - ma
    if na < 2 or nb < 2:
        return diff, None, None, None, None
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        same = diff == 0.0
        return diff, diff, diff, (1.0 if same else 0.0), (0.0 if same else math.inf)
    df = (va + vb) ** 2 / ((va**2 / (na - 1)) + (vb**2 / (nb - 1)))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    q = float(stats.t.ppf(1 - alpha / 2, df))
    return diff, diff - q * se, diff + q * se, p, abs(t)


def _significant(p: float | None, sigmas: float | None, change_pct: float, *, alpha: float, sigma_rule: float,
                 min_effect_pct: float) -> bool:
    return (p is not None and sigmas is not None and p < alpha and sigmas > sigma_rule
            and abs(change_pct) >= min_effect_pct)


def _verdict_of(change_pct: float, significant: bool) -> Verdict:
    if not significant:
        return "no significant change"
    return "improvement" if change_pct > 0 else "regression"  # speed: higher is better


def _pct(x: float | None) -> float | None:
    return None if x is None else (math.exp(x) - 1) * 100


def _compare(metric: Metric, key: RowKey | None, a: Sequence[float], b: Sequence[float], *,
             alpha: float, sigma_rule: float, log_space: bool = False,
             min_effect_pct: float = MIN_EFFECT_PCT) -> MetricComparison:
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    why = None
    if log_space:
        diff, lo, hi, p, sig = welch(np.log(xa), np.log(xb), alpha=alpha)
        change, lo_pct, hi_pct = (math.exp(diff) - 1) * 100, _pct(lo), _pct(hi)
        ma, mb = float(np.exp(np.log(xa).mean())), float(np.exp(np.log(xb).mean()))
    else:
        diff, lo, hi, p, sig = welch(xa, xb, alpha=alpha)
        ma, mb = float(xa.mean()), float(xb.mean())
        change = diff / ma * 100
        lo_pct = None if lo is None else lo / ma * 100
        hi_pct = None if hi is None else hi / ma * 100
    if p is None:
        why = (f"one run per side: no run-to-run variance, so no interval or test here "
               f"({len(xa)} vs {len(xb)} run{'s' if max(len(xa), len(xb)) > 1 else ''})")
    sd_a = float(xa.std(ddof=1)) if len(xa) > 1 else None
    sd_b = float(xb.std(ddof=1)) if len(xb) > 1 else None
    return MetricComparison(
        metric=metric, n_kv=None if key is None else key[0], pp=None if key is None else key[1],
        tg=None if key is None else key[2], baseline_mean=ma, baseline_std=sd_a, baseline_n=len(xa),
        candidate_mean=mb, candidate_std=sd_b, candidate_n=len(xb), change_pct=change, ci_low_pct=lo_pct,
        ci_high_pct=hi_pct, p_value=p, sigmas=sig,
        verdict=_verdict_of(change, _significant(p, sig, change, alpha=alpha, sigma_rule=sigma_rule,
                                                 min_effect_pct=min_effect_pct)),
        test="welch" if p is not None else "none", why=why,
    )


def _compare_spread(metric: Metric, key: RowKey, a: ReportedSpread, b: ReportedSpread, *, alpha: float,
                    sigma_rule: float, min_effect_pct: float) -> MetricComparison:
    diff, lo, hi, p, sig = welch_summary(a.mean, a.std, a.n, b.mean, b.std, b.n, alpha=alpha)
    change = diff / a.mean * 100
    assumed = a.n_assumed or b.n_assumed
    return MetricComparison(
        metric=metric, n_kv=key[0], pp=key[1], tg=key[2], baseline_mean=a.mean, baseline_std=a.std,
        baseline_n=a.n,
        candidate_mean=b.mean, candidate_std=b.std, candidate_n=b.n, change_pct=change,
        ci_low_pct=None if lo is None else lo / a.mean * 100,
        ci_high_pct=None if hi is None else hi / a.mean * 100,
        p_value=p, sigmas=sig,
        verdict=_verdict_of(change, _significant(p, sig, change, alpha=alpha, sigma_rule=sigma_rule,
                                                 min_effect_pct=min_effect_pct)),
        test="welch-summary",
        why="from the mean ± sd the tool printed" + (
            f", n = {a.n} vs {b.n} repetitions assumed (llama-bench's default -r)" if assumed
            else f", n = {a.n} vs {b.n} repetitions"),
    )


def _values(runs: Sequence[Sequence[SweepRow]], key: RowKey, metric: str) -> list[float]:
    return [v for run in runs for r in run if row_key(r) == key and (v := _speed(r, metric)) is not None]


def _keys(res: SweepResult, metric: str) -> set[RowKey]:
    return {row_key(r) for run in res.runs for r in run if _speed(r, metric) is not None}


def paired_test(baseline: SweepResult, candidate: SweepResult, metric: Metric, *, alpha: float = ALPHA,
                sigma_rule: float = SIGMA_RULE, min_effect_pct: float = MIN_EFFECT_PCT) -> PairedTest:
    """Rows paired by (N_KV, PP, TG): t-test on the log-ratios of their geometric means, with rank checks."""
    from scipy import stats  # startup

    keys = sorted(_keys(baseline, metric) & _keys(candidate, metric))
    d = np.array([math.log(_geo(_values(candidate.runs, k, metric)) / _geo(_values(baseline.runs, k, metric)))
                  for k in keys], dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else 0.0
    change = (math.exp(mean) - 1) * 100
    faster, slower = int((d > 0).sum()), int((d < 0).sum())
    base = dict(metric=metric, n_pairs=n, depths=tuple(k[0] for k in keys), change_pct=change,
                n_faster=faster,
                n_slower=slower, min_ratio_pct=_pct(float(d.min())) if n else 0.0,
                max_ratio_pct=_pct(float(d.max())) if n else 0.0)
    if n < 2:
        return PairedTest(**base, ci_low_pct=None, ci_high_pct=None, t=None, df=None,  # type: ignore[arg-type]
                          p_value=None,
                          signed_rank_p=None, sign_test_p=None, rank_floor_p=None,
                          verdict="no significant change",
                          why=f"{n} depth{'s' if n != 1 else ''} in common: a paired test needs at least 2")
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se == 0.0:
        t_stat = math.inf if mean else 0.0
        p = 0.0 if mean else 1.0
        lo = hi = mean
    else:
        t_stat = mean / se
        p = float(2 * stats.t.sf(abs(t_stat), df))
        q = float(stats.t.ppf(1 - alpha / 2, df))
        lo, hi = mean - q * se, mean + q * se
    nonzero = d[d != 0]
    if len(nonzero):
        rank_p = float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)
        sign_p = float(stats.binomtest(int((nonzero < 0).sum()), len(nonzero), 0.5).pvalue)
    else:
        rank_p = sign_p = 1.0
    floor = 2.0 / 2 ** len(nonzero) if len(nonzero) else 1.0
    # the rank test cannot reach alpha with few depths; then it checks the direction only
    rank_ok = rank_p < alpha or (floor >= alpha and (faster == 0 or slower == 0))
    sig = (p < alpha and abs(t_stat) > sigma_rule and abs(change) >= min_effect_pct and rank_ok)
    why = None
    if p < alpha and abs(change) >= min_effect_pct and not rank_ok:
        why = (f"the t-test says p = {p:.2g} but the signed-rank test does not agree (p = {rank_p:.2g}; "
               f"{faster} depths faster, {slower} slower)")
    elif p < alpha and abs(change) >= min_effect_pct and abs(t_stat) <= sigma_rule:
        why = f"|t| = {abs(t_stat):.2f} is not above the {sigma_rule:g}-sigma rule"
    elif p < alpha and abs(change) < min_effect_pct:
        why = f"the change is smaller than the {min_effect_pct:g} % minimum effect"
    return PairedTest(**base, ci_low_pct=_pct(lo), ci_high_pct=_pct(hi),  # type: ignore[arg-type]
                      t=t_stat if math.isfinite(t_stat) else None,
                      df=df, p_value=p, signed_rank_p=rank_p, sign_test_p=sign_p, rank_floor_p=floor,
                      verdict=_verdict_of(change, sig), why=why)


def _geo(vals: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(vals, dtype=float)))))


def _spread_map(res: SweepResult) -> dict[tuple[RowKey, str], ReportedSpread]:
    return {(row_key(s), s.metric): s for s in res.spread}


def compare(baseline: SweepResult, candidate: SweepResult, *, alpha: float = ALPHA,
            sigma_rule: float = SIGMA_RULE, min_effect_pct: float = MIN_EFFECT_PCT,
            warnings: Sequence[str] = ()) -> CompareReport:
    """Per row and overall: the change of PP and TG speed, its interval and a verdict; with one run per
    side the rows paired by depth decide, and the report says what that assumes. Knobs whose
    settings differ between the two results (``-rtr``, ``-ub``, ``-b``, ``-amb``, ``-mla``, ``-fa``,
    ``-ot`` …) are listed in ``differences``: a speed change they explain is not the build's."""
    common = {m: sorted(_keys(baseline, m) & _keys(candidate, m)) for m in METRICS}
    if not any(common.values()):
        raise InputError("the two results share no row (same N_KV, PP and TG sizes), so they cannot be "
                         "compared",
                         hint="run both with the same context, u-batch and TG size")
    rows: list[MetricComparison] = []
    sa, sb = _spread_map(baseline), _spread_map(candidate)
    one_run = len(baseline.runs) < 2 or len(candidate.runs) < 2
    all_keys = sorted(set(common["pp"]) | set(common["tg"]))
    for key in all_keys:
        for metric in METRICS:
            if key not in common[metric]:
                continue
            if one_run and (key, metric) in sa and (key, metric) in sb:
                rows.append(_compare_spread(metric, key, sa[(key, metric)], sb[(key, metric)], alpha=alpha,
                                            sigma_rule=sigma_rule, min_effect_pct=min_effect_pct))
            else:
                rows.append(_compare(metric, key, _values(baseline.runs, key, metric),
                                     _values(candidate.runs, key, metric), alpha=alpha, sigma_rule=sigma_rule,
                                     min_effect_pct=min_effect_pct))
    overall: list[MetricComparison] = []
    paired: list[PairedTest] = []
    summary: list[MetricVerdict] = []
    assumptions: list[str] = []
    for metric in METRICS:
        keys = common[metric]
        if not keys:
            continue
        # per-run means over the rows every run has: a run that lost its warm-up row must not
        # be averaged over fewer (and slower) depths than the others
        every = [k for k in keys if all(any(row_key(r) == k and _speed(r, metric) is not None for r in run)
                                        for run in (*baseline.runs, *candidate.runs))] or keys
        ga = [_geo_run(run, every, metric) for run in baseline.runs]
        gb = [_geo_run(run, every, metric) for run in candidate.runs]
        ga_ok, gb_ok = [g for g in ga if g is not None], [g for g in gb if g is not None]
        ov = _compare(metric, None, ga_ok, gb_ok, alpha=alpha, sigma_rule=sigma_rule, log_space=True,
                      min_effect_pct=min_effect_pct)
        overall.append(ov)
        pt = paired_test(baseline, candidate, metric, alpha=alpha, sigma_rule=sigma_rule,
                         min_effect_pct=min_effect_pct)
        paired.append(pt)
        summary.append(_headline(metric, ov, pt, [r for r in rows if r.metric == metric], one_run=one_run,
                                 min_effect_pct=min_effect_pct))
    if one_run and any(p.n_pairs >= 2 for p in paired):
        n = max(p.n_pairs for p in paired)
        assumptions.append(f"run-to-run noise unknown (one run per side): treating the {n} depths as "
                           "replicates; "
                           "the interval is the spread of the per-depth ratio, not run-to-run noise")
    return CompareReport(baseline=baseline.label, candidate=candidate.label, alpha=alpha,
                         sigma_rule=sigma_rule,
                         min_effect_pct=min_effect_pct, rows=tuple(rows), overall=tuple(overall),
                         paired=tuple(paired),
                         summary=tuple(summary), assumptions=tuple(assumptions),
                         differences=knobs.differences(baseline.settings, candidate.settings),
                         warnings=tuple(warnings),
                         notes=tuple([*(f"baseline: {n}" for n in baseline.notes),
                                      *(f"candidate: {n}" for n in candidate.notes)]),
                         baseline_build=baseline.build, candidate_build=candidate.build,
                         baseline_system_info=baseline.system_info,
                         candidate_system_info=candidate.system_info)


def _headline(metric: Metric, ov: MetricComparison, pt: PairedTest, rows: Sequence[MetricComparison], *,
              one_run: bool, min_effect_pct: float) -> MetricVerdict:
    """Which test answers for this metric: Welch on per-run means with repeats, else the paired test."""
    if not one_run and ov.p_value is not None:
        mv = MetricVerdict(metric=metric, verdict=ov.verdict, change_pct=ov.change_pct,
                           ci_low_pct=ov.ci_low_pct,
                           ci_high_pct=ov.ci_high_pct, p_value=ov.p_value, decided_by="welch",
                           method=f"Welch's t-test on per-run geometric means ({ov.baseline_n} vs "
                                  f"{ov.candidate_n} runs)")
    elif pt.p_value is not None:
        mv = MetricVerdict(metric=metric, verdict=pt.verdict, change_pct=pt.change_pct,
                           ci_low_pct=pt.ci_low_pct,
                           ci_high_pct=pt.ci_high_pct, p_value=pt.p_value, decided_by="paired",
                           method=f"paired t-test on log-ratios across {pt.n_pairs} depths")
    elif len(rows) == 1 and rows[0].p_value is not None:
        r = rows[0]
        mv = MetricVerdict(metric=metric, verdict=r.verdict, change_pct=r.change_pct, ci_low_pct=r.ci_low_pct,
                           ci_high_pct=r.ci_high_pct, p_value=r.p_value, decided_by="welch-summary",
                           method="Welch's t-test on the mean ± sd the tool printed")
    else:
        return MetricVerdict(metric=metric, verdict="no significant change", change_pct=ov.change_pct,
                             ci_low_pct=None,
                             ci_high_pct=None, p_value=None, decided_by="none",
                             method="no test possible: one run per side and one depth in common",
                             near_threshold=abs(ov.change_pct) >= min_effect_pct,
                             recommendation="rerun both with repeats (quantforge sweep compare … --repeat 5)")
    lo, hi = mv.ci_low_pct, mv.ci_high_pct
    near = lo is not None and hi is not None and (lo < -min_effect_pct < hi or lo < min_effect_pct < hi)
    rec = None
    if near or (mv.decided_by == "paired" and mv.verdict != "no significant change"
                and abs(mv.change_pct) < 2 * min_effect_pct):
        near = True
        rec = (f"the interval reaches the {min_effect_pct:g} % threshold: confirm with repeats "
               "(quantforge sweep compare … --repeat 5)")
    return mv.model_copy(update={"near_threshold": near, "recommendation": rec})


def _geo_run(run: Sequence[SweepRow], keys: Sequence[RowKey], metric: str) -> float | None:
    want = set(keys)
    vals = [v for r in run if row_key(r) in want and (v := _speed(r, metric)) is not None]
    return float(np.exp(np.mean(np.log(vals)))) if vals else None


def verdict_name(metric: Literal["pp", "tg"]) -> str:
    return {"pp": "PP", "tg": "TG"}[metric]
