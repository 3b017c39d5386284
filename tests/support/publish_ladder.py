"""The SmolLM2 ladder built once (cached under .qf-cache/publish-ladder) for the publish tests.

The shipped recipe's three variants plus one with row-interleaved (_r4) types that fall back on
SmolLM2's 576-wide rows, built by the real bundled ik ``llama-quantize`` through
``quantforge.build``. A rerun finds the manifests matching and skips the quantizing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LADDER = ("IQ5_KS", "IQ4_KS", "IQ2_KS", "R4")

R4_VARIANT = '''
[[quant]]
name = "R4"
ftype = "IQ4_KS"
default = "iq4_ks"
description = "CPU-only: row-interleaved ffn tensors (they fall back on 576-wide rows)."
rules = [
  { match = 'token_embd', type = "q8_0" },
  { match = 'attn_', type = "q8_0_r8" },
  { match = 'ffn_down', type = "iq4_nl_r4" },
  { match = 'ffn_(gate|up)', layers = "0-9", type = "iq4_k_r4" },
  { match = 'ffn_(gate|up)', type = "q4_0_r8" },
]
'''


def ladder_dir(cache: Path, base: Path) -> Path:
    d = cache / "publish-ladder"
    text = (REPO / "recipes" / "smollm2-135m.toml").read_text()
    text = text.replace('base = "smollm2-135m-f16.gguf"', f'base = "{base}"')
    assert f'base = "{base}"' in text
    recipe = d / "smollm2-135m.toml"
    new = text + R4_VARIANT
    if d.is_dir() and any(_recipe_sha(m) != hashlib.sha256(new.encode("utf-8")).hexdigest()
                          for m in d.glob("*.manifest.json")):
        # The shipped recipe changed: a build of the same plans would skip the outputs and keep
        # manifests naming the old recipe's sha256, which card and publish refuse. Start afresh.
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "recipes" / "smollm2-135m.imatrix", d / "smollm2-135m.imatrix")
    if not recipe.is_file() or recipe.read_text() != new:
        recipe.write_text(new)
    return d


def _recipe_sha(manifest: Path) -> str | None:
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))["recipe"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_ladder(cache: Path, base: Path, quantize: Path) -> tuple[Path, dict[str, Path]]:
    """(recipe path, variant -> output GGUF) of the built ladder."""
    from quantforge.build import build
    from quantforge.recipe import load_recipe

    d = ladder_dir(cache, base)
    recipe = load_recipe(d / "smollm2-135m.toml")
    res = build(recipe, variants=list(LADDER), out_dir=d, bin_dir=str(quantize.parent), threads=2)
    return d / "smollm2-135m.toml", {r.variant: Path(r.output) for r in res.results}
