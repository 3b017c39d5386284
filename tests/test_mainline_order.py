"""Mainline's llama-quantize walks tensors by layer number, not in file order.

SmolLM2's GGUF lists its blocks as its single safetensors file sorts them (blk.0, blk.1, blk.10,
...). ik_llama.cpp quantizes in that order; llama.cpp in its ``weights_map`` order (layer number,
then name), and the ftype mixture's counters (``i_attention_wv``; ``i_ffn_down`` of a dense model)
follow it. The real mainline ``llama-quantize`` decides, and writes the file in that order.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quantforge.catalogue import catalogue
from quantforge.gguf_header import read_header
from quantforge.inventory import load_inventory
from quantforge.plan import expand, quantize_command
from quantforge.recipe import parse_recipe


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q3_K_M", "Q5_K_M"])
def test_mainline_mixture_counts_layers_in_its_own_order(
    ftype: str, smol_f16: Path, mainline_bin_dir: Path, tmp_path: Path
) -> None:
    inv = load_inventory(smol_f16, engine="mainline")
    assert [t.name for t in inv.tensors if t.name.endswith("attn_v.weight")][:3] == [
        "blk.0.attn_v.weight", "blk.1.attn_v.weight", "blk.10.attn_v.weight"]  # fmt: skip
    text = (f'[model]\nbase = "{smol_f16}"\nengine = "mainline"\n[[quant]]\nname = "v"\nftype = '
            f'"{ftype}"\ndefault = "mixture"\n')
    plan = expand(parse_recipe(text, path=str(tmp_path / "r.toml")), None, inv, imatrix=False)
    out = tmp_path / f"{ftype}.gguf"
    cmd = quantize_command(plan, binary=mainline_bin_dir / "llama-quantize", input_path=smol_f16,
                           output_path=out,
                           threads=2)  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    h = read_header(out)
    cat = catalogue("mainline")
    assert [(t.name, cat.by_id(t.type_id).name) for t in h.tensors] == [
        (t.name, t.type) for t in plan.tensors
    ]  # type: ignore[union-attr]
    assert out.stat().st_size == plan.file_bytes
    # Which layers got the more_bits bump is the point: blk.5 is a use_more_bits layer of 30.
    v5 = next(t for t in plan.tensors if t.name == "blk.5.attn_v.weight")
    assert v5.requested_type == ("q6_K" if ftype in ("Q4_K_M", "Q5_K_M") else "q4_K")
