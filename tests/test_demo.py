"""README's first command: `quantforge demo` runs every stage offline on the real SmolLM2 and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, smol_f16: Path) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("demo") / "quantforge-demo"
    out.mkdir()
    # Reuse the session's F16 base (same bytes the demo would make) so CI does not dequantize twice.
    (out / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    sha = "fea43f3ffef83a020894679eb91b2ab0127287d657a7313b47ba9c411dd4d47f"
    (out / "smollm2-135m-f16.gguf.sha256").write_text(sha + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "quantforge", "demo", "--out", str(out), "--chunks", "2", "--json",
         "--no-progress"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout), proc.stderr


def test_demo_runs_every_stage(demo: tuple[Path, dict, str]) -> None:
    out, result, log = demo
    steps = [s["name"] for s in result["steps"]]
    assert steps == ["setup", "inventory", "lint", "plan", "imatrix", "build", "eval", "sweep", "card",
                     "publish"]
    assert [v["name"] for v in result["variants"]] == ["IQ5_KS", "IQ4_KS", "IQ2_KS"]
    for v in result["variants"]:
        # the build verified every file against the plan to the byte
        assert v["file_bytes"] == v["planned_file_bytes"] == Path(v["path"]).stat().st_size
        assert v["ppl"] > 1 and v["kld_mean"] > 0 and v["kld_p99"] > v["kld_mean"]
        assert v["fits"], "a 135M model fits the shipped targets"
    kld = [v["kld_mean"] for v in result["variants"]]
    assert kld == sorted(kld), "fewer bits, more divergence"
    from quantforge.targets import list_targets

    assert result["matrix_cells"] == 3 * len(list_targets())
    for p in result["plots"]:
        assert Path(p).stat().st_size > 10_000
    rows = [json.loads(line) for line in Path(result["sweep_jsonl"]).read_text().splitlines()]
    assert sorted({r["run"] for r in rows}) == [0, 1, 2]  # three repeated runs, raw rows kept
    assert sorted(r["n_kv"] for r in rows if r["run"] == 0) == [0, 128, 256, 384]
    assert (out / "staging" / "upload-plan.json").is_file()
    assert "[demo] build" in log and "[demo] publish" in log


def test_demo_card_holds_the_measured_numbers(demo: tuple[Path, dict, str]) -> None:
    out, result, _ = demo
    card = Path(result["card"]).read_text()
    for v in result["variants"]:
        assert f"| {v['name']} |" in card
        assert f"{v['ppl']:.4f} ± {v['ppl_err']:.4f}" in card
        assert f"{v['kld_mean']:.6f}" in card
    assert str(out) not in card, "no local absolute paths in the card"


def test_demo_second_run_resumes(demo: tuple[Path, dict, str]) -> None:
    out, first, _ = demo
    proc = subprocess.run(
        [sys.executable, "-m", "quantforge", "demo", "--out", str(out), "--chunks", "2", "--json",
         "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    skipped = {s["name"]: s["skipped"] for s in again["steps"]}
    assert skipped["setup"] and skipped["build"] and skipped["eval"] and skipped["sweep"]
    assert [v["ppl"] for v in again["variants"]] == [v["ppl"] for v in first["variants"]]
