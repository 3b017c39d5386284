"""Failure paths of `quantforge build`: each exits non-zero with one clear line, keeps the log,
and leaves no file under the final name (and no partial file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import sigint_default

from quantforge.cli import main
from quantforge.runner import error_line

FAULTY = Path(__file__).parent / "support" / "faulty_bin"
REPO = Path(__file__).resolve().parents[1]

RECIPE = """\
[model]
base = "{base}"
engine = "ik"
{imatrix}
[[quant]]
name = "X"
ftype = "Q4_0"
default = "q4_0"
rules = [ {{ match = 'ffn_down', layers = "2-3", type = "{low}" }} ]
"""


def recipe(tmp_path: Path, base: Path, *, imatrix: Path | None = None, low: str = "q8_0") -> Path:
    p = tmp_path / "r.toml"
    im = f'\n[imatrix]\nfile = "{imatrix}"\n' if imatrix else ""
    p.write_text(RECIPE.format(base=base, imatrix=im, low=low))
    return p


def assert_clean_failure(out: Path, err: str, expected: str, *, exact: bool = True) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    if exact:
        assert lines[0] == f"quantforge: error: {expected}"
    else:
        assert lines[0].startswith("quantforge: error: ") and expected in lines[0], lines[0]
    log = out / "smol-X.gguf.log"
    assert log.is_file() and "# quantforge: error: " in log.read_text()
    assert not (out / "smol-X.gguf").exists()
    assert not list(out.glob("*.partial")) and not list(out.glob(".*splitting"))


def test_missing_imatrix_for_a_type_that_needs_one(
    tmp_path: Path, smol_f16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["build", str(recipe(tmp_path, smol_f16, low="iq2_xxs")), "--out", str(out)]) == 1
    assert_clean_failure(
        out, capsys.readouterr().err,
        "quant[X]: 2 tensor(s) use iq2_xxs, which llama-quantize refuses without an importance matrix: "
        "blk.2.ffn_down.weight, blk.3.ffn_down.weight (add [imatrix] file = ... to the recipe, pass "
        "--imatrix FILE, "
        "or compute one with `quantforge imatrix RECIPE`)",
    )  # fmt: skip


def test_rule_type_the_engine_does_not_have(
    tmp_path: Path, smol_f16: Path, mainline_bin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    r = recipe(tmp_path, smol_f16, low="iq4_ks")
    assert main(["build", str(r), "--out", str(out), "--bin-dir", str(mainline_bin_dir)]) == 1
    assert_clean_failure(
        out, capsys.readouterr().err,
        f"quant[X]: llama.cpp (mainline) at {mainline_bin_dir.absolute()} has no type iq4_ks (the recipe is "
        "for ik), "
        "needed by 2 tensor(s), e.g. blk.2.ffn_down.weight (use a toolchain of the recipe's engine "
        "(quantforge doctor), "
        "or change the rule types)",
    )  # fmt: skip


def test_binary_missing(tmp_path: Path, smol_f16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["build", str(recipe(tmp_path, smol_f16)), "--out", str(out), "--bin-dir", str(empty)]) == 1
    assert_clean_failure(
        out,
        capsys.readouterr().err,
        f"--bin-dir: no llama-quantize in {empty} (point --bin-dir at the folder with the built binaries "
        "(e.g. build/bin))",
    )


def test_disk_space_insufficient(tmp_path: Path, smol_f16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["build", str(recipe(tmp_path, smol_f16)), "--out", str(out), "--min-free", "1000T"]) == 1
    assert_clean_failure(
        out, capsys.readouterr().err, f"{out}: not enough free disk space in {out}: ", exact=False
    )


def test_existing_output_without_force(
    tmp_path: Path, smol_f16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    final = out / "smol-X.gguf"
    final.write_bytes(b"someone else's file")
    assert main(["build", str(recipe(tmp_path, smol_f16)), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"quantforge: error: {final}: smol-X.gguf already exists and is not this variant's verified "
           "build (pass --force to overwrite it, or choose another --out)"
    )
    assert final.read_bytes() == b"someone else's file"
    assert "already exists" in (out / "smol-X.gguf.log").read_text()


@pytest.fixture()
def faulty(monkeypatch: pytest.MonkeyPatch, ik_quantize: Path) -> Path:
    monkeypatch.setenv("QF_REAL_QUANTIZE", str(ik_quantize))
    return FAULTY


def test_killed_child(
    tmp_path: Path,
    smol_f16: Path,
    faulty: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QF_FAULT", "kill")
    out = tmp_path / "out"
    assert main(["build", str(recipe(tmp_path, smol_f16)), "--out", str(out), "--bin-dir", str(faulty)]) == 1
    log = out / "smol-X.gguf.log"
    assert_clean_failure(
        out,
        capsys.readouterr().err,
        f"{log}: llama-quantize was killed by SIGKILL at tensor 1/272 (out of memory? check `dmesg`; the "
        "partial output was removed)",
    )
    assert "token_embd.weight" in log.read_text()  # the tool's output is kept


def test_crashing_child_reports_its_own_error_line(
    tmp_path: Path,
    smol_f16: Path,
    faulty: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QF_FAULT", "crash")
    out = tmp_path / "out"
    assert main(["build", str(recipe(tmp_path, smol_f16)), "--out", str(out), "--bin-dir", str(faulty)]) == 1
    assert_clean_failure(
        out,
        capsys.readouterr().err,
        f"{out / 'smol-X.gguf.log'}: llama-quantize failed (exit 134): /src/ggml/src/ggml-quants.c:1234: "
        "GGML_ASSERT(fault injected by the test double) failed (the full output is in the log)",
    )


def test_hung_child_is_stopped_by_the_timeout(
    tmp_path: Path,
    smol_f16: Path,
    faulty: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QF_FAULT", "hang")
    out = tmp_path / "out"
    t0 = time.monotonic()
    assert (
        main(
            [
                "build",
                str(recipe(tmp_path, smol_f16)),
                "--out",
                str(out),
                "--bin-dir",
                str(faulty),
                "--timeout",
                "2",
            ]
        )
        == 1
    )
    assert time.monotonic() - t0 < 30
    assert_clean_failure(
        out,
        capsys.readouterr().err,
        f"{out / 'smol-X.gguf.log'}: llama-quantize did not finish within 2 s and was stopped (raise "
        "--timeout, or check the log for a hang)",
    )


def test_ctrl_c_stops_the_child_and_cleans_up(tmp_path: Path, smol_f16: Path, ik_quantize: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, QF_REAL_QUANTIZE=str(ik_quantize), QF_FAULT="hang", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantforge", "build", str(recipe(tmp_path, smol_f16)), "--out", str(out),
         "--bin-dir", str(FAULTY)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=sigint_default,
    )  # fmt: skip
    log = out / "smol-X.gguf.log"
    partial = out / "smol-X.gguf.partial"
    deadline = time.monotonic() + 60
    while not (partial.exists() and log.exists() and "1/ 272" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "the build never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert (
        err.decode().strip()
        == f"quantforge: error: {log}: Ctrl-C: stopped llama-quantize and removed the partial output (run "
           "the same command again to resume)"
    )
    assert not partial.exists() and not (out / "smol-X.gguf").exists()
    text = log.read_text()
    assert "# quantforge: Ctrl-C: stopped llama-quantize, removed partial output" in text
    # No orphaned `sleep` from the child's process group.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sleep 300" not in ps


def test_error_line_picks_the_tools_own_message(ik_fixtures: Path) -> None:
    logs = ik_fixtures / "logs"
    bad = (logs / "quantize-c-bad-typename.log").read_text().splitlines()
    assert error_line(bad) == "Invalid quantization type 'q6_k' in custom quantization input ffn_down=q6_k"
    noimat = (logs / "quantize-g-IQ2_XXS-no-imatrix.log").read_text().splitlines()
    assert (
        error_line(noimat)
        == "Please do not use IQ1_S, IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without an "
           "importance matrix"
    )
