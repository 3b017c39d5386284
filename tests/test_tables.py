"""The table reader on what users paste (public issues, as written) and on real tool output of both
engines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import pasted_tables as P

from quantforge.cli import main
from quantforge.errors import InputError
from quantforge.evaluate import knobs
from quantforge.evaluate.tables import first_sample_outlier, read_table, warmup_outlier


def _rows(table: object) -> list[tuple[object, ...]]:
    return [(r.pp, r.tg, r.n_kv, r.t_pp, r.s_pp, r.t_tg,
             r.s_tg) for r in table.runs[0]]  # type: ignore[attr-defined]


def test_plain_markdown_tables_with_prose_around() -> None:
    ik = read_table(P.PR518_IK, source="pr518-ik.md")
    ml = read_table(P.PR518_MAINLINE, source="pr518-ml.md")
    assert ik.format == ml.format == "sweep-bench" and len(ik.runs) == len(ml.runs) == 1
    assert _rows(ik)[0] == (512, 128, 0, 1.733, 295.36, 8.239, 15.54)
    assert _rows(ik)[-1] == (512, 128, 2048, 1.954, 261.97, 8.563, 14.95)
    assert [r.s_pp for r in ml.runs[0]] == [28.04, 27.37, 26.88, 26.28, 26.03]
    assert ik.line == 3 and ml.line == 3 and ik.notes == () and ik.settings == {}


def test_heading_above_table() -> None:
    t = read_table(P.PR602_Q4_0, source="q4_0.md")
    assert [r.n_kv for r in t.runs[0]] == [512 * i for i in range(9)]
    assert _rows(t)[8] == (512, 128, 4096, 2.918, 175.49, 6.895, 18.57)


def test_command_with_continuations_gives_the_settings() -> None:
    t = read_table(P.PR559_IQ4_K, source="pr559.md")
    assert [(r.pp, r.tg, r.n_kv) for r in t.runs[0]] == [(4096, 1024, 4096 * i) for i in range(5)]
    assert t.runs[0][0].s_pp == 2931.10 and t.runs[0][-1].s_tg == 39.83
    s = t.settings
    assert (s["ub"], s["b"], s["c"], s["fa"], s["ngl"], s["t"], s["ctk"], s["ctv"], s["rtr"]) == \
        ("4096", "4096", "20480", "on", "99", "1", "f16", "f16", "off")


def test_leading_space_before_every_line() -> None:
    t = read_table(P.PR1057_MAIN, source="pr1057.md")
    assert len(t.runs[0]) == 16 and t.runs[0][0].s_pp == 1423.64 and t.runs[0][-1].n_kv == 30720
    assert t.notes == ()  # the 1 % slower first row is not a warm-up outlier


def test_two_tables_one_tab_separated_as_copied_from_the_rendered_page(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        read_table(P.ISSUE523, source="i523.md")
    assert str(exc.value) == ("i523.md:7: the file holds 2 tables (lines 2, 7) (pick one with --select "
                              "table=N, or "
                              "read them as repeated runs of one configuration with --select table=all)")
    md = read_table(P.ISSUE523, source="i523.md", select={"table": "1"})
    tsv = read_table(P.ISSUE523, source="i523.md", select={"table": "2"})
    assert _rows(md) == [(7168, 1792, 0, 28.049, 255.56, 329.723, 5.43)]
    assert _rows(tsv) == [(7168, 1792, 0, 28.007, 255.94, 414.487, 4.32)]
    both = read_table(P.ISSUE523, source="i523.md", select={"table": "all"})
    assert len(both.runs) == 2 and both.notes == ("2 runs: 2 tables",)


def test_settings_line_inside_a_code_fence() -> None:
    t = read_table(P.ISSUE909, source="i909.md")
    assert [r.s_pp for r in t.runs[0]] == [360.09, 300.89, 254.85]
    assert t.settings == {"c": "73728", "b": "8192", "ub": "8192", "fa": "on", "ngl": "99", "t": "12",
                          "tb": "12"}


def test_batched_bench_table_and_its_command() -> None:
    t = read_table(P.ISSUE14642_BATCHED, source="i14642.md")
    assert t.format == "batched-bench"
    assert _rows(t) == [(4096, 1024, 5120, 38.594, 106.13, 46.432, 22.05)]
    s = t.settings
    assert s["ot"] == r"blk\.(3|4|5|6|7|8)\.ffn_.*=CUDA0,exps=CPU"
    assert (s["ub"], s["b"], s["c"], s["t"], s["ngl"], s["fa"]) == ("4096", "4096", "131072", "32", "62",
                                                                    "on")
    assert s["model"] == "Kimi-K2-Instruct-UD-Q4_K_XL-00001-of-00013.gguf"


def test_llama_bench_rows_without_header_between_log_lines() -> None:
    with pytest.raises(InputError) as exc:
        read_table(P.ISSUE1258, source="i1258.md")
    assert str(exc.value) == (
        "i1258.md:12: the llama-bench output holds 2 configurations (build=1ec12b8e (4180), "
        "params=1026.92 B, "
        "size=539.80 GiB; build=22cae8321 (7951), params=1026.41 B, size=539.29 GiB) (pick one with --select "
        "build=VALUE, or split the file)")
    ik = read_table(P.ISSUE1258, source="i1258.md", select={"build": "1ec12b8e"})
    ml = read_table(P.ISSUE1258, source="i1258.md", select={"table": "2"})
    assert (ik.build, ml.build) == ("1ec12b8e (4180)", "22cae8321 (7951)")
    assert [(r.pp, r.tg, r.n_kv, r.s_pp, r.s_tg) for r in ik.runs[0]] == [(512, 128, 0, 88.92, 2.54)]
    assert [(r.s_pp, r.s_tg) for r in ml.runs[0]] == [(50.72, 8.07)]
    assert [(s.metric, s.mean, s.std, s.n, s.n_assumed) for s in ml.spread] == [
        ("pp", 50.72, 0.31, 5, True), ("tg", 8.07, 1.61, 5, True)]
    assert ik.settings["t"] == "96" and ik.format == "llama-bench-md"


def test_llama_bench_ik_columns_and_the_command() -> None:
    t = read_table(P.ISSUE490_FIRST, source="i490.md")
    assert t.build == "09764678 (3715)"
    assert [(r.s_pp, r.s_tg) for r in t.runs[0]] == [(26.74, 4.80)]
    s = t.settings
    assert (s["mla"], s["fa"], s["amb"], s["fmoe"], s["ngl"], s["t"], s["ot"]) == \
        ("2", "on", "512", "on", "99", "32", "exps=CPU")


def test_old_llama_bench_format_two_builds_two_models() -> None:
    with pytest.raises(InputError, match=r"holds 4 configurations"):
        read_table(P.ISSUE5986, source="i5986.md")
    before = read_table(P.ISSUE5986, source="i5986.md", select={"build": "9d5949f", "model": "Q4_0"})
    after = read_table(P.ISSUE5986, source="i5986.md", select={"table": "2", "model": "Q4_0"})
    assert [(r.pp, r.tg, r.s_pp, r.s_tg) for r in before.runs[0]] == [(32, 0, 11.19, None)]
    assert [(r.pp, r.s_pp) for r in after.runs[0]] == [(32, 7.48)]
    assert (before.build, after.build) == ("9d5949f (1552)", "bb6d00bb (2392)")
    with pytest.raises(InputError, match=r"--select table=3: the output holds 2 tables"):
        read_table(P.ISSUE5986, source="i5986.md", select={"table": "3"})


# ---------------------------------------------------------------- real tool output


def test_fixture_sweeps_settings_and_warmup(ik_fixtures: Path) -> None:
    logs = ik_fixtures / "logs"
    cpu = read_table((logs / "sweep-cpu.log").read_text(), source="sweep-cpu.log")
    rtr = read_table((logs / "sweep-cpu-rtr.log").read_text(), source="sweep-cpu-rtr.log")
    assert (cpu.settings["rtr"], rtr.settings["rtr"]) == ("off", "on")
    assert cpu.settings["ub"] == "512" and cpu.settings["t"] == "16" and cpu.notes == ()
    assert [d.knob for d in knobs.differences(cpu.settings, rtr.settings)] == ["rtr"]
    # the full-offload GPU sweep's first row is cold: 4705.58 t/s where the other rows run at ~36000
    gpu = read_table((logs / "gpu-sweep-full.log").read_text(), source="gpu-sweep-full.log")
    assert [r.n_kv for r in gpu.runs[0]] == [512 * i for i in range(1, 8)]
    assert len(gpu.notes) == 1 and gpu.notes[0].startswith(
        "warm-up outlier dropped (first row, N_KV 0): S_PP 4705.58 t/s where the other rows give about ")
    kept = read_table((logs / "gpu-sweep-full.log").read_text(), source="x", keep_warmup=True)
    assert kept.runs[0][0].s_pp == 4705.58 and kept.notes == ()


def test_fixture_llama_bench_json_samples_are_runs(ik_fixtures: Path) -> None:
    logs = ik_fixtures / "logs"
    cpu = read_table((logs / "bench-cpu-json.log").read_text(), source="bench-cpu-json.log")
    assert cpu.format == "llama-bench-json" and len(cpu.runs) == 3
    assert [(run[0].s_pp, run[0].s_tg) for run in cpu.runs] == [(3128.15, 527.458), (3194.46, 532.526),
                                                                (3223.66, 545.023)]
    assert cpu.settings["mla"] == "3" and cpu.settings["fa"] == "on" and cpu.settings["rtr"] == "off"
    gpu = read_table((logs / "gpu-bench-json.log").read_text(), source="gpu-bench-json.log")
    # samples 6548.15, 50490.5, 52355.3: the first repetition was cold
    assert [run[0].s_pp for run in gpu.runs] == [50490.5, 52355.3]
    assert gpu.notes[0].startswith("warm-up outlier dropped: the first repetition of pp512 (6548.15 t/s")


def test_sweep_jsonl_and_csv_as_written(ik_fixtures: Path, tmp_path: Path) -> None:
    cpu = read_table((ik_fixtures / "logs" / "sweep-cpu.log").read_text(), source="x")
    jl = "\n".join(json.dumps({"n_kv_max": 4096, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 1,
                               "n_gpu_layers": -1, "n_threads": 16, "n_threads_batch": 16, "pp": r.pp,
                               "tg": r.tg,
                               "n_kv": r.n_kv, "t_pp": r.t_pp, "speed_pp": r.s_pp, "t_tg": r.t_tg,
                               "speed_tg": r.s_tg}) for r in cpu.runs[0])
    t = read_table("main: loading\n" + jl, source="sweep.jsonl")
    assert t.format == "sweep-bench-jsonl" and t.runs == cpu.runs
    assert t.settings["ub"] == "512" and t.settings["fa"] == "on" and t.line == 2
    csv_text = "PP,TG,N_KV,T_PP s,S_PP t/s,T_TG s,S_TG t/s\n" + "\n".join(
        f"{r.pp},{r.tg},{r.n_kv},{r.t_pp},{r.s_pp},{r.t_tg},{r.s_tg}" for r in cpu.runs[0])
    c = read_table(csv_text, source="sweep.csv")
    assert c.format == "sweep-bench-csv" and c.runs == cpu.runs
    bad = csv_text.replace("3631.51", "fast")
    with pytest.raises(InputError) as exc:
        read_table(bad, source="sweep.csv")
    assert str(exc.value) == ("sweep.csv:2: 'speed_pp' is 'fast', not a number (pass the tool's output "
                              "unchanged)")


@pytest.fixture(scope="module")
def q8_mainline(smol_f16: Path, ik_quantize: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("tables") / "smol-Q8_0.gguf"
    subprocess.run([str(ik_quantize), str(smol_f16), str(dst), "Q8_0", "2"], check=True, capture_output=True)
    return dst


@pytest.mark.mainline
def test_real_mainline_outputs_every_format(q8_mainline: Path, mainline_bin_dir: Path) -> None:
    """llama-bench md/json/jsonl/csv and llama-batched-bench table/jsonl, produced now by the real
    binaries."""
    bench = [str(mainline_bin_dir / "llama-bench"), "-m", str(q8_mainline), "-p", "32", "-n", "4", "-d",
             "0,32",
             "-r", "2", "-t", "1", "-ub", "32"]
    parsed = {}
    for fmt in ("md", "json", "jsonl", "csv"):
        out = subprocess.run([*bench, "-o", fmt], capture_output=True, text=True, check=True)
        t = read_table(out.stdout + out.stderr, source=f"bench.{fmt}")
        parsed[fmt] = t
        assert t.format == f"llama-bench-{fmt}"
        assert [(r.pp, r.tg, r.n_kv) for r in t.runs[0]] == [(32, 4, 0), (32, 4, 32)]
        assert t.settings["t"] == "1" and t.settings["ub"] == "32"
        assert all(r.s_pp and r.s_tg and r.s_pp > 0 for run in t.runs for r in run)
    assert len(parsed["json"].runs) == len(parsed["jsonl"].runs) == 2  # -r 2: two repetitions each
    assert len(parsed["md"].runs) == len(parsed["csv"].runs) == 1 and len(parsed["md"].spread) == 4
    raw = json.loads(subprocess.run([*bench, "-o", "json"], capture_output=True, text=True,
                                    check=True).stdout)
    again = read_table(json.dumps(raw), source="bench.json", keep_warmup=True)
    assert [run[0].s_pp for run in again.runs] == [float(x) for x in raw[0]["samples_ts"]]
    batched = [str(mainline_bin_dir / "llama-batched-bench"), "-m", str(q8_mainline), "-c", "256", "-npp",
               "32,64",
               "-ntg", "8", "-npl", "1,2", "-t", "1"]
    out = subprocess.run(batched, capture_output=True, text=True, check=True)
    t = read_table(out.stdout + out.stderr, source="batched.md")
    assert t.format == "batched-bench"
    assert [(r.pp, r.tg, r.n_kv) for r in t.runs[0]] == [(32, 8, 40), (32, 8, 80), (64, 8, 72), (64, 8, 144)]
    assert t.settings["t"] == "1"
    out = subprocess.run([*batched, "--output-format", "jsonl"], capture_output=True, text=True, check=True)
    tj = read_table(out.stdout + out.stderr, source="batched.jsonl")
    assert tj.format == "batched-bench-jsonl" and [(r.pp, r.n_kv) for r in tj.runs[0]] == [
        (32, 40), (32, 80), (64, 72), (64, 144)]


# ---------------------------------------------------------------- errors name file:line


def test_unreadable_rows_name_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = P.PR602_Q4_0.splitlines()
    lines[6] = "|   512 |    128 |   1536 |    2.510 |   203.97 |    6.182 |"  # a cell lost in the paste
    bad = tmp_path / "before.md"
    bad.write_text("\n".join(lines) + "\n")
    ok = tmp_path / "after.md"
    ok.write_text(P.PR602_Q4_0)
    rc = main(["sweep", "compare", str(bad), str(ok)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        f"quantforge: error: {bad}:7: this row has 6 cells, the table header (line 2) has 7: PP | TG "
        "| N_KV | "
        "T_PP s | S_PP t/s | T_TG s | S_TG t/s (paste the table as the tool printed it, one row per line)"]
    lines = P.PR602_Q4_0.splitlines()
    lines[4] = lines[4].replace("217.69", "217,69")
    bad.write_text("\n".join(lines) + "\n")
    rc = main(["sweep", "compare", str(bad), str(ok)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"quantforge: error: {bad}:5: S_PP t/s is '217,69', not a number "
                               "(paste the table as the tool printed it)"]
    bad.write_text("PP dropped from 75 to 12 t/s after this commit\n")
    rc = main(["sweep", "compare", str(bad), str(ok)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"quantforge: error: {bad}: no speed "
                                                           "table found (")
    bad.write_bytes(b"\x00GGUF\x00\x00")
    rc = main(["sweep", "compare", str(bad), str(ok)])
    assert rc == 2 and capsys.readouterr().err.strip() == (
        f"quantforge: error: {bad}: not a text file (pass a sweep result JSON or a tool log (text))")


def test_warmup_detector() -> None:
    xs = [0, 512, 1024, 1536, 2048, 2560]
    # decreasing with depth, first row the fastest: normal
    assert warmup_outlier(xs, [3631.5, 2894.6, 2556.3, 2391.5, 1821.6, 1694.2]) is None
    # a cold first row well below the trend of the others
    exp = warmup_outlier(xs, [176.0, 240.0, 239.0, 238.5, 240.5, 238.0])
    assert exp is not None and 237.0 < exp < 241.5
    assert warmup_outlier(xs[:4], [100.0, 200.0, 200.0, 200.0]) is None  # too few rows to judge
    assert first_sample_outlier([6548.15, 50490.5, 52355.3]) is True
    assert first_sample_outlier([3128.15, 3194.46, 3223.66]) is False


def test_repeated_rows_in_one_table_are_runs() -> None:
    """Runs appended to one log without a new header (or sweep-bench -nrep rows): each N_KV's k-th row is run
    k."""
    body = P.PR602_Q4_0.splitlines()
    rows = body[3:6]  # N_KV 0, 512, 1024
    text = "\n".join([*body[1:3], *rows, *[r.replace("225.48", "224.90") for r in rows]]) + "\n"
    t = read_table(text, source="twice.md")
    assert len(t.runs) == 2 and [len(r) for r in t.runs] == [3, 3]
    assert [run[0].s_pp for run in t.runs] == [225.48, 224.90]
    assert t.notes == ("2 runs: every N_KV appears more than once",)
