"""Typed results of the evaluate stage: perplexity/KLD runs and speed sweeps.

Every number keeps the method it was measured with (corpus hash, context, chunks, batch
sizes, engine, command), because a PPL or a t/s figure without its method cannot be
compared with anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EvalEngine = Literal["ik", "mainline", "bundled"]
Verdict = Literal["regression", "improvement", "no significant change"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KLDStats(_Frozen):
    """The statistics block ``llama-perplexity --kl-divergence`` prints at the end (both engines).

    Percent quantities (Δp, same top token) are stored in percent, as printed.
    Percentile keys are the printed labels without the ``%``: ``"99.9"``, ``"1.0"``.
    """

    ppl: float
    ppl_err: float
    ppl_base: float
    ppl_base_err: float
    cor_ln_ppl_pct: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    ppl_diff: float
    ppl_diff_err: float
    mean: float
    mean_err: float
    median: float
    maximum: float
    minimum: float
    percentiles: dict[str, float]
    dp_mean_pct: float
    dp_mean_pct_err: float
    dp_median_pct: float
    dp_max_pct: float
    dp_min_pct: float
    dp_percentiles_pct: dict[str, float]
    rms_dp_pct: float
    rms_dp_pct_err: float
    same_top_pct: float
    same_top_pct_err: float


class KLDChunkRow(_Frozen):
    """One line of the per-chunk KLD table (running values after that chunk)."""

    chunk: int
    ppl: float
    ppl_err: float
    ln_ratio: float
    ln_ratio_err: float
    kld: float
    kld_err: float
    rms_dp_pct: float
    rms_dp_pct_err: float
    same_top_pct: float
    same_top_pct_err: float


class PerplexityLog(_Frozen):
    """What a ``llama-perplexity`` log says (plain PPL run or KLD run)."""

    mode: Literal["ppl", "kld"]
    ppl: float
    ppl_err: float
    n_chunks: int
    n_ctx: int | None = None
    n_batch: int | None = None
    n_seq: int | None = None
    chunk_ppl: tuple[float, ...] = ()
    kld_chunks: tuple[KLDChunkRow, ...] = ()
    kld: KLDStats | None = None
    n_threads: int | None = None
    build: str | None = None
    saved_logits: str | None = None


class BaseLogitsInfo(_Frozen):
    """A cached ``--kl-divergence-base`` file and the key it was computed for."""

    path: str
    model_sha256: str
    corpus_sha256: str
    ctx: int
    chunks: int
    n_vocab: int
    engine: str
    bytes: int


class EvalResult(_Frozen):
    """One PPL (and optionally KLD) measurement of one model, with its method."""

    model: str
    model_sha256: str
    model_bytes: int
    engine: EvalEngine
    binary: str | None = None
    engine_commit: str | None = None
    command: list[str] | None = None
    corpus: str | None = None
    corpus_sha256: str
    ctx: int
    chunks: int
    n_tokens_scored: int
    batch: int | None = None
    ubatch: int | None = None
    threads: int
    ppl: float
    ppl_err: float
    chunk_ppl: tuple[float, ...] = ()
    kld: KLDStats | None = None
    base: str | None = None
    base_sha256: str | None = None
    wall_s: float
    created: str
    node: dict[str, Any] | None = None  # run on a cluster (--cluster): the Ray node (id, ip, hostname)


class SweepRow(_Frozen):
    """One row of a sweep table: PP of ``pp`` tokens and TG of ``tg`` tokens at depth ``n_kv``.

    A speed the source did not measure is ``None`` (a llama-bench ``pp512`` test has no TG half),
    never NaN: results are written as strict JSON.
    """

    pp: int
    tg: int
    n_kv: int
    t_pp: float | None
    s_pp: float | None
    t_tg: float | None
    s_tg: float | None


class BenchRow(_Frozen):
    """One test of ``llama-bench`` (``pp512``, ``tg128``, ``pp512 @ d4096`` …)."""

    test: str
    n_prompt: int
    n_gen: int
    n_depth: int = 0
    avg_ts: float
    stddev_ts: float
    samples_ts: tuple[float, ...] = ()
    model_type: str | None = None
    backend: str | None = None
    threads: int | None = None


class RowStats(_Frozen):
    """Mean ± sample standard deviation of PP and TG speed at one N_KV over repeated runs.

    ``None``: that speed was not measured at this row (or the spread is unknown).
    """

    n_kv: int
    pp: int
    tg: int
    n: int
    s_pp_mean: float | None
    s_pp_std: float | None
    s_tg_mean: float | None
    s_tg_std: float | None


class ReportedSpread(_Frozen):
    """Mean ± sd a tool printed for one row when its repetitions are not in the output.

    ``llama-bench -o md`` prints ``avg ± stddev`` of its ``-r`` repetitions but not the samples;
    ``n`` is the repetition count (from the pasted command's ``-r``, else llama-bench's default 5,
    which ``n_assumed`` says).
    """

    n_kv: int
    pp: int
    tg: int
    metric: Literal["pp", "tg"]
    mean: float
    std: float
    n: int
    n_assumed: bool


class SweepResult(_Frozen):
    """Repeated sweeps of one configuration: the raw runs and their per-row statistics.

    ``settings`` are the knobs the source states (canonical names: ``ub``, ``b``, ``t``, ``fa``,
    ``mla``, ``amb``, ``rtr``, ``ot``, ``ngl``, ``c``, ``ctk``, ``ctv``, ``fmoe``, ``model`` …),
    ``build`` the engine's version/commit and ``system_info`` its CPU/GPU feature line, when the
    output says them; ``notes`` what was done to the input (warm-up rows dropped, assumptions).
    """

    label: str
    model: str | None = None
    model_sha256: str | None = None
    engine: EvalEngine
    binary: str | None = None
    engine_commit: str | None = None
    command: list[str] | None = None
    ctx: int
    ubatch: int
    batch: int | None = None
    tg: int
    threads: int | None = None
    runs: tuple[tuple[SweepRow, ...], ...]
    summary: tuple[RowStats, ...]
    raw_jsonl: str | None = None
    created: str
    source_format: str | None = None
    settings: dict[str, str] = Field(default_factory=dict)
    build: str | None = None
    system_info: str | None = None
    spread: tuple[ReportedSpread, ...] = ()
    notes: tuple[str, ...] = ()
    node: dict[str, Any] | None = None  # run on a cluster (--cluster): the Ray node (id, ip, hostname, rig)


Metric = Literal["pp", "tg"]


class MetricComparison(_Frozen):
    """Baseline vs candidate for one metric (``pp`` or ``tg`` speed, t/s) at one row or overall.

    ``ci_low_pct``/``ci_high_pct``/``p_value``/``sigmas`` are ``None`` when they are undefined (one
    run per side: no run-to-run variance), and ``why`` says so.
    """

    metric: Metric
    n_kv: int | None  # None: overall (geometric mean across rows)
    pp: int | None = None
    tg: int | None = None
    baseline_mean: float
    baseline_std: float | None
    baseline_n: int
    candidate_mean: float
    candidate_std: float | None
    candidate_n: int
    change_pct: float
    ci_low_pct: float | None
    ci_high_pct: float | None
    p_value: float | None
    sigmas: float | None  # |difference| in standard errors of the difference
    verdict: Verdict
    test: str = "welch"  # welch | welch-summary (tool-reported mean ± sd) | none
    why: str | None = None


class PairedTest(_Frozen):
    """Rows paired by depth: a t-test on the per-depth log-ratios candidate/baseline.

    With one run per side the depths are the replicates (the spread of the ratio across depths
    stands in for the unknown run-to-run noise); with repeats each depth contributes the ratio of
    its geometric means. The Wilcoxon signed-rank and the sign test check the t-test without
    assuming normality; ``rank_floor_p`` is the smallest p-value the signed-rank test can reach
    with this many depths (2 / 2^n).
    """

    metric: Metric
    n_pairs: int
    depths: tuple[int, ...]
    change_pct: float  # geometric mean ratio - 1, in %
    ci_low_pct: float | None
    ci_high_pct: float | None
    t: float | None
    df: int | None
    p_value: float | None
    signed_rank_p: float | None
    sign_test_p: float | None
    rank_floor_p: float | None
    n_faster: int
    n_slower: int
    min_ratio_pct: float  # the smallest and largest per-depth change, in %
    max_ratio_pct: float
    verdict: Verdict
    why: str | None = None


class MetricVerdict(_Frozen):
    """The answer for one metric: verdict, change, interval and the test that decided it."""

    metric: Metric
    verdict: Verdict
    change_pct: float
    ci_low_pct: float | None
    ci_high_pct: float | None
    p_value: float | None
    #: "paired t-test on log-ratios across 8 depths" |
    #: "Welch's t-test on per-run geometric means (3 vs 3 runs)"
    method: str
    decided_by: Literal["paired", "welch", "welch-summary", "none"]
    near_threshold: bool = False
    recommendation: str | None = None


class SettingDifference(_Frozen):
    """One knob that differs between the two results (``None``: the source does not state it)."""

    knob: str
    baseline: str | None
    candidate: str | None


class CompareReport(_Frozen):
    baseline: str
    candidate: str
    alpha: float = 0.05
    sigma_rule: float = 3.0
    min_effect_pct: float = 2.0
    method: str = Field(
        default="Welch's t-test (p < alpha), |difference| > 3 standard errors and |change| >= "
                "min_effect_pct; "
        "overall: per-run geometric mean across rows"
    )
    rows: tuple[MetricComparison, ...]
    overall: tuple[MetricComparison, ...]
    paired: tuple[PairedTest, ...] = ()
    summary: tuple[MetricVerdict, ...] = ()
    differences: tuple[SettingDifference, ...] = ()
    warnings: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    baseline_build: str | None = None
    candidate_build: str | None = None
    baseline_system_info: str | None = None
    candidate_system_info: str | None = None


class VaryPoint(_Frozen):
    """One value of a varied knob: PP and TG as the geometric mean over each run's rows, mean ± sd of runs."""

    value: str
    label: str
    runs: int
    rows: int
    pp_mean: float | None
    pp_std: float | None
    tg_mean: float | None
    tg_std: float | None


class VaryReport(_Frozen):
    """``quantforge sweep --vary KNOB=V1,V2,…``: the same sweep at each value, interleaved."""

    knob: str
    values: tuple[str, ...]
    points: tuple[VaryPoint, ...]
    results: tuple[SweepResult, ...]
    best_pp: str | None
    best_tg: str | None
    plot: tuple[str, ...] = ()
