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
    for cmd in ["demo", "inventory", "recipe show", "recipe lint", "recipe args", "recipe schema", "recipe import",
                "recipe diff", "plan", "fit", "target detect", "doctor", "imatrix", "build", "base", "eval",
                "sweep compare", "plot ladder", "card", "publish"]:
        assert f"`quantforge {cmd} " in text, cmd
