"""`quantforge recipe lint|show|args` through ``quantforge.cli.main`` on the real SmolLM2 base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantforge.cli import main

REPO = Path(__file__).resolve().parents[1]


def _write(
    tmp_path: Path, base: Path, rules: str, *, engine: str = "ik", default: str = "q8_0", ftype: str = "IQ4_K"
) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(
        f'[model]\nbase = "{base}"\nengine = "{engine}"\nname = "smol"\n\n[[quant]]\nname = "v"\nftype = '
        f'"{ftype}"\n'
        f'default = "{default}"\nrules = [\n{rules}\n]\n'
    )
    return p


def test_show_json(smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, smol_f16, '{match="ffn_down", type="q6_K"},\n{match="attn_", type="iq4_ks"},')
    assert main(["recipe", "show", str(r), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (q,) = data["quants"]
    assert set(q) >= {"name", "engine", "tensor_bytes", "file_bytes", "bpw", "n_params", "tensors"}
    assert (q["name"], q["engine"], q["n_params"]) == ("v", "ik", 134_515_008)
    assert q["tensor_bytes"] == sum(t["bytes"] for t in q["tensors"])
    t = {x["name"]: x for x in q["tensors"]}
    assert t["blk.0.attn_q.weight"] == {**t["blk.0.attn_q.weight"], "shape": [576, 576], "type": "iq4_nl",
                                        "requested_type": "iq4_ks", "bytes": 186_624,
                                        "rule": "rules[1]"}  # fmt: skip
    assert t["blk.0.ffn_up.weight"]["type"] == "q8_0" and t["blk.0.ffn_up.weight"]["rule"] == "default"
    assert t["output_norm.weight"]["requested_type"] is None
    assert q["file_bytes_exact"] is True


def test_show_human_collapses(smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, smol_f16, '{match="ffn_down", layers="3-29", type="q6_K"},')
    assert main(["recipe", "show", str(r)]) == 0
    out = capsys.readouterr().out
    assert "blk.[3-29].ffn_down.weight" in out and "×27" in out
    assert "v  [ik IQ4_K]" in out


def test_args_ik(smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, smol_f16, '{match="ffn_down", type="Q6_K"},')
    assert main(["recipe", "args", str(r)]) == 0
    assert (
        capsys.readouterr().out
        == f"llama-quantize --custom-q 'ffn_down=q6_K,.*=q8_0' {smol_f16} smol-v.gguf IQ4_K\n"
    )
    assert main(["recipe", "args", str(r), "--json", "-o", "x.gguf"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["quants"][0]["args"] == [
        "llama-quantize",
        "--custom-q",
        "ffn_down=q6_K,.*=q8_0",
        str(smol_f16),
        "x.gguf",
        "IQ4_K",
    ]


def test_args_mainline_test_recipe(capsys: pytest.CaptureFixture[str], smol_f16: Path) -> None:
    r = REPO / "recipes" / "test" / "smol-mainline-a-q4k.toml"
    assert main(["recipe", "args", str(r)]) == 0
    out = capsys.readouterr().out
    assert (
        "--tensor-type ffn_down=q6_K --tensor-type attn_v=q8_0 --tensor-type token_embd=q6_K --tensor-type "
        "'.*=q4_K'"
        in out
    )
    # The output is named as `quantforge build` names it (the base's -f16 suffix dropped).
    assert out.rstrip().endswith("smol-Q4_K-rules.gguf Q4_K_M")


def test_lint_warnings_exit_0(smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, smol_f16, '{match="ffn_", type="q8_0"},\n{match="ffn_down", type="q6_K"},')
    assert main(["recipe", "lint", str(r)]) == 0
    out = capsys.readouterr().out
    assert "warning[shadowed]" in out and "r.toml:12 quant[v].rules[1]" in out


def test_lint_json(smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, smol_f16, '{match="attn_", type="iq4_ks"},')
    assert main(["recipe", "lint", str(r), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (f,) = data["quants"][0]["findings"]
    assert (f["code"], f["count"], f["severity"]) == ("fallback", 120, "warning")


def test_lint_error_exit_2(smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, smol_f16, '{match="ffn_down", type="iq2_xxs"},')
    assert main(["recipe", "lint", str(r)]) == 2
    cap = capsys.readouterr()
    assert "error[needs-imatrix]" in cap.out
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("quantforge: error: ") and "1 lint error(s)" in lines[0]


@pytest.mark.parametrize(
    ("rules", "extra_args", "needle"),
    [
        ('{match="ffn_down", type="q6_k_x"},', [], "unknown quant type 'q6_k_x'"),
        ('{match="ffn_(down", type="q6_K"},', [], "bad match regex"),
        (r'{match="blk\\.[0-9]{1,2}\\.ffn_down", type="q6_K"},', [], "splits rules at ','"),
        ('{match="ffn_down", type="q6_K"},', ["--quant", "nope"], "no variant named 'nope'"),
        ('{match="ffn_down", type="q6_K"},', ["--imatrix", "/nonexistent.imatrix"], "does not exist"),
    ],
)
@pytest.mark.parametrize("command", ["show", "args", "lint"])
def test_bad_input_one_line_exit_2(  # type: ignore[no-untyped-def]
    smol_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command, rules, extra_args, needle
) -> None:
    r = _write(tmp_path, smol_f16, rules)
    code = main(["recipe", command, str(r), *extra_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and needle in err[0], err


def test_missing_recipe_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantforge: error: ")


def test_missing_base_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _write(tmp_path, tmp_path / "absent.gguf", '{match="ffn_down", type="q6_K"},')
    assert main(["recipe", "show", str(r)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.gguf" in err[0]
