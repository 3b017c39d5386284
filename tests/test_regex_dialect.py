"""Recipe regexes checked with the engines' semantics (``quantforge.regex_dialect``).

The reference is the real thing: the bundled ik ``llama-quantize --dry-run`` applies a
``--custom-q`` rule with libstdc++'s ``std::regex_search`` to every SmolLM2 tensor name and
prints which ones it matched. Patterns the checker accepts must match exactly the tensors the
planner predicts; constructs it refuses are shown to mean something else to the engine (or to
kill it). Backtracking cost is measured with ``tests/support/std_regex.py``, a step-counting
model of libstdc++'s matcher (checked against the binary here too): what the checker refuses
explodes there while Python's ``re`` (which merges alternatives) would look fast.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from functools import cache
from pathlib import Path

import pytest
from support.std_regex import search as std_search

from quantforge.errors import RecipeError
from quantforge.regex_dialect import MAX_WORK, NAME_MAX, RegexError, check

_CUSTOM = re.compile(r"Using custom type (\S+) for tensor (\S+)")


def _dry_run(ik_quantize: Path, smol_f16: Path, tmp_path: Path, pattern: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ik_quantize), "--dry-run", "--custom-q", f"{pattern}=q4_0", str(smol_f16), str(tmp_path / "dry.gguf"),
         "Q8_0"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _engine_matches(ik_quantize: Path, smol_f16: Path, tmp_path: Path, pattern: str) -> set[str]:
    proc = _dry_run(ik_quantize, smol_f16, tmp_path, pattern)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {m[2] for m in _CUSTOM.finditer(proc.stdout + proc.stderr)}


@cache
def _smol_names(smol_f16: Path) -> tuple[str, ...]:
    from quantforge.inventory import load_inventory
    from quantforge.plan import expand
    from quantforge.recipe import parse_recipe

    # the tensors llama-quantize offers to --custom-q: the quantized 2-D weights of a Q8_0 plan
    recipe = parse_recipe('[model]\nid = "x"\n[[quant]]\nname = "A"\ndefault = "q8_0"\n')
    plan = expand(recipe, None, load_inventory(smol_f16))
    return tuple(t.name for t in plan.tensors if t.requested_type is not None)


#: Patterns quant authors write, and corners of the grammar both engines read the same way.
PORTABLE = [
    r"ffn_(gate|up)",
    r"blk\.([3-9]|1[0-9]|2[0-5])\.ffn_down",
    r"^blk\.1[0-9]\.attn_",
    r"attn_(q|k|v)\.weight$",
    r"^token_embd",
    r"\bffn_\w+\.weight",
    r"blk\.\d+\.attn_output",
    r"blk\.[0-9]*[05]\.",
    r"(?!blk\.0\.)blk\.\d\.ffn_up",
    r"ffn_(?:down|up)(?!_exps)\.weight",
    r"blk\.2[^0-9]",
    r"[_.]v\.",
    r"blk\.(1|2){2}\.",
    r"blk\.1{2}\.attn_k",
    r"ffn_.*\.weight",
    r"^(blk\.)?2[0-9]?\.ffn_gate",
    r"attn_[kq]\.|ffn_down",
    r"blk\.[0-9]\.ffn_[a-z]+",
    r"\x61ttn_v",
    r"blk\.3\.ffn_down|",  # an empty alternative matches everything, in both
]


@pytest.mark.parametrize("pattern", PORTABLE)
def test_accepted_patterns_match_what_the_real_llama_quantize_matches(
    pattern: str, ik_quantize: Path, smol_f16: Path, tmp_path: Path
) -> None:
    names = _smol_names(smol_f16)
    predicted = {n for n in names if check(pattern).search(n)}
    assert predicted == _engine_matches(ik_quantize, smol_f16, tmp_path, pattern)
    # and the model of the engine agrees with both
    assert predicted == {n for n in names if std_search(pattern, n)[0]}


#: Constructs the engine reads differently from Python: (pattern, what the checker says).
DIFFERENT = [
    (r"blk\.[[:digit:]]\.ffn_down", "POSIX character class"),
    (r"blk\.1\.[[.a.]]ttn_v", "collating symbol"),
    (r"ffn_down**", "quantifier follows another one"),
    (r"ffn_.*+weight", "quantifier follows another one"),
    (r"attn_(q|k){1}{2}", "quantifier follows another one"),
    (r"[]a]ttn", r"'\[\]' and '\[\^\]'"),
]


@pytest.mark.parametrize("pattern,why", DIFFERENT)
def test_refused_constructs_mean_something_else_to_the_engine(
    pattern: str, why: str, ik_quantize: Path, smol_f16: Path, tmp_path: Path
) -> None:
    with pytest.raises(RegexError, match=why):
        check(pattern)
    names = _smol_names(smol_f16)
    engine = _engine_matches(ik_quantize, smol_f16, tmp_path, pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "possible nested set": Python means a plain set
            rx = re.compile(pattern)
    except re.error:
        python: set[str] | None = None  # Python refuses what the engine runs
    else:
        python = {n for n in names if rx.search(n)}
    assert python != engine


@pytest.mark.parametrize("pattern,why", [
    (r"ffn_(?>down)", r"\(\?>…\) is an atomic group in Python 3\.11 but an error in std::regex"),
    (r"(?<!blk\.0\.)ffn", "lookbehind"),
    (r"(?P<x>ffn)", r"named groups \(\?P<…>\) are Python-only"),
    (r"ffn_{down", r"write \\\{ for a literal brace"),
    (r"(?i)FFN", "inline flags"),
])  # fmt: skip
def test_refused_constructs_python_accepts_kill_the_engine(
    pattern: str, why: str, ik_quantize: Path, smol_f16: Path, tmp_path: Path
) -> None:
    re.compile(pattern)  # Python takes it
    with pytest.raises(RegexError, match=why):
        check(pattern)
    proc = _dry_run(ik_quantize, smol_f16, tmp_path, pattern)
    # std::regex throws on the first tensor: llama-quantize stops with "failed to quantize"
    assert proc.returncode != 0
    assert "regular expression" in proc.stderr and "failed to quantize model" in proc.stderr


@pytest.mark.parametrize("pattern,why", [
    (r"\N{DIGIT ONE}", r"\\N\{…\} is a Python-only named character"),
    (r"\Aoutput", r"\\A and \\Z are Python-only"),
    (r"output\Z", r"\\A and \\Z are Python-only"),
    (r"(ffn)\1", "back-reference"),
    (r"\01", "NUL"),
    (r"attn_\e", "escape in neither engine"),
    (r"[\D]", r"\\D inside brackets"),
    (r"[a-c-e]", r"write \\- for a literal dash"),
    (r"[\w-z]", "range cannot start"),
    (r"ffn_dówn", "non-ASCII"),
    (r"a{,3}", r"write \\\{"),
    (r"a{1001}", "repeat counts above 1000"),
    (r"^*ffn", "cannot follow an assertion"),
    (r"(?=ffn)+", "cannot follow an assertion"),
    (r"x(?=^y)", r"\^ inside a lookahead"),
    (r"(a{100}){100}", "automaton of about"),
    ("(" * 60 + "a" + ")" * 60, "nested deeper than 50"),
    ("", "empty regex"),
    (r"ffn_(down", r"missing '\)'"),
    (r"ffn_down)", r"unbalanced '\)'"),
])  # fmt: skip
def test_every_other_difference_is_refused_with_the_portable_spelling(pattern: str, why: str) -> None:
    with pytest.raises(RegexError, match=why):
        check(pattern)


#: Instant in Python's re (it merges the branches into one set, or stops empty loops), exponential
#: in std::regex, which tries every branch at every character of the name.
STD_REGEX_ONLY_SLOW = [r"(?:[a-z]|[a-z0-9_.])*Z", r"(?:[a-z_]|[a-z.])*Q", r"(?:e|[a-z_.0-9])*Z", r"(b?)*Z"]
#: Slow in both.
BOTH_SLOW = [r"(.|..)*X", r"(a|aa)*b", r"(.?){30}X", r".*.*.*.*X", r"(\w+)+x", "b?" * 24 + "b" * 24]


@pytest.mark.parametrize("pattern", STD_REGEX_ONLY_SLOW + BOTH_SLOW)
def test_catastrophic_backtracking_in_std_regex_is_refused(pattern: str) -> None:
    with pytest.raises(RegexError, match="backtrack"):
        check(pattern)


@pytest.mark.parametrize("pattern", STD_REGEX_ONLY_SLOW[:2])
def test_the_refused_patterns_really_explode_in_the_engines_matcher(pattern: str) -> None:
    name = "blk.10.ffn_down_exps.weight"  # 27 bytes, a DeepSeek routed-expert tensor
    short = "blk.1.ffn_up.weight"  # 19 bytes
    m_short, steps_short = std_search(pattern, short, budget=50_000_000)
    m_long, steps_long = std_search(pattern, name, budget=50_000_000)
    assert m_short is False and m_long in (False, None)
    # every extra letter doubles the work: 8 more bytes, more than 50x the steps
    assert steps_long > 50 * steps_short and steps_long > 5_000_000


@pytest.mark.parametrize("pattern", [
    r"ffn_(gate|up)_exps", r"(gate|up)+", r"blk\.[0-9]+\.ffn_.*_exps\.weight$", r".*attn.*", r".*.*.*X",
    r"^token_embd", r"blk\.([3-9]|[1-5][0-9]|60)\.ffn_(gate|up)_exps", r"(?:[a-f]|[g-z])*X",
])  # fmt: skip
def test_accepted_patterns_stay_within_the_bound_in_the_engines_matcher(pattern: str) -> None:
    from support import deepseek_names

    rx = check(pattern)
    assert rx.work <= MAX_WORK
    worst = 0
    for n in deepseek_names()[::7]:
        matched, steps = std_search(pattern, n, budget=10**8)
        assert matched == bool(rx.search(n)) and matched is not None
        worst = max(worst, steps)
    assert worst <= (NAME_MAX + 1) * rx.work  # the bound is per start position


def test_names_beyond_ascii_are_matched_byte_for_byte_as_std_regex_does() -> None:
    # std::regex on a char string sees the two UTF-8 bytes of 'é': '..' matches it, '.' does not
    name = "blk.0.é.weight"
    two, one = r"^blk\.0\...\.weight", r"^blk\.0\..\.weight"
    assert re.search(two, name) is None and re.search(one, name)  # Python reads characters
    assert check(two).search(name) is not None and check(one).search(name) is None
    assert std_search(two, name)[0] is True and std_search(one, name)[0] is False


def test_dot_and_dollar_mean_what_ecmascript_says() -> None:
    # '.' excludes \r as well as \n; '$' is the very end (Python's $ also matches before a final \n)
    assert check(r"a.b").search("a\rb") is None and re.search(r"a.b", "a\rb")
    assert check(r"b$").search("ab\n") is None and re.search(r"b$", "ab\n")


def test_the_recipe_uses_the_one_checker_at_load_and_in_plan(tmp_path: Path) -> None:
    from quantforge.plan import quantize_args_for
    from quantforge.recipe import check_regex, parse_recipe

    assert check_regex is not None and check_regex(r"ffn_(gate|up)").search("blk.0.ffn_up.weight")
    text = '[model]\nid = "x"\n[[quant]]\nname = "A"\ndefault = "q8_0"\nrules = [ {{ match = \'{m}\', type = "q4_0" }} ]\n'
    with pytest.raises(RecipeError, match=r"r\.toml:6 quant\[A\]\.rules\[0\]\.match: bad match regex .*POSIX"):
        parse_recipe(text.format(m="blk\\.[[:digit:]]\\."), path="r.toml")
    with pytest.raises(RecipeError, match="backtrack"):
        parse_recipe(text.format(m="(?:[a-z]|[a-z0-9_.])*Z"), path="r.toml")
    recipe = parse_recipe(text.format(m="ffn_(gate|up)"), path="r.toml")
    from quantforge.catalogue import catalogue

    assert quantize_args_for("ik", recipe.quants[0], catalogue("ik")) == ["--custom-q", "ffn_(gate|up)=q4_0,.*=q8_0"]
