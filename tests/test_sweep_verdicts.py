"""Verdicts on tables users paste: one run per side (rows paired by depth), llama-bench mean ± sd, strict
JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from support import pasted_tables as P

from quantforge.cli import main
from quantforge.evaluate.stats import compare, paired_test
from quantforge.evaluate.sweep import load_result


def _strict(text: str) -> dict:  # type: ignore[type-arg]
    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)  # type: ignore[arg-type]


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


def test_two_pasted_sweep_tables_one_run_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PR #518's two tables (ik PR vs mainline, 5 depths): mainline's PP is a paired regression, TG is not."""
    ik = _write(tmp_path, "ik.md", P.PR518_IK)
    ml = _write(tmp_path, "mainline.md", P.PR518_MAINLINE)
    rc = main(["sweep", "compare", str(ik), str(ml), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = _strict(cap.out)
    pp, tg = rep["summary"]
    a = np.array([295.36, 283.62, 275.73, 268.74, 261.97])
    b = np.array([28.04, 27.37, 26.88, 26.28, 26.03])
    d = np.log(b / a)
    ref = sps.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert (pp["metric"], pp["verdict"], pp["decided_by"]) == ("pp", "regression", "paired")
    assert pp["change_pct"] == pytest.approx((math.exp(d.mean()) - 1) * 100, rel=1e-12)
    assert pp["ci_low_pct"] == pytest.approx((math.exp(ci.low) - 1) * 100, rel=1e-9)
    assert pp["ci_high_pct"] == pytest.approx((math.exp(ci.high) - 1) * 100, rel=1e-9)
    assert pp["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert pp["method"] == "paired t-test on log-ratios across 5 depths"
    assert round(pp["change_pct"], 1) == -90.3
    paired_pp = rep["paired"][0]
    assert paired_pp["n_slower"] == 5 and paired_pp["rank_floor_p"] == 2 / 32
    assert paired_pp["signed_rank_p"] == pytest.approx(sps.wilcoxon(d).pvalue)
    assert paired_pp["sign_test_p"] == pytest.approx(2 / 32)
    assert (tg["metric"], tg["verdict"]) == ("tg", "no significant change")
    assert tg["near_threshold"] is True and "confirm with repeats" in tg["recommendation"]
    assert rep["assumptions"] == ["run-to-run noise unknown (one run per side): treating the 5 depths as "
                                  "replicates; the interval is the spread of the per-depth ratio, not "
                                  "run-to-run noise"]
    # one run per side: per-row intervals do not exist, and say so (null, never NaN)
    assert all(r["ci_low_pct"] is None and r["p_value"] is None and r["test"] == "none" for r in rep["rows"])
    assert rep["rows"][0]["why"].startswith("one run per side: no run-to-run variance")

    rc = main(["sweep", "compare", str(ik), str(ml)])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(x for x in out.splitlines() if x.startswith("PP: "))
    assert line.startswith(f"PP: regression, -90.3 % (95 % CI {pp['ci_low_pct']:+.1f} % .. "
                           f"{pp['ci_high_pct']:+.1f} %;"
                           " paired t-test on log-ratios across 5 depths, p = ")
    assert "5 of 5 depths slower" in line
    assert next(x for x in out.splitlines() if x.startswith("TG: ")).startswith("TG: no significant "
                                                                                "change, -0.6 %")
    assert ("assumption: run-to-run noise unknown (one run per side): "
            "treating the 5 depths as replicates") in out
    assert ("n/a: one run per side: no run-to-run variance, "
            "so no interval or test here (1 vs 1 run) (JSON: null)") in out
    # the other way round it is an improvement of the same size
    rc = main(["sweep", "compare", str(ml), str(ik), "--json"])
    back = _strict(capsys.readouterr().out)
    assert back["summary"][0]["verdict"] == "improvement"
    assert back["summary"][0]["change_pct"] == pytest.approx((math.exp(-d.mean()) - 1) * 100, rel=1e-12)


def test_paired_test_needs_consistent_signs_and_the_minimum_effect(tmp_path: Path) -> None:
    base = load_result(_write(tmp_path, "q4.md", P.PR602_Q4_0))
    # the same table against itself: no change at all
    same = paired_test(base, base, "pp")
    assert (same.change_pct, same.verdict, same.n_pairs) == (0.0, "no significant change", 9)
    # 1.5 % faster at every depth is consistent but below the 2 % minimum effect
    faster = base.model_copy(update={"runs": tuple(tuple(r.model_copy(update={"s_pp": r.s_pp * 1.015})
                                                         for r in run) for run in base.runs)})
    small = paired_test(base, faster, "pp")
    assert small.change_pct == pytest.approx(1.5) and small.verdict == "no significant change"
    assert small.why == "the change is smaller than the 2 % minimum effect"
    assert paired_test(base, faster, "pp", min_effect_pct=1.0).verdict == "improvement"


def test_pasted_llama_bench_mean_sd_builds_of_one_paste(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #1258: ik vs mainline llama-bench in one paste; TG 3x better on mainline, PP worse."""
    f = _write(tmp_path, "i1258.md", P.ISSUE1258)
    rc = main(["sweep", "compare", str(f), str(f), "--a-select", "build=1ec12b8e", "--b-select",
               "build=22cae8321",
               "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = _strict(cap.out)
    pp, tg = rep["summary"]
    assert (pp["verdict"], tg["verdict"]) == ("regression", "improvement")
    assert pp["decided_by"] == tg["decided_by"] == "welch-summary"
    ref = sps.ttest_ind_from_stats(8.07, 1.61, 5, 2.54, 0.01, 5, equal_var=False)
    assert tg["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert tg["change_pct"] == pytest.approx((8.07 / 2.54 - 1) * 100)
    assert (rep["baseline_build"], rep["candidate_build"]) == ("1ec12b8e (4180)", "22cae8321 (7951)")
    row = rep["rows"][0]
    assert row["test"] == "welch-summary" and row["baseline_n"] == row["candidate_n"] == 5
    assert row["why"] == ("from the mean ± sd the tool printed, n = 5 vs 5 repetitions assumed "
                          "(llama-bench's default -r)")


def test_old_llama_bench_regression_between_two_builds(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #5986: pp 32 of Q4_0 fell from 11.19 ± 0.05 to 7.48 ± 0.07 t/s between two builds."""
    f = _write(tmp_path, "i5986.md", P.ISSUE5986)
    rc = main(["sweep", "compare", str(f), str(f), "--select", "model=Q4_0", "--a-select", "table=1",
               "--b-select", "table=2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "PP: regression, -33.2 % (95 % CI " in out
    assert "Welch's t-test on the mean ± sd the tool printed" in out
    assert not any(x.startswith("TG: ") for x in out.splitlines())  # the paste has no TG test


def test_one_depth_one_run_cannot_be_tested(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #523: TG 4.32 -> 5.43 t/s at one depth, one run each: the report says no test is possible."""
    f = _write(tmp_path, "i523.md", P.ISSUE523)
    rc = main(["sweep", "compare", str(f), str(f), "--a-select", "table=2", "--b-select", "table=1",
               "--json"])
    rep = _strict(capsys.readouterr().out)
    assert rc == 0
    tg = rep["summary"][1]
    assert (tg["verdict"], tg["decided_by"], tg["ci_low_pct"], tg["p_value"]) == (
        "no significant change", "none", None, None)
    assert tg["change_pct"] == pytest.approx((5.43 / 4.32 - 1) * 100)
    assert tg["method"] == "no test possible: one run per side and one depth in common"
    assert tg["recommendation"] == "rerun both with repeats (quantforge sweep compare … --repeat 5)"
    assert rep["paired"][1]["why"] == "1 depth in common: a paired test needs at least 2"


def test_flag_differences_come_first(ik_fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = ik_fixtures / "logs"
    rc = main(["sweep", "compare", str(logs / "sweep-cpu.log"), str(logs / "sweep-cpu-rtr.log")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[1:3] == ["settings that differ (a speed change they explain is not the build's):",
                        "  -rtr: off -> on"]
    assert out[4].startswith("PP: regression, -18.7 % (95 % CI -22.7 % .. -14.4 %; paired t-test on "
                             "log-ratios "
                             "across 8 depths")
    rc = main(["sweep", "compare", str(logs / "gpu-sweep-hybrid-ub512.log"),
               str(logs / "gpu-sweep-hybrid-ub2048.log"),
               "--json"])
    assert rc == 2  # no common row: -ub 512 and -ub 2048 measure PP of different sizes


def test_compare_json_is_strict_even_with_missing_halves(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    a = load_result(_write(tmp_path, "a.md", P.ISSUE5986), select={"table": "1", "model": "Q4_0"})
    b = load_result(_write(tmp_path, "b.md", P.ISSUE5986), select={"table": "2", "model": "Q4_0"})
    rep = compare(a, b)
    text = rep.model_dump_json()
    assert "NaN" not in text and "Infinity" not in text
    assert [m.metric for m in rep.rows] == ["pp"] and [s.metric for s in rep.summary] == ["pp"]
    res = json.loads(a.model_dump_json())
    assert res["runs"][0][0]["s_tg"] is None and res["summary"][0]["s_tg_mean"] is None
