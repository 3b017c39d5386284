"""Parsers on every real ik_llama.cpp log in ../shared/fixtures/ik: parsed numbers equal the printed ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantforge.errors import EvalError
from quantforge.evaluate.parsers import (
    bench_to_sweep_rows,
    parse_bench_json,
    parse_bench_markdown,
    parse_perplexity_log,
    parse_sweep,
    parse_sweep_jsonl,
    parse_sweep_markdown,
)


def _log(ik_fixtures: Path, name: str) -> str:
    return (ik_fixtures / "logs" / f"{name}.log").read_text(encoding="utf-8")


def test_ppl_base_log(ik_fixtures: Path) -> None:
    r = parse_perplexity_log(_log(ik_fixtures, "ppl-f16-kld-base"))
    assert (r.mode, r.ppl, r.ppl_err, r.n_chunks, r.n_ctx) == ("ppl", 5.6357, 0.06192, 199, 512)
    assert (r.n_batch, r.n_seq, r.n_threads, r.build) == (2048, 4, 16, "0 (unknown)")
    assert r.saved_logits == "smol-f16.logits"
    assert len(r.chunk_ppl) == 199
    assert r.chunk_ppl[:4] == (10.7247, 9.8740, 6.6294, 5.1161)
    assert r.chunk_ppl[-1] == 5.6357
    assert r.kld is None


def test_ppl_custom_log(ik_fixtures: Path) -> None:
    r = parse_perplexity_log(_log(ik_fixtures, "ppl-custom"))
    assert (r.ppl, r.ppl_err, r.n_chunks) == (5.9140, 0.06515, 199)
    assert r.chunk_ppl[0] == 10.8736 and r.chunk_ppl[-1] == 5.9140


# (log, Mean PPL(Q), ± , Mean KLD, ±, Same top p, ±, RMS Δp, Maximum KLD, 99.9% KLD, Median KLD)
KLD_LOGS = [
    ("kld-Q4_K_M", 6.033735, 0.066612, 0.053070, 0.000348, 90.299, 0.131),
    ("kld-IQ4_K", 5.708859, 0.062688, 0.031121, 0.000222, 92.541, 0.117),
    ("kld-custom", 5.913976, 0.065147, 0.060173, 0.000389, 89.853, 0.134),
    ("kld-r4", 5.687264, 0.062599, 0.017593, 0.000151, 94.226, 0.104),
    ("gpu-kld-custom", 5.904426, 0.065111, 0.059606, 0.000385, 89.893, 0.134),
]


@pytest.mark.parametrize("name,ppl,ppl_err,kld,kld_err,top,top_err", KLD_LOGS)
def test_kld_logs(ik_fixtures: Path, name: str, ppl: float, ppl_err: float, kld: float, kld_err: float,
                  top: float, top_err: float) -> None:
    r = parse_perplexity_log(_log(ik_fixtures, name))
    assert r.mode == "kld" and r.kld is not None
    assert (r.ppl, r.ppl_err) == (ppl, ppl_err)
    assert (r.kld.mean, r.kld.mean_err) == (kld, kld_err)
    assert (r.kld.same_top_pct, r.kld.same_top_pct_err) == (top, top_err)
    assert r.kld.ppl_base == 5.635702 and r.kld.ppl_base_err == 0.061922
    assert len(r.kld_chunks) == 199 and r.kld_chunks[-1].chunk == 199
    assert r.kld_chunks[-1].ppl == round(ppl, 4)
    assert set(r.kld.percentiles) == {"99.9", "99.0", "95.0", "90.0", "10.0", "5.0", "1.0", "0.1"}
    assert set(r.kld.dp_percentiles_pct) == {"99.9", "99.0", "95.0", "90.0", "75.0", "25.0", "10.0", "5.0",
                                             "1.0", "0.1"}


def test_kld_custom_every_number(ik_fixtures: Path) -> None:
    r = parse_perplexity_log(_log(ik_fixtures, "kld-custom"))
    k = r.kld
    assert k is not None
    assert k.cor_ln_ppl_pct == 98.84
    assert (k.ln_ppl_ratio, k.ln_ppl_ratio_err) == (0.048197, 0.001677)
    assert (k.ppl_ratio, k.ppl_ratio_err) == (1.049377, 0.001759)
    assert (k.ppl_diff, k.ppl_diff_err) == (0.278274, 0.010201)
    assert (k.maximum, k.median, k.minimum) == (3.183883, 0.035390, 0.000003)
    assert k.percentiles == {"99.9": 0.887179, "99.0": 0.371523, "95.0": 0.193008, "90.0": 0.139320,
                             "10.0": 0.002500, "5.0": 0.001095, "1.0": 0.000210, "0.1": 0.000035}
    assert (k.dp_mean_pct, k.dp_mean_pct_err) == (-1.400, 0.031)
    assert (k.dp_max_pct, k.dp_median_pct, k.dp_min_pct) == (71.636, -0.248, -87.635)
    assert k.dp_percentiles_pct["75.0"] == 0.514 and k.dp_percentiles_pct["0.1"] == -41.686
    assert (k.rms_dp_pct, k.rms_dp_pct_err) == (7.039, 0.053)
    row = r.kld_chunks[0]
    assert (row.chunk, row.ppl, row.ppl_err, row.ln_ratio, row.ln_ratio_err) == (1, 10.8736, 1.9192, 0.01380,
                                                                                 0.02743)
    assert (row.kld, row.kld_err, row.rms_dp_pct, row.rms_dp_pct_err) == (0.06748, 0.00390, 6.717, 0.485)
    assert (row.same_top_pct, row.same_top_pct_err) == (86.275, 2.159)


def test_imatrix_log_final_estimate(ik_fixtures: Path) -> None:
    # llama-imatrix prints the mainline-style "Final estimate: PPL = x +/- y" line
    r = parse_perplexity_log(_log(ik_fixtures, "imatrix"))
    assert (r.ppl, r.ppl_err) == (5.8385, 0.14145)


def test_unfinished_log_is_an_error(ik_fixtures: Path) -> None:
    text = _log(ik_fixtures, "ppl-custom")
    cut = text[: text.index("Final estimate")]
    with pytest.raises(EvalError, match="did not finish"):
        parse_perplexity_log(cut)


SWEEPS = [
    # name, rows, first row, last row
    ("sweep-cpu", 8, (512, 128, 0, 0.141, 3631.51, 0.266, 480.98), (512, 128, 3584, 0.325, 1575.84, 0.476,
                                                                    268.90)),
    ("sweep-cpu-rtr", 8, (512, 128, 0, 0.172, 2977.68, 0.225, 568.10), None),
    ("gpu-sweep-full", 8, (512, 128, 0, 0.109, 4705.58, 0.152, 843.29), None),
    ("gpu-sweep-hybrid-ub512", 8, (512, 128, 0, 0.083, 6143.66, 0.338, 378.69), None),
    ("gpu-sweep-hybrid-ub2048", 2, (2048, 512, 0, 0.097, 21129.96, 1.437, 356.22),
     (2048, 512, 2048, 0.033, 61161.71, 1.467, 349.05)),
]


def _tuple(r: object) -> tuple[float, ...]:
    return tuple(getattr(r, k) for k in ("pp", "tg", "n_kv", "t_pp", "s_pp", "t_tg", "s_tg"))


@pytest.mark.parametrize("name,n,first,last", SWEEPS)
def test_sweep_logs(ik_fixtures: Path, name: str, n: int, first: tuple[float, ...],
                    last: tuple[float, ...] | None) -> None:
    rows = parse_sweep(_log(ik_fixtures, name))
    assert len(rows) == n
    assert _tuple(rows[0]) == first
    if last:
        assert _tuple(rows[-1]) == last
    step = rows[0].pp
    assert [r.n_kv for r in rows] == [i * step for i in range(n)]


def test_sweep_jsonl_roundtrip(ik_fixtures: Path) -> None:
    import json

    rows = parse_sweep_markdown(_log(ik_fixtures, "sweep-cpu"))
    jl = "\n".join(
        json.dumps({"n_kv_max": 4096, "pp": r.pp, "tg": r.tg, "n_kv": r.n_kv, "t_pp": r.t_pp,
                    "speed_pp": r.s_pp,
                    "t_tg": r.t_tg, "speed_tg": r.s_tg})
        for r in rows
    )
    assert parse_sweep_jsonl("log line\n" + jl) == rows
    assert parse_sweep(jl) == rows


def test_sweep_without_table_is_an_error(ik_fixtures: Path) -> None:
    with pytest.raises(EvalError, match="no sweep-bench JSONL rows"):
        parse_sweep(_log(ik_fixtures, "ppl-custom"))


def test_bench_json_cpu(ik_fixtures: Path) -> None:
    rows = parse_bench_json(_log(ik_fixtures, "bench-cpu-json"))
    assert [r.test for r in rows] == ["pp512", "tg128"]
    pp, tg = rows
    assert (pp.avg_ts, pp.stddev_ts, pp.samples_ts) == (3182.089539, 48.939122, (3128.15, 3194.46, 3223.66))
    assert (tg.avg_ts, tg.stddev_ts, tg.samples_ts) == (535.002595, 9.040705, (527.458, 532.526, 545.023))
    assert (pp.backend, pp.threads, pp.model_type) == ("CPU", 16, "llama ?B IQ4_K - 4.5 bpw")
    sweep = bench_to_sweep_rows(rows)
    assert len(sweep) == 1 and (sweep[0].pp, sweep[0].tg, sweep[0].n_kv) == (512, 128, 0)
    assert (sweep[0].s_pp, sweep[0].s_tg) == (3182.089539, 535.002595)


def test_bench_json_gpu(ik_fixtures: Path) -> None:
    rows = parse_bench_json(_log(ik_fixtures, "gpu-bench-json"))
    assert [(r.test, r.avg_ts, r.backend) for r in rows] == [("pp512", 36464.669139, "CUDA"),
                                                             ("tg128", 856.186265, "CUDA")]
    assert rows[0].samples_ts == (6548.15, 50490.5, 52355.3)


@pytest.mark.parametrize("name,backend,pp,tg", [
    ("bench-cpu-md", "CPU", (3563.57, 25.55), (523.18, 6.38)),
    ("gpu-bench-md", "CUDA", (36964.72, 26832.40), (862.70, 6.37)),
])
def test_bench_markdown(ik_fixtures: Path, name: str, backend: str, pp: tuple[float, float],
                        tg: tuple[float, float]) -> None:
    rows = parse_bench_markdown(_log(ik_fixtures, name))
    assert [(r.test, r.n_prompt, r.n_gen, r.backend) for r in rows] == [("pp512", 512, 0, backend),
                                                                        ("tg128", 0, 128, backend)]
    assert (rows[0].avg_ts, rows[0].stddev_ts) == pp
    assert (rows[1].avg_ts, rows[1].stddev_ts) == tg


def test_bench_markdown_depth() -> None:
    text = (
        "| model | size | params | backend | threads | test | t/s |\n"
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |\n"
        "| llama 135M Q8_0 | 136.73 MiB | 134.52 M | CPU | 2 | pp128 @ d256 | 310.11 ± 2.50 |\n"
        "| llama 135M Q8_0 | 136.73 MiB | 134.52 M | CPU | 2 | tg16 @ d256 | 40.02 ± 0.31 |\n"
    )
    rows = parse_bench_markdown(text)
    assert [(r.n_prompt, r.n_gen, r.n_depth, r.threads) for r in rows] == [(128, 0, 256, 2), (0, 16, 256, 2)]
    (row,) = bench_to_sweep_rows(rows)
    assert (row.pp, row.tg, row.n_kv, row.s_pp, row.s_tg) == (128, 16, 256, 310.11, 40.02)
