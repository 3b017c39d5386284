"""Miniature models: real naming and row divisibility of the full models, accepted by the real
ik ``llama-quantize``, and read back by the header reader with ik-only type ids."""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
from pathlib import Path

import pytest

from quantforge.errors import InputError
from quantforge.gguf_header import read_header
from quantforge.inventory import TensorInventory, load_inventory
from quantforge.miniature import write_miniature

VARIANTS = [("llama", "ik"), ("qwen3moe", "ik"), ("deepseek2", "ik"), ("deepseek2", "mainline"), ("glm4moe",
                                                                                                  "ik")]
N_TENSORS = {"llama-ik": 21, "qwen3moe-ik": 27, "deepseek2-ik": 55, "deepseek2-mainline": 52,
             "glm4moe-ik": 55}
# The real BF16 listings whose naming and row divisibility each miniature must share.
REAL = {
    "qwen3moe-ik": "Qwen3-VL-235B-A22B-Thinking.bf16.tsv",
    "deepseek2-mainline": "DeepSeek-V3.1-Terminus.bf16.tsv",
    "glm4moe-ik": "GLM-4.5-Air.bf16.tsv",
}


@pytest.fixture(scope="module")
def minis(tmp_path_factory: pytest.TempPathFactory, smol_q4_1: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mini")
    return {
        f"{a}-{lay}": write_miniature(a, d / f"mini-{a}-{lay}.gguf", layout=lay,
                                      tokenizer_from=smol_q4_1)  # type: ignore[arg-type]
        for a, lay in VARIANTS
    }


def _suffix_rows(pairs: list[tuple[str, tuple[int, ...]]]) -> dict[str, set[int]]:
    """Per tensor kind (``blk.N.`` stripped): the set of gcd(ne0, 256) values, i.e. row divisibility."""
    out: dict[str, set[int]] = {}
    for name, shape in pairs:
        kind = re.sub(r"^blk\.\d+\.", "blk.N.", name)
        # 1-D tensors and the f32 router are never quantized: only their names must match.
        quantizable = len(shape) >= 2 and "ffn_gate_inp" not in name
        out.setdefault(kind, set()).add(math.gcd(shape[0], 256) if quantizable else 0)
    return out


def _real_pairs(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, *_ = line.split("\t")
        rows.append((name, tuple(int(x) for x in shape.split(","))))
    return rows


@pytest.mark.parametrize("key", [f"{a}-{lay}" for a, lay in VARIANTS])
def test_miniature_inventory(minis: dict[str, Path], key: str) -> None:
    inv = load_inventory(minis[key])
    arch, layout = key.split("-")
    assert inv.arch == arch
    assert len(inv.tensors) == N_TENSORS[key]
    assert inv.layout == (layout if arch == "deepseek2" else None)
    assert inv.hparams["embedding_length"] == 256
    assert inv.hparams["vocab_size"] == 49152
    assert inv.kv_value("general.file_type") == 32
    assert inv.kv_value("tokenizer.ggml.model") == "gpt2"
    assert inv.tensors[0].name == "token_embd.weight" and inv.tensors[0].shape == (256, 49152)
    assert {t.dtype for t in inv.tensors} == {"bf16", "f32"}
    # Every 1-D tensor and the router are f32, as the converters write them.
    assert all(t.dtype == "f32" for t in inv.tensors if len(t.shape) == 1 or "ffn_gate_inp" in t.name)
    # The file is exactly header + padded tensor data.
    h = read_header(minis[key])
    data = sum((t.n_elements * (4 if t.type_id == 0 else 2) + 31) // 32 * 32 for t in h.tensors)
    assert minis[key].stat().st_size == h.data_offset + data


@pytest.mark.parametrize("key", sorted(REAL))
def test_naming_and_row_divisibility_match_the_real_model(minis: dict[str, Path], key: str,
                                                          shared_dir: Path) -> None:
    mini = _suffix_rows([(t.name, t.shape) for t in load_inventory(minis[key]).tensors])
    real = _suffix_rows(_real_pairs(shared_dir / "models" / REAL[key]))
    assert mini == real


def test_deepseek2_layouts() -> None:
    ik = _kinds("deepseek2", "ik")
    ml = _kinds("deepseek2", "mainline")
    assert ik - ml == {"blk.N.attn_kv_b.weight"} and ml <= ik
    ik_inv, ml_inv = _inv("deepseek2", "ik"), _inv("deepseek2", "mainline")
    shape = {t.name: t.shape for t in ik_inv.tensors}
    assert shape["blk.0.attn_kv_b.weight"] == (512, 4 * 256)
    assert shape["blk.0.attn_k_b.weight"] == (128, 4 * 512)  # ik: 2-D, row 128
    assert shape["blk.0.attn_v_b.weight"] == (512, 4 * 128)
    mshape = {t.name: t.shape for t in ml_inv.tensors}
    assert mshape["blk.0.attn_k_b.weight"] == (128, 512, 4)  # mainline: 3-D
    assert mshape["blk.0.attn_v_b.weight"] == (512, 128, 4)
    assert ik_inv.hparams["attention.head_count_kv"] == 4 and ml_inv.hparams["attention.head_count_kv"] == 1
    assert ml_inv.hparams["attention.key_length"] == 576 and ml_inv.hparams["attention.key_length_mla"] == 192
    assert ik_inv.hparams["leading_dense_block_count"] == 1 and ik_inv.hparams["expert_shared_count"] == 1
    assert ik_inv.hparams["expert_gating_func"] == 2


_CACHE: dict[tuple[str, str], TensorInventory] = {}


def _inv(arch: str, layout: str) -> TensorInventory:
    if (arch, layout) not in _CACHE:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            _CACHE[arch, layout] = load_inventory(write_miniature(arch, Path(d) / "m.gguf",
                                                                  layout=layout))  # type: ignore[arg-type]
    return _CACHE[arch, layout]


def _kinds(arch: str, layout: str) -> set[str]:
    return {re.sub(r"^blk\.\d+\.", "blk.N.", t.name) for t in _inv(arch, layout).tensors}


def test_glm4moe_nextn_layer(minis: dict[str, Path]) -> None:
    inv = load_inventory(minis["glm4moe-ik"])
    assert inv.hparams["block_count"] == 3 and inv.hparams["nextn_predict_layers"] == 1
    nextn = [t.name for t in inv.tensors if ".nextn." in t.name]
    assert nextn == [f"blk.2.nextn.{n}.weight" for n in
                     ("eh_proj", "embed_tokens", "enorm", "hnorm", "shared_head_head", "shared_head_norm")]
    assert [t.shape for t in inv.tensors if t.name == "blk.2.nextn.eh_proj.weight"] == [(512, 256)]


def test_same_seed_same_bytes(tmp_path: Path, smol_q4_1: Path) -> None:
    a = write_miniature("llama", tmp_path / "a.gguf", seed=7, dtype="f16", tokenizer_from=smol_q4_1)
    b = write_miniature("llama", tmp_path / "b.gguf", seed=7, dtype="f16", tokenizer_from=smol_q4_1)
    c = write_miniature("llama", tmp_path / "c.gguf", seed=8, dtype="f16", tokenizer_from=smol_q4_1)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
    assert load_inventory(a).tensors[0].dtype == "f16"
    assert load_inventory(a).kv_value("general.file_type") == 1


def test_gguf_py_reads_a_miniature(minis: dict[str, Path]) -> None:
    from gguf import GGUFReader

    r = GGUFReader(str(minis["deepseek2-mainline"]))
    inv = load_inventory(minis["deepseek2-mainline"])
    assert [(t.name, tuple(int(x) for x in t.shape)) for t in r.tensors] == [(t.name, t.shape)
                                                                             for t in inv.tensors]
    assert r.data_offset == inv.metadata_bytes


def test_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no miniature for architecture 'gpt2'"):
        write_miniature("gpt2", tmp_path / "x.gguf")
    (tmp_path / "y.gguf").write_bytes(b"keep")
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_miniature("llama", tmp_path / "y.gguf")
    assert (tmp_path / "y.gguf").read_bytes() == b"keep"


@pytest.mark.parametrize("ftype", ["Q8_0", "IQ4_K"])
@pytest.mark.parametrize("key", [f"{a}-{lay}" for a, lay in VARIANTS])
def test_ik_llama_quantize_accepts_the_miniature(
    minis: dict[str, Path], key: str, ftype: str, ik_quantize: Path, tmp_path: Path
) -> None:
    from quantforge.catalogue import catalogue

    src = minis[key]
    out = tmp_path / f"{key}-{ftype}.gguf"
    # The vocab-wide matrices at q8_0 keep the IQ4_K runs short; every block tensor gets IQ4_K.
    fast = ["--token-embedding-type", "q8_0", "--output-tensor-type", "q8_0",
            "--custom-q", r"nextn\.(embed_tokens|shared_head_head)=q8_0"] if ftype == "IQ4_K" else []
    proc = subprocess.run([str(ik_quantize), *fast, str(src), str(out), ftype], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    q = read_header(out)
    m = read_header(src)
    assert [(t.name, t.shape) for t in q.tensors] == [(t.name, t.shape) for t in m.tensors]
    cat = catalogue("ik")
    ids = {t.type_id for t in q.tensors}
    if ftype == "Q8_0":
        assert ids == {0, 8}
        assert q.get("general.file_type") == 7
    else:
        assert 139 in ids  # iq4_k: an ik-only id gguf-py refuses
        assert q.get("general.file_type") == 140
        for t in q.tensors:
            if t.name.endswith("ffn_down_exps.weight"):
                # Rows of 384 (GLM-Air's 1408 is not a multiple of 256 either) fall back; 256 do not.
                assert cat.by_id(t.type_id).name == ("q5_0" if t.shape[0] == 384
                                                     else "iq4_k")  # type: ignore[union-attr]
    # Exact file size: header + each tensor's catalogue bytes padded to 32.
    data = sum((cat.by_id(t.type_id).tensor_bytes(t.shape) + 31) // 32 * 32
               for t in q.tensors)  # type: ignore[union-attr]
    assert out.stat().st_size == q.data_offset + data


@pytest.mark.parametrize("key", ["deepseek2-ik", "glm4moe-ik"])
def test_ik_libllama_loads_the_miniature(minis: dict[str, Path], key: str) -> None:
    # The bundled ik libllama builds the model (tensors, KV cache) and its tokenizer works.
    from ik_llama_cpp import IkLlama

    llm = IkLlama(str(minis[key]), n_ctx=256, n_threads=2, verbose=False)
    try:
        assert llm.tokenize("Hello world") == [19556, 905]
    finally:
        llm.close()


@pytest.mark.parametrize("key", ["llama-ik", "qwen3moe-ik", "deepseek2-mainline", "glm4moe-ik"])
def test_mainline_llama_bench_runs_the_miniature(
    minis: dict[str, Path], key: str, mainline_bin_dir: Path
) -> None:
    import csv
    import io

    proc = subprocess.run(
        [str(mainline_bin_dir / "llama-bench"), "-m", str(minis[key]), "-p", "8", "-n", "2", "-r", "1", "-t",
         "2",
         "-o", "csv"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    inv = load_inventory(minis[key])
    arch = key.split("-")[0]
    assert rows and all(r["model_type"] == f"{arch} ?B BF16" for r in rows)
    assert int(rows[0]["model_n_params"]) == inv.n_params
    assert int(rows[0]["model_size"]) == sum(t.n_elements * (4 if t.type_id == 0 else 2)
                                             for t in read_header(minis[key]).tensors)
