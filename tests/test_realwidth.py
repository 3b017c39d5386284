"""Real-width validation models: the very headers the GPU runs loaded, sparse zero data, real loads."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from quantforge.fit.dims import dims_from_hparams
from quantforge.fit.kv import kv_cache
from quantforge.fit.realwidth import (
    VALIDATION_HEADER_SHA256,
    VALIDATION_MODELS,
    RealWidthSpec,
    realwidth_inventory,
    realwidth_layout,
    write_realwidth,
)
from quantforge.gguf_header import read_header


@pytest.mark.parametrize("key", sorted(VALIDATION_MODELS))
def test_headers_are_those_the_gpu_loaded(key: str) -> None:
    head, _, _ = realwidth_layout(VALIDATION_MODELS[key])
    assert hashlib.sha256(head).hexdigest() == VALIDATION_HEADER_SHA256[key]


def test_sparse_file_reads_back(tmp_path: Path) -> None:
    spec = VALIDATION_MODELS["ds"]
    p = write_realwidth(spec, tmp_path / "ds.gguf")
    _, size, infos = realwidth_layout(spec)
    assert p.stat().st_size == size == 15835138784
    assert p.stat().st_blocks * 512 < 16 << 20  # sparse: the header and a few blocks on disk
    h = read_header(p)
    inv = realwidth_inventory(spec)
    assert [t.name for t in h.tensors] == [t.name for t in inv.tensors]
    assert [t.shape for t in h.tensors] == [tuple(t.shape) for t in inv.tensors]
    assert h.get("deepseek2.block_count") == 3 and h.get("deepseek2.leading_dense_block_count") == 1
    assert h.get("deepseek2.expert_count") == 256 and len(h.get("tokenizer.ggml.tokens")) == 129280
    # ik layout: attn_kv_b kept beside the 2-D k_b / v_b
    names = {t.name for t in h.tensors}
    assert {"blk.0.attn_kv_b.weight", "blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight"} <= names


def test_refuses_qwen3_dense_layers() -> None:
    from quantforge.errors import InputError

    with pytest.raises(InputError, match="no dense layers"):
        realwidth_layout(RealWidthSpec("qwen3-30b", "ik", 1, 2))


@pytest.mark.mainline
def test_mainline_loads_real_width_model(tmp_path: Path, mainline_bin_dir: Path) -> None:
    """llama.cpp's own no-alloc estimate of the Qwen3-30B-A3B-width model: the KV it would allocate
    equals the planner's, to the MiB it prints."""
    spec = VALIDATION_MODELS["q30"]
    p = write_realwidth(spec, tmp_path / "q30.gguf")
    out = subprocess.run(
        [str(mainline_bin_dir / "llama-fit-params"), "-m", str(p), "-c", "32768", "-ub", "512", "-fa", "on",
         "-fitp", "on"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-500:]
    host = next(ln.split() for ln in out.stdout.splitlines() if ln.startswith("Host"))
    inv = realwidth_inventory(spec)
    kv = kv_cache(dims_from_hparams(inv.arch, inv.hparams), n_ctx=32768, engine="mainline")
    assert int(host[2]) == kv.total >> 20 == 192
