"""Speed sweeps: statistics, compare verdicts, the bundled CPU sweep through libllama, JSONL and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats as sps

from quantforge.cli import main
from quantforge.errors import InputError
from quantforge.evaluate.models import SweepResult, SweepRow
from quantforge.evaluate.stats import compare, summarize, welch
from quantforge.evaluate.sweep import load_result, read_raw_jsonl


def _result(label: str, runs: list[list[tuple[float, float]]]) -> SweepResult:
    rr = tuple(
        tuple(SweepRow(pp=128, tg=16, n_kv=i * 128, t_pp=128 / pp, s_pp=pp, t_tg=16 / tg,
                       s_tg=tg) for i, (pp, tg) in enumerate(run))
        for run in runs
    )
    return SweepResult(label=label, engine="bundled", ctx=512, ubatch=128, tg=16, runs=rr,
                       summary=summarize(rr),
                       created="2026-01-01T00:00:00+00:00")


def test_summarize_mean_and_sample_std() -> None:
    r = _result("a", [[(100, 10), (90, 9)], [(102, 11), (92, 9)], [(98, 12), (88, 9)]])
    s0, s1 = r.summary
    assert (s0.n_kv, s0.n, s0.s_pp_mean, s0.s_pp_std) == (0, 3, 100.0, 2.0)
    assert (s0.s_tg_mean, s0.s_tg_std) == (11.0, 1.0)
    assert (s1.n_kv, s1.s_pp_mean, s1.s_pp_std, s1.s_tg_std) == (128, 90.0, 2.0, 0.0)


def test_welch_matches_scipy() -> None:
    a, b = [100.0, 103.0, 98.0, 101.0], [106.0, 109.0, 104.0]
    diff, lo, hi, p, sig = welch(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert diff == pytest.approx(106.33333333333333 - 100.5)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)
    assert sig == pytest.approx(abs(ref.statistic), rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_verdicts() -> None:
    base = _result("base", [[(100, 10)] * 4, [(101, 10.1)] * 4, [(99, 9.9)] * 4])
    faster = _result("fast", [[(120, 12)] * 4, [(121, 12.1)] * 4, [(119, 11.9)] * 4])
    noisy = _result("noisy", [[(100.5, 10.05)] * 4, [(99.2, 9.95)] * 4, [(100.4, 10.0)] * 4])
    up = compare(base, faster)
    assert {m.verdict for m in up.rows} == {"improvement"} and {m.verdict
                                                                for m in up.overall} == {"improvement"}
    pp = up.overall[0]
    assert pp.metric == "pp" and pp.change_pct == pytest.approx(20.0, abs=0.01)
    assert pp.ci_low_pct < 20.0 < pp.ci_high_pct
    down = compare(faster, base)
    assert {m.verdict for m in down.overall} == {"regression"} and down.overall[1].change_pct < 0
    same = compare(base, noisy)
    assert {m.verdict for m in [*same.rows, *same.overall]} == {"no significant change"}
    # one run each: nothing can be said
    single = compare(_result("a", [[(100, 10)]]), _result("b", [[(150, 15)]]))
    assert {m.verdict
            for m in single.overall} == {"no significant change"} and single.overall[0].p_value is None


def test_compare_fixture_logs(ik_fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stored results can be tool logs: the ik CPU sweep without and with -rtr."""
    logs = ik_fixtures / "logs"
    rc = main(["sweep", "compare", str(logs / "sweep-cpu.log"), str(logs / "sweep-cpu-rtr.log"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads(out)
    assert [(r["n_kv"], r["metric"]) for r in rep["rows"][:2]] == [(0, "pp"), (0, "tg")]
    first = rep["rows"][0]
    assert (first["baseline_mean"], first["candidate_mean"]) == (3631.51, 2977.68)
    assert first["change_pct"] == pytest.approx((2977.68 / 3631.51 - 1) * 100)
    assert {r["verdict"] for r in rep["rows"]
            + rep["overall"]} == {"no significant change"}  # n = 1: no test possible


@pytest.fixture(scope="module")
def q8(smol_f16: Path, ik_quantize: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess

    dst = tmp_path_factory.mktemp("sweep") / "smol-Q8_0.gguf"
    subprocess.run([str(ik_quantize), str(smol_f16), str(dst), "Q8_0", "2"], check=True, capture_output=True)
    return dst


def test_bundled_sweep_three_runs_jsonl_and_plot(q8: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q8.json"
    rc = main(["sweep", "--model", str(q8), "--repeat", "3", "--ctx", "512", "--ubatch", "128", "--tg", "16",
               "--threads", "2", "-o", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = SweepResult.model_validate_json(out.read_text())
    assert json.loads(cap.out)["label"] == res.label == "smol-Q8_0"
    assert len(res.runs) == 3 and [len(r) for r in res.runs] == [4, 4, 4]
    assert [s.n_kv for s in res.summary] == [0, 128, 256, 384] and {s.n for s in res.summary} == {3}
    assert all(r.pp == 128 and r.tg == 16 and r.s_pp > 0 and r.s_tg > 0 for run in res.runs for r in run)
    assert all(r.s_pp == pytest.approx(128 / r.t_pp) for run in res.runs for r in run)
    raw = tmp_path / "q8.jsonl"
    assert res.raw_jsonl == str(raw)
    lines = raw.read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["run"] == 0
    assert read_raw_jsonl(raw)["smol-Q8_0"] == [list(r) for r in res.runs]
    again = load_result(raw)  # the raw runs read back as a result of their own
    assert again.runs == res.runs and again.source_format == "quantforge-jsonl"

    rc = main(["plot", "sweep", str(out), "-o", str(tmp_path / "speed")])
    assert rc == 0
    png, svg = tmp_path / "speed.png", tmp_path / "speed.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert b"<svg" in svg.read_bytes()[:2000]


def test_compare_interleaved_run_records_every_run(q8: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # 4 repeats run A B, B A, A B, B A after one discarded warm-up run of each. Whether A vs A is
    # "no significant change" (and fewer threads a regression) is a timing question: it is
    # measured side by side in bench/sweep_ab.py, not asserted here.
    rc = main(["sweep", "compare", "--model", str(q8), "--a", "threads=1", "--b", "threads=1", "--repeat",
               "4",
               "--ctx", "256", "--ubatch", "64", "--tg", "8", "--alpha", "0.001",
               "-o", str(tmp_path / "same.json"), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert [m["metric"] for m in rep["overall"]] == ["pp", "tg"]
    assert all(m["baseline_n"] == m["candidate_n"] == 4 and m["test"] == "welch" for m in rep["overall"])
    assert all(isinstance(m["ci_low_pct"], float) and m["ci_low_pct"] <= m["change_pct"] <= m["ci_high_pct"]
               for m in rep["overall"])
    assert [s["decided_by"] for s in rep["summary"]] == ["welch", "welch"]
    assert rep["alpha"] == 0.001 and rep["min_effect_pct"] == 2.0
    assert rep["differences"] == [] and rep["warnings"] == []
    assert "baseline: 1 warm-up run discarded" in rep["notes"]
    assert len((tmp_path / "same.jsonl").read_text().splitlines()) == 2 * 4 * 4
    assert json.loads((tmp_path / "same.json").read_text()) == rep


def test_sweep_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sweep", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"quantforge: error: {tmp_path / 'a.json'}: sweep result not found "
                               "(pass a JSON written by 'quantforge sweep' or a sweep-bench log)"]
    rc = main(["sweep", "--cmd", str(tmp_path / "llama-sweep-bench") + " -m x.gguf", "--engine", "ik"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "llama-sweep-bench not found" in err[0]
    (tmp_path / "old.json").write_text("{}")
    rc = main(["sweep", "--model", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "old.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"quantforge: error: {tmp_path / 'old.json'}: output exists (pass --force to "
                               "overwrite "
                               "it, or choose another -o)"]
    assert (tmp_path / "old.json").read_text() == "{}"


def test_sweep_command_from_planner_run_command() -> None:
    from quantforge.evaluate.sweep import sweep_command_from_run

    run = ["llama-server", "-m", "MODEL.gguf", "-c", "4096", "-ngl", "99", "-ot", "ffn_.*=CPU", "-fmoe",
           "-fa",
           "-ctk", "f16", "-ctv", "f16", "-b", "2048", "-ub", "512", "-t", "16"]
    assert sweep_command_from_run(run, model="/m/x.gguf", engine="ik", binary="/b/llama-sweep-bench") == [
        "/b/llama-sweep-bench", "-m", "/m/x.gguf", "-c", "4096", "-ngl", "99", "-ot", "ffn_.*=CPU", "-fmoe",
        "-fa",
        "-ctk", "f16", "-ctv", "f16", "-b", "2048", "-ub", "512", "-t", "16"]
    assert sweep_command_from_run(run, model="/m/x.gguf", engine="mainline", binary="/b/llama-bench",
                                  tg=128) == [
        "/b/llama-bench", "-m", "/m/x.gguf", "-p", "512", "-n", "128", "-d",
        "0,512,1024,1536,2048,2560,3072,3584",
        "-ub", "512", "-o", "json", "-r", "1", "-b", "2048", "-t", "16", "-ngl", "99", "-ctk", "f16", "-ctv",
        "f16",
        "-fa", "1", "-ot", "ffn_.*=CPU"]


@pytest.mark.mainline
def test_mainline_llama_bench_depth_real_output(q8: Path, mainline_bin_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Real mainline llama-bench output (JSON and markdown, with -d depths) parsed, then swept through the
    CLI."""
    import re
    import subprocess

    from quantforge.evaluate.parsers import bench_to_sweep_rows, parse_bench_json, parse_bench_markdown

    bench = mainline_bin_dir / "llama-bench"
    base = [str(bench), "-m", str(q8), "-p", "64", "-n", "8", "-d", "0,64", "-r", "2", "-t", "2"]
    js = subprocess.run([*base, "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = parse_bench_json(js)
    raw = json.loads(js)
    assert [(r.n_prompt, r.n_gen, r.n_depth) for r in rows] == [(64, 0, 0), (0, 8, 0), (64, 0, 64),
                                                                (0, 8, 64)]
    assert [r.avg_ts for r in rows] == [d["avg_ts"] for d in raw]
    assert [list(r.samples_ts) for r in rows] == [d["samples_ts"] for d in raw]
    assert [s.n_kv for s in bench_to_sweep_rows(rows)] == [0, 64]
    md = subprocess.run([*base, "-o", "md"], capture_output=True, text=True, check=True).stdout
    mrows = parse_bench_markdown(md)
    printed = re.findall(r"\|\s*([\d.]+) ± ([\d.]+) \|", md)
    assert [(r.avg_ts, r.stddev_ts) for r in mrows] == [(float(a), float(b)) for a, b in printed]
    assert [r.test for r in mrows] == ["pp64 @ d0", "tg8 @ d0", "pp64 @ d64", "tg8 @ d64"] or \
        [r.n_depth for r in mrows] == [0, 0, 64, 64]

    out = tmp_path / "ml.json"
    rc = main(["sweep", "--cmd", " ".join([*base, "-o", "json"]), "--engine", "mainline", "--repeat", "2",
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = SweepResult.model_validate_json(out.read_text())
    # 2 invocations x llama-bench's own 2 repetitions (-r 2): each repetition is a run
    assert res.engine == "mainline" and len(res.runs) == 4 and [s.n_kv for s in res.summary] == [0, 64]
    assert {s.n for s in res.summary} == {4} and res.settings["t"] == "2" and res.build == "unknown (0)"


def test_vary_one_knob_interleaved_with_a_plot(q8: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ub.json"
    rc = main(["sweep", "--model", str(q8), "--vary", "ub=32,64", "--repeat", "2", "--ctx", "128", "--tg",
               "4",
               "--threads", "1", "-o", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert rep["knob"] == "ub" and rep["values"] == ["32", "64"]
    assert [(p["value"], p["runs"], p["rows"]) for p in rep["points"]] == [("32", 2, 4), ("64", 2, 2)]
    first, second = rep["results"]
    assert [r["pp"] for r in first["runs"][0]] == [32] * 4 and [r["n_kv"]
                                                                for r in second["runs"][0]] == [0, 64]
    assert all(p["pp_mean"] > 0 and p["tg_mean"] > 0 and p["pp_std"] is not None for p in rep["points"])
    assert rep["best_pp"] in ("32", "64") and rep["best_tg"] in ("32", "64")
    assert rep["plot"] == [str(tmp_path / "ub.png"), str(tmp_path / "ub.svg")]
    assert (tmp_path / "ub.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out.read_text()) == rep
    # interleaved: ub=32, ub=64, then ub=64, ub=32
    assert [ln.split(": ", 1)[1] for ln in cap.err.splitlines() if ln.startswith("sweep ")] == [
        "ub=32", "ub=64", "ub=64", "ub=32"]
    rc = main(["sweep", "--model", str(q8), "--vary", "rtr=off,on"])
    assert rc == 2 and "the bundled sweep cannot vary 'rtr'" in capsys.readouterr().err


def test_with_knob_rewrites_command_lines() -> None:
    from quantforge.evaluate.sweep import parse_vary, with_knob

    cmd = ["llama-sweep-bench", "-m", "m.gguf", "-c", "16384", "-ub", "512", "-fa", "-ot", "exps=CPU", "-t",
           "16"]
    assert with_knob(cmd, "ub", "4096") == ["llama-sweep-bench", "-m", "m.gguf", "-c", "16384", "-fa", "-ot",
                                            "exps=CPU", "-t", "16", "-ub", "4096"]
    assert with_knob(cmd, "rtr", "on")[-1] == "-rtr" and with_knob([*cmd, "-rtr"], "rtr", "off") == cmd
    assert with_knob(["x", "--ubatch-size=512", "-fa", "on", "-n", "8"], "fa", "off") == [
        "x", "--ubatch-size=512", "-n", "8", "-fa", "off"]
    assert parse_vary("-ub=512,1024") == ("ub", ["512", "1024"])
    assert parse_vary("--threads=1,2") == ("t", ["1", "2"])
    for bad in ("ub=512", "ub", "ub=1,1"):
        with pytest.raises(InputError):
            parse_vary(bad)
    with pytest.raises(InputError, match="rtr is a switch"):
        with_knob(cmd, "rtr", "4096")


@pytest.mark.mainline
def test_vary_threads_of_a_llama_bench_command(q8: Path, mainline_bin_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cmd = f"{mainline_bin_dir / 'llama-bench'} -m {q8} -p 32 -n 4 -d 0,32 -r 1 -t 1 -o json"
    rc = main(["sweep", "--cmd", cmd, "--engine", "mainline", "--vary", "t=1,2", "--repeat", "1",
               "--plot", str(tmp_path / "t"), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert [r["settings"]["t"] for r in rep["results"]] == ["1", "2"]
    assert [r["command"][-2:] for r in rep["results"]] == [["-t", "1"], ["-t", "2"]]
    assert (tmp_path / "t.svg").is_file()
