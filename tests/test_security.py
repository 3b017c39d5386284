"""Security: no shell, no argument injection from recipes, confined output paths, no token leak."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

from quantforge.cli import main
from quantforge.errors import InputError, RecipeError

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_Zq9sEcUr1tyT0kenNeverPrinted77"


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else "?"


def test_no_subprocess_goes_through_a_shell() -> None:
    offenders = []
    sources = sorted((REPO / "quantforge").rglob("*.py"))
    assert len(sources) > 30
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in _calls(tree):
            name = _name(call.func)
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if name in (
                "os.system",
                "os.popen",
                "os.spawnlp",
                "os.execlp",
                "commands.getoutput",
                "subprocess.getoutput",
                "subprocess.getstatusoutput",
            ):
                offenders.append(f"{where} {name}")
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{where} shell={ast.unparse(kw.value)}")
            if name.split(".")[-1] in ("run", "Popen", "call", "check_call", "check_output") and call.args:
                first = call.args[0]
                if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    offenders.append(f"{where} {name}({ast.unparse(first)[:40]}…) takes a string command")
    assert offenders == []


_RECIPE = """
[model]
id = "HuggingFaceTB/SmolLM2-135M-Instruct"
engine = "ik"
[[quant]]
name = "A"
default = "q8_0"
rules = [ {{ match = '{match}', type = "{type}" }} ]
"""


@pytest.mark.parametrize("bad_type", ["q8_0 --output x", "--output", "q8_0;rm -rf /", "q8_0\n--imatrix"])
def test_a_type_cannot_carry_arguments(tmp_path: Path, bad_type: str) -> None:
    from quantforge.recipe import parse_recipe

    text = _RECIPE.format(match="attn_", type=bad_type.replace("\n", "\\n"))
    with pytest.raises(RecipeError, match="unknown quant type"):
        parse_recipe(text, path="r.toml")


@pytest.mark.parametrize(
    "evil", ["attn_ --output /tmp/x", "attn_;rm -rf /tmp/x", "attn_$(touch pwned)", "--imatrix"]
)
def test_a_match_stays_inside_one_argument(smol_f16: Path, evil: str) -> None:
    from quantforge.inventory import load_inventory
    from quantforge.plan import expand, quantize_command
    from quantforge.recipe import parse_recipe

    inv = load_inventory(smol_f16)
    benign = expand(parse_recipe(_RECIPE.format(match="attn_", type="q6_0")), None, inv)
    plan = expand(parse_recipe(_RECIPE.format(match=evil, type="q6_0")), None, inv)
    kw = {"binary": "llama-quantize", "input_path": "in.gguf", "output_path": "out.gguf", "threads": 2}
    cmd = quantize_command(plan, **kw)
    assert len(cmd) == len(quantize_command(benign, **kw))
    holders = [a for a in cmd if evil in a]
    assert len(holders) == 1 and holders[0] != evil, cmd  # inside the --custom-q list, never alone
    assert cmd.count("--output") == 0 and cmd.count("--imatrix") == 0
    assert cmd[-4:] == ["in.gguf", "out.gguf", plan.ftype, "2"]


def test_confined_refuses_escapes(tmp_path: Path) -> None:
    from quantforge.paths import confined

    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert confined(root, "a/b.gguf") == (root / "a" / "b.gguf").resolve()
    for bad in ("../x.gguf", "/etc/passwd", "a/../../x", "link/x.gguf"):
        with pytest.raises(InputError, match="escapes the output folder"):
            confined(root, bad)


def test_build_outputs_stay_in_the_output_folder(tmp_path: Path, smol_f16: Path) -> None:
    from quantforge.names import output_stem
    from quantforge.recipe import parse_recipe

    text = (REPO / "recipes" / "smollm2-135m.toml").read_text()
    for name in ("../../escape", "/etc/cron.d/x", "..", "a/../../b"):
        recipe = parse_recipe(
            text.replace('name = "SmolLM2-135M-Instruct"', f'name = "{name}"'), path=str(tmp_path / "r.toml")
        )
        stem = output_stem(recipe, smol_f16)
        out = tmp_path / "out"
        assert (out / f"{stem}-IQ4_KS.gguf").resolve().parent == out.resolve(), stem


def _grep_token(root: Path) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                if TOKEN.encode() in f.read():
                    hits.append(str(p))
    return hits


@pytest.fixture()
def ladder(smol_f16: Path, ik_quantize: Path, tmp_path: Path) -> Path:
    """The shipped recipe with its IQ2_KS variant built (cached), copied into tmp_path."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TEST_CACHE
    from support.publish_ladder import build_ladder

    recipe, outputs = build_ladder(TEST_CACHE, smol_f16, ik_quantize)
    d = tmp_path / "ladder"
    d.mkdir()
    shutil.copy(recipe, d / recipe.name)
    shutil.copy(recipe.parent / "smollm2-135m.imatrix", d)
    for q in ("IQ2_KS",):
        out = outputs[q]
        os.link(out, d / out.name) if out.stat().st_dev == d.stat().st_dev else shutil.copy(out, d)
        for suffix in (".manifest.json", ".log"):
            shutil.copy(str(out) + suffix, d)
    return d / recipe.name


def test_hf_token_is_never_printed_or_written(
    ladder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, ik_quantize: Path,
) -> None:  # fmt: skip
    from huggingface_hub import constants
    from support.hub_server import HubStandIn

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    # 1. a dry run with staging
    assert main(["publish", str(ladder), "--repo", "org/Smol-GGUF", "--quant", "IQ2_KS", "--dry-run",
                 "--staging", str(tmp_path / "stage")]) == 0  # fmt: skip
    assert (tmp_path / "stage").is_dir()
    # 2. a real upload to the loopback Hub stand-in (the token is sent, and must go nowhere else)
    server = HubStandIn(tmp_path / "hub", token=TOKEN).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["publish", str(ladder), "--repo", "org/Smol-GGUF", "--quant", "IQ2_KS"]) == 0
        assert server.file_bytes("org/Smol-GGUF", "README.md")
        # 3. a wrong token: one scrubbed error line
        monkeypatch.setenv("HF_TOKEN", TOKEN[:-2] + "xx")
        assert main(["publish", str(ladder), "--repo", "org/Other-GGUF", "--quant", "IQ2_KS"]) == 1
    finally:
        server.stop()
    # 4. a build that fails in the tool (its log is kept) and one that succeeds
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("QF_REAL_QUANTIZE", str(ik_quantize))
    monkeypatch.setenv("QF_FAULT", "crash")
    assert main(["build", str(ladder), "--quant", "IQ2_KS", "-o", str(tmp_path / "failed"), "--no-progress",
                 "--bin-dir", str(REPO / "tests" / "support" / "faulty_bin")]) == 1  # fmt: skip
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text
    assert TOKEN[:-2] + "xx" not in out.out + out.err + caplog.text
    assert _grep_token(tmp_path) == []
    assert _grep_token(ladder.parent) == []
