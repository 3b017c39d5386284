"""Fuzzing in CI: the targets of bench/fuzz.py with the small ``ci`` profile.

``python bench/fuzz.py --examples 10000`` is the full run (issue 7: 0 crashes per target).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import fuzz  # noqa: E402

CI_EXAMPLES = int(os.environ.get("QUANTFORGE_FUZZ_EXAMPLES", "200"))


@pytest.fixture(scope="module", autouse=True)
def _real_headers(smol_f16: Path) -> None:
    # seed_headers() reads the cached real F16 base that this fixture makes.
    assert smol_f16.is_file()


@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_fuzz_target_has_no_crash(target: str) -> None:
    outcome = fuzz.run_target(target, CI_EXAMPLES)
    assert outcome.examples >= CI_EXAMPLES
    assert outcome.crashes == [], "\n".join(outcome.crashes[:5])
    assert outcome.line() == f"{target}: {outcome.examples} examples, 0 crashes"


def test_recipe_generator_reaches_the_compiler() -> None:
    # The property is only meaningful if a good share of the generated recipes compile.
    from hypothesis import HealthCheck, given, settings

    from quantforge.errors import QuantforgeError
    from quantforge.recipe import parse_recipe

    compiled: list[int] = []

    @settings(
        max_examples=150,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz.recipe_texts())
    def body(text: str) -> None:
        try:
            compiled.append(sum(len(q.rules) for q in parse_recipe(text).quants))
        except QuantforgeError:
            pass

    body()
    assert len(compiled) >= 10 and sum(compiled) >= 10


@pytest.mark.parametrize(
    "pattern",
    [r"(.|..)*X", r"(a|aa)*b", r"(.?){30}X", r".*.*.*.*X", r"(\w+)+x", "b?" * 24 + "b" * 24],
)
def test_patterns_that_hang_a_backtracking_engine_are_refused(pattern: str) -> None:
    from quantforge.recipe import check_regex

    with pytest.raises(ValueError, match="backtrack"):
        check_regex(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r"ffn_(gate|up)_exps",
        r"(gate|up)+",
        r"blk\.[0-9]+\.ffn_.*_exps\.weight$",
        r".*attn.*",
        r".*.*.*X",
        r"^token_embd",
    ],
)
def test_ordinary_patterns_are_accepted_and_fast(pattern: str) -> None:
    from quantforge.recipe import check_regex

    rx = check_regex(pattern)
    names = fuzz.deepseek_names()
    assert len(names) == 1147
    t0 = time.perf_counter()
    hits = [n for n in names if rx.search(n)]
    assert time.perf_counter() - t0 < fuzz.REGEX_TIME_BOUND_S
    assert hits == [n for n in names if re.search(pattern, n)]


def test_a_header_with_absurd_counts_allocates_little() -> None:
    import struct

    data = b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + b"\0" * 64
    fuzz.check_header(data, True)
    fuzz.check_header(data, False)
