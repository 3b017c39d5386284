"""Typed results of the evaluate stage: perplexity/KLD runs and speed sweeps.

Every number keeps the method it was measured with (corpus hash, context, chunks, batch
sizes, engine, command), because a PPL or a t/s figure without its method cannot be
compared with anything.
"""

from __future__ import annotations

from typing import Literal

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


class SweepRow(_Frozen):
    """One row of a sweep-bench table: PP of ``pp`` tokens and TG of ``tg`` tokens at depth ``n_kv``."""

    pp: int
    tg: int
    n_kv: int
    t_pp: float
    s_pp: float
    t_tg: float
    s_tg: float


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
    """Mean ± sample standard deviation of PP and TG speed at one N_KV over repeated runs."""

    n_kv: int
    pp: int
    tg: int
    n: int
    s_pp_mean: float
    s_pp_std: float
    s_tg_mean: float
    s_tg_std: float


class SweepResult(_Frozen):
    """Repeated sweeps of one configuration: the raw runs and their per-row statistics."""

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


class MetricComparison(_Frozen):
    """Baseline vs candidate for one metric (``pp`` or ``tg`` speed, t/s) at one row or overall."""

    metric: Literal["pp", "tg"]
    n_kv: int | None  # None: overall (geometric mean across rows)
    baseline_mean: float
    baseline_std: float
    baseline_n: int
    candidate_mean: float
    candidate_std: float
    candidate_n: int
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    p_value: float | None
    sigmas: float | None  # |difference| in standard errors of the difference
    verdict: Verdict


class CompareReport(_Frozen):
    baseline: str
    candidate: str
    alpha: float = 0.05
    sigma_rule: float = 3.0
    min_effect_pct: float = 2.0
    method: str = Field(
        default="Welch's t-test (p < alpha), |difference| > 3 standard errors and |change| >= min_effect_pct; "
        "overall: per-run geometric mean across rows"
    )
    rows: tuple[MetricComparison, ...]
    overall: tuple[MetricComparison, ...]
