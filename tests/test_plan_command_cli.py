"""`quantforge plan SOURCE --command …` through the CLI: the JSON contract, a real GGUF as the source
(its own offsets: mainline's mapped range), and bad command lines as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quantforge.cli import main

REPO = Path(__file__).resolve().parents[1]
Q235 = REPO / "recipes" / "test" / "qwen3-235b-iq4xs.toml"
MIB = 1 << 20


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_command_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    cmd = "llama-server -m M.gguf -c 32768 -ngl 99 -ot exps=CPU -fa on -b 4096 -ub 4096 -ctk q8_0 -ctv q8_0"
    out = _json(capsys, ["plan", str(Q235), "--command", cmd, "--target", "256gb-24gb", "--json"])
    kinds = {(b["device"], b["kind"]) for b in out["buffers"]}
    assert kinds == {("CUDA_Host", "weights"), ("CUDA0", "weights"), ("CUDA0", "kv"), ("CUDA0", "compute"),
                     ("CUDA_Host", "compute"), ("CUDA_Host", "output")}  # fmt: skip
    kv = next(b["bytes"] for b in out["buffers"] if b["kind"] == "kv")
    assert kv == 94 * 34 * MIB  # q8_0 K+V: 4 KV heads x 128 x 32768 cells, 1088 bytes a cell per layer
    gpu = [d for d in out["devices"] if d["kind"] == "gpu"]
    assert [d["name"] for d in gpu] == ["CUDA0"] and gpu[0]["margin_bytes"] > 0 and gpu[0]["margin_source"]
    on_gpu = sum(b["bytes"] for b in out["buffers"] if b["device"] == "CUDA0")
    assert gpu[0]["headroom_bytes"] == 24 * 1024 * MIB - on_gpu - gpu[0]["margin_bytes"] - 256 * MIB
    assert out["verdict"] == "fits" and out["short_by_bytes"] == 0


def test_plan_command_on_a_gguf(capsys: pytest.CaptureFixture[str], smol_f16: Path) -> None:
    """A local GGUF with mainline: CPU weights are the mapped range of the file (CPU_Mapped)."""
    out = _json(capsys, ["plan", str(smol_f16), "--engine", "mainline", "--command",
                         f"llama-cli -m {smol_f16} -c 4096 -ngl 0", "--json"])  # fmt: skip
    weights = [b for b in out["buffers"] if b["kind"] == "weights"]
    assert [b["device"] for b in weights] == ["CPU_Mapped"]
    assert 250 * MIB < weights[0]["bytes"] < smol_f16.stat().st_size
    assert out["verdict"] is None and out["gpu_layers"] == []


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("llama-server -c abc", "-c 'abc': not an integer"),
        ("llama-server -ot exps", "-ot 'exps': expected PATTERN=BUFFER"),
        ("llama-server -fa maybe", "-fa 'maybe': expected on, off or auto"),
        ("llama-server -ts 3,x", "-ts '3,x': expected numbers"),
        ("llama-server 'unclosed", "cannot split the command line"),
        ("", "--command is empty"),
    ],
)
def test_bad_command_is_one_line(capsys: pytest.CaptureFixture[str], command: str, words: str) -> None:
    assert main(["plan", str(Q235), "--command", command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err


def test_command_with_matrix_or_bad_engine_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(Q235), "--command", "llama-server -c 4096", "--matrix"]) == 2
    assert main(["plan", str(Q235), "--command", "llama-server -c 4096", "--engine", "vllm"]) == 2
    assert main(["plan", str(Q235), "--command", "llama-server -c 4096", "--engine-version", "x1"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("quantforge: error:") for e in errs)


def test_graph_split_is_refused_not_guessed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(Q235), "--command", "llama-server -c 4096 -sm graph -ts 1,1"]) == 2
    err = capsys.readouterr().err
    assert "-sm graph: only the layer split is planned" in err
