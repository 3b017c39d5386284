"""The one error boundary: exit codes and single lines for every way a command can end."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantforge.cli import main


def _interrupt(*_a: object, **_k: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_anywhere_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Fault injection: Ctrl-C arrives while the library loads the recipe.
    monkeypatch.setattr("quantforge.recipe.load_recipe", _interrupt)
    rc = main(["recipe", "show", "recipes/smollm2-135m.toml"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.strip().splitlines() == ["quantforge: error: interrupted"]


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantforge: error: Missing argument")


def test_help_and_bare_groups_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["recipe"]) == 0
    assert "Usage: quantforge recipe" in capsys.readouterr().out


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from quantforge.errors import RecipeError

    with pytest.raises(RecipeError):
        main(["--debug", "recipe", "lint", str(tmp_path / "missing.toml")])
