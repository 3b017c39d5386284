"""The package's public API: lazy re-exports, and a CLI import path free of heavy modules."""

from __future__ import annotations

import re
import subprocess
import sys

import quantforge


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True)


def test_every_public_name_resolves_to_its_stage() -> None:
    from quantforge import build as build_module
    from quantforge.errors import RecipeError
    from quantforge.plan import expand

    assert quantforge.expand is expand
    assert quantforge.RecipeError is RecipeError
    assert quantforge.build is build_module and quantforge.build_recipe is build_module.build
    assert sorted(quantforge.__all__) == sorted(["__version__", *quantforge._EXPORTS])
    for name in quantforge.__all__:
        assert getattr(quantforge, name) is not None, name
    assert set(quantforge.__all__) <= set(dir(quantforge))
    try:
        quantforge.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert str(exc) == "module 'quantforge' has no attribute 'no_such_name'"
    else:  # pragma: no cover
        raise AssertionError("no AttributeError")


def test_import_quantforge_is_cheap_and_names_load_on_first_use() -> None:
    code = (
        "import sys, quantforge\n"
        "heavy = [m for m in ('quantforge.plan', 'quantforge.recipe', 'pydantic', 'numpy') if m in "
        "sys.modules]\n"
        "assert not heavy, heavy\n"
        "e = quantforge.expand\n"
        "assert e.__module__ == 'quantforge.plan' and 'quantforge.plan' in sys.modules\n"
        "print(quantforge.load_recipe.__name__, quantforge.QuantPlan.__name__)\n"
    )
    assert _run("-c", code).stdout == "load_recipe QuantPlan\n"


def test_cli_import_leaves_stage_modules_numpy_and_pydantic_alone() -> None:
    # -X importtime lists every module the import loaded, one per line on stderr.
    err = _run("-X", "importtime", "-c", "import quantforge.cli").stderr
    loaded = {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", err, re.M)}
    assert "quantforge.cli.cmd_build" in loaded  # the parse saw the command modules
    heavy = sorted(
        m
        for m in loaded
        if m.split(".")[0] in ("numpy", "pydantic", "scipy", "matplotlib", "huggingface_hub", "gguf", "tqdm")
        or m.startswith(("quantforge.plan", "quantforge.fit", "quantforge.recipe", "quantforge.build",
                         "quantforge.evaluate"))
    )
    assert heavy == []
