"""What a rule's regex costs in Python's ``re`` and in the engines' ``std::regex``, side by side.

Usage: python bench/regex_cost.py [--limit SECONDS]

For each pattern: the checker's verdict and work bound (``quantforge.regex_dialect``), the time
Python's ``re`` takes over SmolLM2's 272 tensor names, the time the real bundled ik
``llama-quantize --dry-run --custom-q PATTERN=q4_0`` takes on the SmolLM2 F16 base (its
std::regex tries the rule on every name; killed at ``--limit``), the ratio of the two, and the
steps of ``tests/support/std_regex.py``'s model of libstdc++ on one 27-byte DeepSeek name.
The dry run's own time (a trivial rule, measured first, median of three) is subtracted. The
refused patterns are the point: Python finds them instant, the engine does not. Needs the
cached F16 base (``.qf-cache/smol-f16.gguf``, made by the test suite).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PATTERNS = [
    r"ffn_(gate|up)",  # what recipes look like
    r"blk\.([3-9]|[1-5][0-9]|60)\.ffn_down",
    r".*.*.*X",
    r"(?:a|e)*Z",  # disjoint branches: linear in both
    r"(?:[a-z]|[a-z0-9_.])*Z",  # overlapping branches: merged by Python, tried one by one by std::regex
    r"(?:(?:[a-z]|[a-z_])|(?:[a-z.]|[a-z0-9]))*Z",
    r"(b?)*Z",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=float, default=60.0, help="stop llama-quantize after this many seconds")
    args = ap.parse_args(argv)
    import ik_llama_cpp
    from support.std_regex import search as std_search

    from quantforge.inventory import load_inventory
    from quantforge.regex_dialect import RegexError, check

    base = REPO / ".qf-cache" / "smol-f16.gguf"
    if not base.is_file():
        raise SystemExit(f"{base} is missing: run the test suite once (it makes it)")
    quantize = Path(ik_llama_cpp.__file__).parent / "bin" / "llama-quantize"
    names = [t.name for t in load_inventory(base).tensors]

    def dry_run(pattern: str) -> float | None:
        t0 = time.perf_counter()
        try:
            subprocess.run([str(quantize), "--dry-run", "--custom-q", f"{pattern}=q4_0", str(base),
                            str(REPO / ".qf-cache" / "regex-cost-dry.gguf"), "Q8_0"],
                           capture_output=True, timeout=args.limit, check=False)
        except subprocess.TimeoutExpired:
            return None
        return time.perf_counter() - t0

    # the dry run itself (reading the header, printing 272 lines) with a rule that fails at once
    baseline = sorted(t for t in (dry_run("^zzz") for _ in range(3)) if t is not None)[1]
    print(f"llama-quantize --dry-run with a trivial rule: {baseline:.2f} s (subtracted below)")
    print(f"{'pattern':48} {'checker':>22} {'python re':>10} {'std::regex':>11} {'ratio':>9} {'model steps':>12}")
    for pattern in PATTERNS:
        try:
            verdict = f"ok, bound {check(pattern).work:.2g}"
        except RegexError as exc:
            verdict = "refused" + (" (backtrack)" if "backtrack" in str(exc) else "")
        rx = re.compile(pattern)
        t0 = time.perf_counter()
        for n in names:
            rx.search(n)
        t_py = time.perf_counter() - t0
        took = dry_run(pattern)
        if took is None:
            t_cpp, ratio = f">{args.limit:.0f} s", f">{args.limit / max(t_py, 1e-6):.0f}x"
        else:
            engine = max(0.0, took - baseline)
            t_cpp, ratio = f"{engine:.2f} s", f"{engine / max(t_py, 1e-6):.0f}x"
        _, steps = std_search(pattern, "blk.10.ffn_down_exps.weight", budget=200_000_000)
        print(f"{pattern:48} {verdict:>22} {t_py * 1e3:>8.2f}ms {t_cpp:>11} {ratio:>9} {steps:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
