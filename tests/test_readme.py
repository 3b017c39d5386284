"""Docs that fail when stale: the README's two set-up commands, .ci/run, the CLI reference."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_starts_with_exactly_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    blocks = _blocks(head)
    assert len(blocks) == 2
    install_demo, tests = (b.strip() for b in blocks)
    assert "\n" not in install_demo and install_demo.endswith("quantforge demo")
    assert "\n" not in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    tests = _blocks((REPO / "README.md").read_text())[1].strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_cli_reference_is_current() -> None:
    from quantforge.cli._reference import render_into

    text = (REPO / "README.md").read_text()
    assert render_into(text) == text, "run: python -m quantforge.cli._reference --write README.md"


def test_every_command_is_in_the_reference() -> None:
    text = (REPO / "README.md").read_text()
    for cmd in ["demo", "inventory", "recipe show", "recipe lint", "recipe args", "recipe schema",
                "recipe import",
                "recipe diff", "plan", "fit", "target detect", "doctor", "imatrix", "build", "base", "eval",
                "sweep compare", "plot ladder", "card", "publish"]:
        assert f"`quantforge {cmd} " in text, cmd


def test_python_api_example_predicts_the_real_file(tmp_path: Path, smol_f16: Path, ik_quantize: Path) -> None:
    """The README's API example: expand, then the emitted command writes exactly the predicted bytes."""
    import subprocess

    import quantforge as qf

    recipe = qf.load_recipe(REPO / "recipes" / "smollm2-135m.toml")
    plan = qf.expand(recipe, "IQ4_KS", qf.load_inventory(str(smol_f16)))
    out = tmp_path / "out.gguf"
    cmd = qf.quantize_command(plan, binary=ik_quantize, input_path=smol_f16, output_path=out, threads=2)
    assert cmd[1:3] == ["--imatrix", plan.imatrix]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    assert out.stat().st_size == plan.file_bytes
