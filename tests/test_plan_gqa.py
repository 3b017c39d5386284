"""The ftype mixtures read n_gqa (head_count / head_count_kv) from the inventory's hparams.

Real GGUF inventories and synthesized ones both spell the keys ``attention.head_count`` and
``attention.head_count_kv``; a planner that looked up bare ``head_count`` got n_gqa = 1 and
lost every GQA branch of the attn_v chain. Mainline's Q4_K_M chain never reads n_gqa (only
``use_more_bits``), so the differential check uses ftypes whose attn_v type does depend on it:
mainline IQ4_XS / Q2_K (n_gqa >= 4; IQ4_NL and IQ3_* read it the same way) and ik IQ4_XS / Q2_K, on a llama
miniature rewritten to 4 query heads per KV head, through the real llama-quantize binaries.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.gguf_header import read_header
from quantforge.inventory import load_inventory
from quantforge.plan import MIXTURE, expand, quantize_command
from quantforge.recipe import parse_recipe


def _with_kv_heads(src: Path, dst: Path, n_head_kv: int) -> Path:
    """``src`` (a llama miniature, 64-wide heads) with ``n_head_kv`` KV heads: the KV key set and
    ``attn_k``/``attn_v`` given ``n_head_kv * 64`` rows, so the file stays a consistent model."""
    import gguf
    import numpy as np

    from quantforge.acquire import copy_kv

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    copy_kv(r, w, uint32={"llama.attention.head_count_kv": n_head_kv})
    for t in r.tensors:
        data = t.data  # bf16 comes as uint8 rows: raw_shape is then the byte shape
        if t.name.endswith(("attn_k.weight", "attn_v.weight")):
            rows = n_head_kv * 64  # fewer heads: the first rows; more: the rows repeated
            data = np.concatenate([data] * -(-rows // data.shape[0]))[:rows]
        w.add_tensor(t.name, data, raw_shape=list(data.shape), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def gqa_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """n_gqa -> a llama miniature with 4 query heads and 4 // n_gqa KV heads."""
    from quantforge.miniature import write_miniature

    d = tmp_path_factory.mktemp("gqa")
    base = write_miniature("llama", d / "llama.gguf", seed=1)  # 4 heads, 2 KV heads
    return {1: _with_kv_heads(base, d / "gqa1.gguf", 4), 2: base, 4: _with_kv_heads(base, d / "gqa4.gguf", 1)}


def test_inventory_gives_the_planner_its_gqa(gqa_models: dict[int, Path]) -> None:
    for gqa, path in gqa_models.items():
        inv = load_inventory(path, engine="mainline")
        assert inv.hparams["attention.head_count"] == 4
        assert inv.hparams["attention.head_count_kv"] == 4 // gqa
        shapes = {t.name: t.shape for t in inv.tensors}
        assert shapes["blk.0.attn_v.weight"] == shapes["blk.0.attn_k.weight"] == (256, 64 * (4 // gqa))


# (engine, ftype, n_gqa, the attn_v type the binary writes for both layers)
CASES = [
    ("mainline", "IQ4_XS", 4, "q5_K"),  # n_gqa >= 4 bump
    ("mainline", "IQ4_XS", 2, "iq4_xs"),
    ("mainline", "Q2_K", 4, "q4_K"),
    ("mainline", "Q2_K", 1, "q3_K"),
    ("mainline", "Q4_K_M", 4, None),  # attn_v by use_more_bits only: n_gqa is not read
    ("ik", "Q2_K", 4, "q4_K"),
    ("ik", "Q2_K", 2, "q3_K"),
    ("ik", "IQ4_XS", 2, None),  # ik bumps attn_v from n_gqa >= 2 on
    ("ik", "IQ4_XS", 1, "iq4_xs"),
]


@pytest.mark.parametrize(
    ("engine", "ftype", "gqa", "attn_v"), CASES, ids=[f"{e}-{f}-gqa{g}" for e, f, g, _ in CASES]
)
def test_ftype_mixture_attn_v_follows_gqa(  # type: ignore[no-untyped-def]
    engine: str, ftype: str, gqa: int, attn_v: str | None, gqa_models: dict[int, Path], ik_quantize: Path,
    request, tmp_path: Path,
) -> None:  # fmt: skip
    """The planner's whole mixture equals what the real llama-quantize writes, byte for byte."""
    binary = ik_quantize if engine == "ik" else request.getfixturevalue("mainline_bin_dir") / "llama-quantize"
    base = gqa_models[gqa]
    text = (f'[model]\nbase = "{base}"\nengine = "{engine}"\n[[quant]]\nname = "m"\nftype = '
            f'"{ftype}"\ndefault = "q8_0"\n')
    recipe = parse_recipe(text, path=str(tmp_path / "gqa.toml"))
    recipe = recipe.model_copy(update={"quants": (recipe.quants[0].model_copy(update={"default": MIXTURE}),)})
    plan = expand(recipe, None, load_inventory(base, engine=engine), imatrix=False)  # type: ignore[arg-type]
    out = tmp_path / "out.gguf"
    cmd = quantize_command(plan, binary=binary, input_path=base, output_path=out, threads=2)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cat = catalogue(engine)  # type: ignore[arg-type]
    got = {t.name: cat.by_id(t.type_id).name for t in read_header(out).tensors}  # type: ignore[union-attr]
    want = {t.name: t.type for t in plan.tensors}
    assert got == want
    assert out.stat().st_size == plan.file_bytes
    if attn_v is not None:
        assert {got[f"blk.{i}.attn_v.weight"] for i in (0, 1)} == {attn_v}
