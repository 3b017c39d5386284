"""A/B between two builds: real interleaved runs of the bundled engine (ik libllama through
``quantforge.evaluate.bundled_bench``) and of mainline llama-bench, with provenance and warnings.

Whether B is *slower* is a timing question and is measured in bench/sweep_ab.py; these tests check
what is run, recorded and warned about."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.evaluate.ab import bench_command, find_tool


def _lib_dir() -> Path:
    import ik_llama_cpp

    return Path(ik_llama_cpp.__file__).parent / "lib"


@pytest.fixture(scope="module")
def q8(smol_f16: Path, ik_quantize: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("ab") / "smol-Q8_0.gguf"
    subprocess.run([str(ik_quantize), str(smol_f16), str(dst), "Q8_0", "2"], check=True, capture_output=True)
    return dst


def test_bundled_builds_interleaved_with_provenance(q8: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    a = _lib_dir()
    b = tmp_path / "build-b"  # "another build": the same library reached through a link
    b.mkdir()
    (b / "libllama.so").symlink_to(a / "libllama.so")
    out = tmp_path / "ab.json"
    rc = main(["sweep", "compare", "--model", str(q8), "--a-bin-dir", str(a), "--b-bin-dir", str(b), "--args",
               "-t 1",
               "--repeat", "2", "--ctx", "192", "--ubatch", "64", "--tg", "4", "-o", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert (rep["baseline"], rep["candidate"]) == (f"A {a}", f"B {b}")
    version = rep["baseline_build"]
    assert version.startswith("ik-llama-cpp-python ") and "sha256 " in version
    assert rep["candidate_build"] == version  # the same file behind the link
    assert rep["warnings"] == [f"both builds report the same version ({version}): is B really another build?"]
    assert rep["differences"] == []
    assert "n_threads = 1 | " in rep["baseline_system_info"] and "AVX2 = " in rep["baseline_system_info"]
    assert [(m["metric"], m["baseline_n"], m["candidate_n"]) for m in rep["overall"]] == [("pp", 2, 2),
                                                                                          ("tg", 2, 2)]
    assert [r["n_kv"] for r in rep["rows"]] == [0, 0, 64, 64, 128, 128]
    assert "baseline: 1 warm-up run discarded" in rep["notes"]
    assert "candidate: 1 warm-up run discarded" in rep["notes"]
    # order: warm-up A, warm-up B, then A B, B A (interleaved, counterbalanced)
    order = [line.split(": ", 1)[1] for line in cap.err.splitlines() if line.startswith("sweep ")]
    assert order == [f"A {a} (warm-up, discarded)", f"B {b} (warm-up, discarded)", f"A {a}", f"B {b}",
                     f"B {b}",
                     f"A {a}"]
    raw = out.with_suffix(".jsonl").read_text().splitlines()
    assert len(raw) == 2 * 2 * 3 and json.loads(out.read_text()) == rep


def test_bench_commands_per_tool(q8: Path, tmp_path: Path) -> None:
    kind, lib = find_tool(_lib_dir())
    assert kind == "bundled" and lib == _lib_dir() / "libllama.so"
    assert bench_command(kind, lib, model=q8, ctx=512, ubatch=128, tg=16, args=["-t", "2"]) == [
        sys.executable, "-m", "quantforge.evaluate.bundled_bench", "--lib", str(lib), "-m", str(q8), "-c",
        "512",
        "-ub", "128", "-n", "16", "-t", "2"]
    tool = tmp_path / "llama-bench"
    assert bench_command("llama-bench", tool, model="m.gguf", ctx=2048, ubatch=512, tg=32) == [
        str(tool), "-m", "m.gguf", "-p", "512", "-n", "32", "-d", "0,512,1024,1536", "-ub", "512", "-r", "1",
        "-o", "json"]
    assert bench_command("sweep-bench", tool, model="m.gguf", ctx=16384, ubatch=4096, tg=64,
                         args=["-ot", "exps=CPU"]) == [
        str(tool), "-m", "m.gguf", "-c", "16384", "-ub", "4096", "-n", "64", "-b", "4096", "-ot", "exps=CPU"]


def test_two_commands_that_differ_in_more_than_the_build(q8: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    base = f"{sys.executable} -m quantforge.evaluate.bundled_bench -m {q8} -c 128 -ub 64 -n 4"
    rc = main(["sweep", "compare", "--a", f"{base} -t 2", "--b", f"{base} -t 1", "--repeat", "1", "--warmup",
               "0",
               "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    # the command says -t; the tool's settings line says n_threads and n_threads_batch
    assert rep["differences"] == [{"knob": "t", "baseline": "2", "candidate": "1"},
                                  {"knob": "tb", "baseline": "2", "candidate": "1"}]
    assert rep["warnings"] == ["the two sides differ in more than the build: t 2 vs 1, tb 2 vs 1"]
    assert rep["baseline_build"] == rep["candidate_build"]
    assert rep["baseline_build"].startswith("ik-llama-cpp-python")
    rc = main(["sweep", "compare", "--a", f"{base} -t 1", "--b", f"{base} -t 1", "--repeat", "1", "--warmup",
               "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "settings that differ" not in out and "warning:" not in out


@pytest.mark.mainline
def test_mainline_llama_bench_builds(q8: Path, mainline_bin_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sweep", "compare", "--model", str(q8), "--a-bin-dir", str(mainline_bin_dir), "--b-bin-dir",
               str(mainline_bin_dir), "--tool", "llama-bench", "--args", "-t 1", "--repeat", "2", "--ctx",
               "128",
               "--ubatch", "32", "--tg", "4", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert rep["baseline_build"].startswith("0.6.0-dev (build 0, commit unknown); built with ")
    assert rep["warnings"] == [] and rep["differences"] == []
    assert [r["n_kv"] for r in rep["rows"]] == [0, 0, 32, 32, 64, 64, 96, 96]
    assert all(m["baseline_n"] == m["candidate_n"] == 2 for m in rep["overall"])


def test_ab_bad_input(q8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-build"
    empty.mkdir()
    rc = main(["sweep", "compare", "--model", str(q8), "--a-bin-dir", str(empty), "--b-bin-dir",
               str(_lib_dir())])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"quantforge: error: {empty}: no sweep tool in this folder (looked for "
                               "llama-sweep-bench, llama-bench, llama-batched-bench, libllama.so) (build "
                               "llama-sweep-bench (ik) or llama-bench, or pass the folder of a libllama.so)"]
    rc = main(["sweep", "compare", "--model", str(q8), "--a-bin-dir", str(_lib_dir())])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["quantforge: error: sweep compare: an A/B run of two builds needs both "
                               "--a-bin-dir "
                               "and --b-bin-dir"]
    rc = main(["sweep", "compare", "--a-bin-dir", str(_lib_dir()), "--b-bin-dir", str(_lib_dir())])
    assert rc == 2 and "needs --model FILE.gguf" in capsys.readouterr().err
