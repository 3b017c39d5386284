"""Recipe format: validation with file:line, extends, layer ranges, schema, round trips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantforge.cli import main
from quantforge.errors import RecipeError
from quantforge.recipe import (
    QuantSection,
    RuleSpec,
    add_variant,
    check_regex,
    compile_layers,
    layers_regex,
    load_recipe,
    parse_recipe,
)
from quantforge.shipped import recipes_dir

HEAD = """\
[model]
id = "HuggingFaceTB/SmolLM2-135M-Instruct"
engine = "ik"
"""


def write(tmp_path: Path, body: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(HEAD + body)
    return p


def test_layer_ranges_compile_to_the_regex_a_human_writes() -> None:
    assert compile_layers("3-60") == r"blk\.([3-9]|[1-5][0-9]|60)\."
    assert compile_layers("0-2,61") == r"blk\.([0-2]|61)\."
    assert compile_layers("7") == r"blk\.7\."
    assert compile_layers("0-93") == r"blk\.([0-9]|[1-8][0-9]|9[0-3])\."
    assert compile_layers("1-60") == r"blk\.([1-9]|[1-5][0-9]|60)\."


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=1200), min_size=1, max_size=40))
def test_layer_regex_matches_exactly_its_layers(layers: set[int]) -> None:
    rx = re.compile(rf"^({layers_regex(layers)})$")
    for n in range(0, 1300):
        assert bool(rx.match(str(n))) == (n in layers)


def test_rules_resolve_with_extends_types_and_lines(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
[[quant]]
name = "BIG"
ftype = "iq4_ks"
default = "IQ4_KS"
rules = [
  { match = 'attn_', type = "Q8_0" },
  { match = 'ffn_down_exps', layers = "3-60", type = "IQ3_K", place = "cpu" },
]

[[quant]]
name = "SMALL"
extends = "BIG"
repack_cpu = true
rules = [
  { match = 'ffn_(gate|up)_exps', layers = "3-60", type = "iq2_k", place = "cpu" },
]
""",
    )
    r = load_recipe(p)
    big, small = r.variant("BIG"), r.variant("small")
    assert big.ftype == "IQ4_KS" and big.default == "iq4_ks"
    assert [x.type for x in big.rules] == ["q8_0", "iq3_k"]
    assert big.rules[1].pattern == r"blk\.([3-9]|[1-5][0-9]|60)\.ffn_down_exps"
    assert big.rules[1].where == f"{p}:11 quant[BIG].rules[1]"
    # The child's own rules come first, then the parent's; repack_cpu turns cpu rules into _r4 twins.
    assert [x.type for x in small.rules] == ["iq2_k_r4", "q8_0", "iq3_k_r4"]
    assert [x.declared_type for x in small.rules] == ["iq2_k", "q8_0", "iq3_k"]
    assert small.ftype == "IQ4_KS" and small.default == "iq4_ks"
    assert len(r.sha256) == 64


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\nrules = [ { match = 'x', type = 'q8_0' ]\n",
         r"r\.toml:8:\d+: malformed TOML"),
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\nrulez = []\n",
         r"r\.toml:8 quant\[0\]\.rulez: unknown key 'rulez' \(did you mean 'rules'\?\)"),
        ("[[quant]]\nname = 'A'\nextends = 'B'\ndefault = 'q8_0'\n",
         r"r\.toml:7 quant\[0\]\.extends: extends unknown variant 'B'"),
        ("[[quant]]\nname = 'A'\ndefault = 'iq4_kz'\n",
         r"quant\[0\]\.default: unknown quant type 'iq4_kz'.*iq4_ks"),
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\nrules = [\n  { match = 'ffn_(down', type = 'q8_0' },\n]\n",
         r"r\.toml:9 quant\[A\]\.rules\[0\]\.match: bad match regex"),
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\nrules = [\n  { match = '(a+)+b', type = 'q8_0' },\n]\n",
         r"backtrack catastrophically"),
        ("[[quant]]\nname = 'A'\nrules = []\n",
         r"quant\[0\]: variant 'A' has no `default`.*explicit default is required"),
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\n[[quant]]\nname = 'A'\ndefault = 'q8_0'\n",
         r"two variants are named 'A'"),
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\nrules = [\n  { match = 'x', layers = '9-3', type = "
         "'q8_0' },\n]\n", r"rules\[0\]\.layers: layer range '9-3' runs backwards"),
        ("[[quant]]\nname = 'A'\ndefault = 'q8_0'\nrules = [\n  { match = 'x', type = 'q8_0', place = "
         "'tpu' },\n]\n", r"r\.toml:9 quant\[0\]\.rules\[0\]\.place: Input should be 'cpu' or 'gpu'"),
        ("[[quant]]\nname = 'A'\nextends = 'A'\ndefault = 'q8_0'\n", r"cycle: A -> A"),
    ],
)
def test_bad_recipes_end_with_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  body: str, expect: str) -> None:
    p = write(tmp_path, "\n" + body)
    with pytest.raises(RecipeError):
        load_recipe(p)
    assert main(["recipe", "schema"]) == 0  # sanity: the CLI itself works
    capsys.readouterr()
    rc = main(["recipe", "lint", str(p)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert re.search(expect, err), err


def test_missing_recipe_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["recipe", "lint", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.toml: recipe file not found" in err


def test_regex_dialect_checks() -> None:
    check_regex(r"blk\.[0-9]+\.ffn_(gate|up)_exps")
    for bad in [r"(?P<x>a)", r"(?<=a)b", r"(?i)attn", r"\Aattn"]:
        with pytest.raises(ValueError):
            check_regex(bad)


def test_engine_specific_types_are_refused_on_mainline(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text('[model]\nid = "x"\nengine = "mainline"\n[[quant]]\nname = "A"\ndefault = "iq4_ks"\n')
    with pytest.raises(RecipeError, match="ik_llama.cpp"):
        load_recipe(p)


def test_schema_validates_every_shipped_recipe() -> None:
    import tomllib

    import jsonschema

    schema = json.loads(json.dumps(__import__("quantforge.recipe", fromlist=["x"]).recipe_json_schema()))
    shipped = sorted(recipes_dir().glob("*.toml"))
    assert shipped, "recipes/ ships recipes"
    for path in shipped:
        jsonschema.validate(tomllib.loads(path.read_text()), schema)
        load_recipe(path)


def test_add_variant_keeps_comments_and_round_trips(tmp_path: Path) -> None:
    p = write(tmp_path, "\n# ladder start\n[[quant]]\nname = 'A'  # the big one\ndefault = 'q8_0'\n")
    add_variant(
        p,
        QuantSection(
            name="B",
            ftype="IQ4_KS",
            default="iq4_ks",
            rules=[RuleSpec(match=r"blk\.[0-9]\.ffn_down", type="iq5_ks", place="cpu")],
        ),
        comment="written by quantforge fit: fills 24 GiB",
    )
    text = p.read_text()
    assert "# ladder start" in text and "# the big one" in text and "# written by quantforge fit" in text
    r = load_recipe(p)
    assert [q.name for q in r.quants] == ["A", "B"]
    assert r.variant("B").rules[0].pattern == r"blk\.[0-9]\.ffn_down"
    with pytest.raises(RecipeError, match="already exists"):
        add_variant(p, QuantSection(name="B", default="q8_0"))
    # load -> dump -> load gives the same resolved recipe (paths and hashes aside)
    again = parse_recipe(p.read_text(), path=str(p))
    assert again.quants == r.quants


def test_mixture_default_reproduces_the_fixture_q4_k_m_listing(tmp_path: Path, smol_f16: Path,
                                                               ik_fixtures: Path) -> None:
    """default = "mixture" leaves unmatched tensors to the ftype's mixture: fixture a, exactly."""
    from quantforge.inventory import load_inventory
    from quantforge.plan import expand

    p = tmp_path / "a.toml"
    p.write_text(f'[model]\nbase = "{smol_f16}"\nengine = "ik"\n[[quant]]\nname = "Q4_K_M"\nftype = '
                 '"Q4_K_M"\ndefault = "mixture"\n')
    r = load_recipe(p)
    assert r.variant().default == "mixture"
    plan = expand(r, None, load_inventory(str(smol_f16), engine="ik"))
    want = {}
    for line in (ik_fixtures / "tensors-smol-Q4_K_M.txt").read_text().splitlines():
        name, typ, _shape, nbytes = line.split()
        want[name] = (typ, int(nbytes))
    got = {t.name: (t.type, t.bytes) for t in plan.tensors}
    assert got == want
    assert plan.file_bytes == 105_454_144


def test_mixture_needs_an_ftype(tmp_path: Path) -> None:
    p = write(tmp_path, "\n[[quant]]\nname = 'A'\ndefault = 'mixture'\n")
    with pytest.raises(RecipeError, match="names no ftype"):
        load_recipe(p)
