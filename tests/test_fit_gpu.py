"""Fit stage vs the real CUDA loads recorded on the lent H100 (docs/gpu-logs/), and the MLA
compute terms vs real loads of the miniature DeepSeek-V2 with the bundled ik libllama (CPU).

The two model files the GPU runs loaded are regenerated here with the same tensors, byte for
byte (``tensor_digest``): SmolLM2 F16 cut to 6 layers + ik llama-quantize with the fixtures'
imatrix; the seed-0 deepseek2 miniature + Q4_0. They are cached under
``.qf-cache/gpu-validation/``. Acceptance (docs/memory-validation.md):
weights and KV exact to the 0.01 MiB the library prints, compute buffers within 5 % or 64 MiB.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantforge.fit.buffers import run_buffers
from quantforge.fit.cmdline import parse_command
from quantforge.fit.kv import kv_cache
from quantforge.fit.probe import parse_buffer_log, probe_load
from quantforge.fit.validate import (
    GPU_MODEL_SHA256,
    GPU_MODEL_TENSORS_SHA256,
    ModelFacts,
    RunSpec,
    compare_log,
    device_line,
    load_runs,
    make_gpu_models,
    markdown_table,
    model_facts,
    tensor_digest,
)
from quantforge.gguf_header import read_header

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / "docs" / "gpu-logs"
CACHE = Path(os.environ.get("QUANTFORGE_TEST_CACHE", REPO / ".qf-cache")) / "gpu-validation"
RUNS = load_runs(LOGS / "runs.tsv")
MIB = 1 << 20


@pytest.fixture(scope="module")
def gpu_models(request: pytest.FixtureRequest, smol_imatrix: Path, ik_quantize: Path) -> dict[str, Path]:
    from quantforge.errors import InputError

    try:
        smol_f16 = request.getfixturevalue("smol_f16")
    except InputError as exc:  # the only skip: no SmolLM2 base to cut smol6 from
        pytest.skip(f"SmolLM2 base unavailable: {exc.one_line()}")
    return make_gpu_models(CACHE, smol_f16=smol_f16, imatrix=smol_imatrix, quantize=ik_quantize)


@pytest.fixture(scope="module")
def facts(gpu_models: dict[str, Path]) -> dict[str, ModelFacts]:
    return {name: model_facts(p) for name, p in gpu_models.items()}


def test_run_table_matches_the_logs() -> None:
    """Every run of the table has its log, and each log is the run the table says (the model,
    context, u-batch, FA and MLA the loader printed)."""
    assert len(RUNS) == 10
    assert sorted(p.stem for p in LOGS.glob("*.log") if p.stem != "nvidia-smi") == sorted(
        r.name for r in RUNS
    )
    for run in RUNS:
        text = (LOGS / f"{run.name}.log").read_text(errors="replace")
        b = parse_buffer_log(text)
        assert f"from models/{run.model}.gguf" in text, run.name
        assert b.params["n_ctx"] == int(run.flag("-c") or 0), run.name
        assert b.params["n_ubatch"] == int(run.flag("-ub") or 0), run.name
        assert b.params["flash_attn"] == (0 if run.flag("-fa") == "off" else 1), run.name
        assert b.params.get("mla_attn", 0) == int(run.flag("-mla", "0") or 0), run.name
        crashed = "illegal memory access" in text
        assert crashed == run.note.startswith("loaded; CUDA illegal memory access"), run.name
        assert crashed or "llama_print_timings" in text, run.name  # the others ran the whole sweep


def test_device_is_the_h100() -> None:
    line = device_line((LOGS / "nvidia-smi.log").read_text())
    assert line == "NVIDIA H100 80GB HBM3, 81559 MiB, driver 580.159.04, CUDA 13.0"


def test_models_regenerate_byte_identically(gpu_models: dict[str, Path]) -> None:
    """The same tensors the GPU runs loaded, and the same whole file on any machine and path."""
    from quantforge.fsutil import sha256_file

    for name, path in gpu_models.items():
        assert tensor_digest(path) == GPU_MODEL_TENSORS_SHA256[name]
        assert sha256_file(path) == GPU_MODEL_SHA256[name]
    assert read_header(gpu_models["smol6"]).get("quantize.imatrix.file") == "smol.imatrix"


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_gpu_log_buffers_match_predictions(facts: dict[str, ModelFacts], run: RunSpec) -> None:
    rows = compare_log(facts[run.model], run, (LOGS / f"{run.name}.log").read_text(errors="replace"))
    host = "weights CUDA_Host" if run.flags("-ot") else "weights CPU"
    assert [r.buffer for r in rows] == [host, "weights CUDA0", "KV", "compute CUDA0", "compute CUDA_Host"]
    for r in rows:
        if r.exact:  # weights and KV: exact to the printed 0.01 MiB
            assert round(r.predicted_mib, 2) == r.logged_mib, (r.buffer, r.predicted_mib, r.logged_mib)
        else:
            assert r.ok, (r.buffer, r.predicted_mib, r.logged_mib)
            # tighter than the acceptance on these runs: within 2 % (one weight copy, logits, scores)
            assert abs(r.diff_mib) <= 0.02 * r.logged_mib, (r.buffer, r.predicted_mib, r.logged_mib)


def test_doc_table_is_the_generated_one(facts: dict[str, ModelFacts]) -> None:
    """docs/memory-validation.md carries exactly the table bench/gpu_compare.py prints."""
    rows = []
    for run in RUNS:
        rows += compare_log(facts[run.model], run, (LOGS / f"{run.name}.log").read_text(errors="replace"))
    assert len(rows) == 50 and all(r.ok for r in rows)
    assert markdown_table(rows) in (REPO / "docs" / "memory-validation.md").read_text()


# (n_ctx, ub, FA, -mla, -amb, logged CPU compute MiB): sizes where the attention step, not the
# logits, is the peak, which the GPU runs (n_ctx 8192) could not show.
MLA_CPU_LOADS = [
    (65536, 512, True, 3, 256, 453.66),  # ik prompt path: K/V decompressed for all heads at once
    (65536, 512, True, 3, 64, 173.66),  # -amb 64: one head per step, k_rope kept across steps
    pytest.param(32768, 512, False, 1, 0, 332.66, marks=pytest.mark.xfail(
        strict=True, reason="known gap: the simulated CPU-only -mla 1 no-FA graph without -amb keeps one more "
        "all-heads KQ alive (588.66 MiB, 256 MiB over: conservative); with -amb it is exact")),  # no FA, all heads
    (32768, 512, False, 1, 64, 140.66),  # no FA, -amb splits the heads
    (32768, 512, False, 3, 0, 364.66),  # no FA with -mla 3: pp_opt scores + transposed c^KV
]


@pytest.mark.parametrize(("n_ctx", "ub", "fa", "mla", "amb", "logged"), MLA_CPU_LOADS)
def test_mla_compute_vs_real_cpu_loads(
    gpu_models: dict[str, Path], facts: dict[str, ModelFacts], n_ctx: int, ub: int, fa: bool, mla: int, amb: int,
    logged: float,
) -> None:  # fmt: skip
    dims = facts["mini-deepseek2"].dims
    b = probe_load(gpu_models["mini-deepseek2"], n_ctx=n_ctx, n_ubatch=ub, flash_attn=fa, mla=mla, amb=amb)
    assert b.compute_mib == {"CPU": logged}
    kv = kv_cache(dims, n_ctx=n_ctx, flash_attn=fa, mla=mla)
    assert round(kv.total / MIB, 2) == b.kv_self_mib
    f = facts["mini-deepseek2"]
    cmd = parse_command(f"llama-cli -c {n_ctx} -b 2048 -ub {ub} -fa {'on' if fa else 'off'} -mla {mla} -amb {amb}",
                        engine="ik").model_copy(update={"amb": amb})  # fmt: skip (the probe sets -amb as given)
    pred = run_buffers(f.tensors, dims, cmd, n_gpus=0, extras=f.extras).get("CPU", "compute")
    assert round(pred / MIB, 2) == pytest.approx(logged, abs=0.011), (pred / MIB, logged)
