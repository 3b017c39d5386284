"""Fit stage: exact KV cache, exact weights per buffer, compute buffers vs real loads, -ot
placement replayed with llama.cpp's matching, hand-checked verdicts, CLI bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quantforge.cli import main
from quantforge.fit.buffers import ik_layer_devices, ik_layer_sizes, run_buffers
from quantforge.fit.cmdline import parse_command
from quantforge.fit.dims import dims_from_hparams
from quantforge.fit.kv import kv_cache, padded_ctx
from quantforge.fit.placement import (
    FitTensor,
    apply_overrides,
    device_weight_bytes,
    fit_tensors,
    layer_device,
    prepare,
)
from quantforge.fit.probe import parse_buffer_log, probe_load
from quantforge.fit.report import Settings, plan_fit
from quantforge.fit.validate import model_facts
from quantforge.targets import list_targets, load_target

MIB = 1 << 20
GIB = 1 << 30
DATA = Path(__file__).parent / "data" / "fit"
R1 = DATA / "deepseek-r1-0528.toml"


def _dims(model_id: str) -> Any:
    from quantforge.inventory_synth import shipped_inventory

    inv = shipped_inventory(model_id, engine="ik")
    return dims_from_hparams(inv.arch, inv.hparams)


@pytest.fixture(scope="module")
def smol_dims() -> Any:
    return _dims("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def r1() -> tuple[list[Any], Any]:
    from quantforge.fit.api import recipe_plans
    from quantforge.recipe import load_recipe

    return recipe_plans(load_recipe(R1))


def _mib(n: int) -> float:
    return round(n / MIB, 2)


# ------------------------------------------------------------------------------------ KV cache


def test_kv_cache_matches_llama_logs() -> None:
    r1 = _dims("deepseek-ai/DeepSeek-R1-0528")
    kv = kv_cache(r1, n_ctx=163840, flash_attn=False, mla=1)
    assert (kv.total, kv.k_bytes, kv.v_bytes) == (20740 * MIB, 10980 * MIB, 9760 * MIB)
    assert kv_cache(r1, n_ctx=32768, flash_attn=True, mla=3).total == 2196 * MIB
    assert kv_cache(r1, n_ctx=32768, flash_attn=True, mla=1).v_bytes == 0  # kv^T not used with FA
    qwen = _dims("Qwen/Qwen3-235B-A22B")
    assert kv_cache(qwen, n_ctx=16384, type_k="q8_0", type_v="q8_0").total == 1598 * MIB


def test_context_padding() -> None:
    assert padded_ctx(1000, True) == 1024 and padded_ctx(1000, False) == 1024
    assert (
        padded_ctx(1001, False) == 1024 and padded_ctx(1025, False) == 1056 and padded_ctx(1025, True) == 1280
    )


def test_kv_cache_matches_fixture_logs(ik_fixtures: Path, smol_dims: Any) -> None:
    seen = 0
    for log in sorted((ik_fixtures / "logs").glob("*.log")):
        b = parse_buffer_log(log.read_text(errors="replace"))
        if b.kv_self_mib is None:
            continue
        kv = kv_cache(smol_dims, n_ctx=b.params["n_ctx"], flash_attn=bool(b.params["flash_attn"]))
        assert _mib(kv.total) == b.kv_self_mib, log.name
        seen += 1
    assert seen == 13


# --------------------------------------------------------------------------- weights per buffer


def _listing(path: Path) -> list[FitTensor]:
    out = []
    for line in path.read_text().splitlines():
        name, typ, shape, nbytes = line.split()
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        out.append(
            FitTensor(
                name=name,
                shape=tuple(int(x) for x in shape.split("x")),
                type=typ,
                bytes=int(nbytes),
                layer=layer,
            )
        )
    return out


def _default_device(name: str) -> str:
    return "CPU" if name == "token_embd.weight" else "CUDA0"


@pytest.mark.parametrize(
    ("log", "ot"),
    [("gpu-sweep-full.log", []), ("gpu-sweep-hybrid-ub512.log", ["ffn_.*=CPU"]), ("sweep-cpu.log", None)],
)
def test_weights_per_buffer_exact(ik_fixtures: Path, log: str, ot: list[str] | None) -> None:
    prep = prepare(_listing(ik_fixtures / "tensors-smol-custom.txt"), engine="ik", n_layer=30)
    names = [t.name for t in prep.tensors]
    b = parse_buffer_log((ik_fixtures / "logs" / log).read_text())
    if ot is None:  # CPU only: one mapped buffer, tied output shares token_embd
        got = device_weight_bytes(prep, dict.fromkeys(names, "CPU"))
        assert {"CPU": _mib(got["CPU"])} == b.weights_mib
        return
    dev = apply_overrides(names, ot, _default_device)
    got = device_weight_bytes(prep, dev)
    cpu_label = "CUDA_Host" if ot else "CPU"  # ik: overrides turn mmap off -> pinned host buffer
    assert {cpu_label: _mib(got["CPU"]), "CUDA0": _mib(got["CUDA0"])} == b.weights_mib


# --------------------------------------------------------------------------- compute buffers


def _close(pred: int, logged_mib: float) -> bool:
    return abs(pred / MIB - logged_mib) <= max(0.05 * logged_mib, 64)


@pytest.mark.parametrize(
    ("log", "argv", "n_gpus"),
    [
        ("gpu-sweep-full.log", "-c 4096 -b 2048 -ub 512 -ngl 99", 1),
        ("gpu-sweep-hybrid-ub512.log", "-c 4096 -b 2048 -ub 512 -ngl 99 -ot ffn_.*=CPU", 1),
        ("gpu-sweep-hybrid-ub2048.log", "-c 4096 -b 2048 -ub 2048 -ngl 99 -ot ffn_.*=CPU", 1),
        ("sweep-cpu.log", "-c 4096 -b 2048 -ub 512", 0),
    ],
)
def test_compute_buffers_vs_fixture_logs(ik_fixtures: Path, smol_dims: Any, log: str, argv: str, n_gpus: int) -> None:
    """The H100 and CPU runs of the fixtures (ik's own sweep-bench on SmolLM2 quant c): every
    compute buffer of the simulated graph exact to the printed 0.01 MiB."""
    b = parse_buffer_log((ik_fixtures / "logs" / log).read_text())
    cmd = parse_command("llama-sweep-bench " + argv, engine="ik")
    assert (b.params["n_ctx"], b.params["n_ubatch"]) == (cmd.n_ctx, cmd.effective_ubatch)
    rb = run_buffers(_listing(ik_fixtures / "tensors-smol-custom.txt"), smol_dims, cmd, n_gpus=n_gpus)
    got = {d: _mib(rb.get(d, "compute")) for d in b.compute_mib}
    assert got == pytest.approx(b.compute_mib, abs=0.011), (log, got, b.compute_mib)


@pytest.mark.parametrize(
    ("n_ctx", "ub", "fa"),
    [
        (512, 512, True),
        (4096, 128, True),
        (4096, 2048, True),
        (16384, 512, True),
        (8192, 512, False),
        (8192, 256, False),
    ],
)
def test_real_cpu_load_matches_prediction(
    smol_f16: Path, smol_dims: Any, n_ctx: int, ub: int, fa: bool
) -> None:
    """The bundled ik libllama really allocates what the planner predicts (SmolLM2 F16)."""
    b = probe_load(smol_f16, n_ctx=n_ctx, n_ubatch=ub, flash_attn=fa)
    kv = kv_cache(smol_dims, n_ctx=n_ctx, flash_attn=fa)
    assert _mib(kv.total) == b.kv_self_mib
    assert b.weights_mib == {"CPU": 256.63}
    cmd = parse_command(f"llama-cli -c {n_ctx} -b 2048 -ub {ub} -fa {'on' if fa else 'off'}", engine="ik")
    rb = run_buffers(model_facts(smol_f16).tensors, smol_dims, cmd, n_gpus=0)
    assert _close(rb.get("CPU", "compute"), b.compute_mib["CPU"]), (rb.get("CPU", "compute") / MIB, b.compute_mib)


# ------------------------------------------------------------------------ placement and -ot


def test_layer_split_matches_tensor_split_rule() -> None:
    counts = [21, 20, 20]
    got = [layer_device(i, counts) for i in range(61)]
    assert got == [0] * 21 + [1] * 20 + [2] * 20


def test_ot_arguments_replay_to_the_plan(r1: tuple[list[Any], Any]) -> None:
    plans, dims = r1
    targets = [t for t in list_targets() if t.gpu and not t.unified_memory]
    checked = 0
    for p in plans:
        for t in targets:
            r = plan_fit(p, dims, t, settings=Settings(n_ctx=32768), with_placement=True)
            assert r.placement is not None
            n_gpu = len(t.gpu)
            # the layers' devices are what the emitted -ngl/-ts give on ik's loader
            cmd = parse_command(r.command, engine="ik")
            kv = kv_cache(dims, n_ctx=32768, type_k="f16", type_v="f16", flash_attn=True, mla=3, engine="ik")
            sizes, max_compute = ik_layer_sizes(fit_tensors(p), dims, kv.per_layer, n_ubatch=cmd.effective_ubatch,
                                                n_ctx=32768, mla=cmd.mla, amb=cmd.amb)  # fmt: skip
            ldev = ik_layer_devices(sizes, max_compute, ngl=int(cmd.n_gpu_layers or 0), n_gpus=n_gpu,
                                    tensor_split=cmd.tensor_split)  # fmt: skip
            assert sorted(set(ldev)) == list(range(n_gpu)), (p.name, t.name)  # every GPU gets layers

            def default(name: str, ldev: list[int] = ldev) -> str:
                if name == "token_embd.weight":
                    return "CPU"
                if name.startswith("blk."):
                    return f"CUDA{ldev[int(name.split('.')[1])]}"
                return f"CUDA{ldev[-1]}"

            got = apply_overrides([x.name for x in p.tensors], r.override_args, default)
            assert got == r.placement, (p.name, t.name)
            checked += 1
    assert checked == len(plans) * len(targets)


def test_interleaved_without_cuda_matmul_never_on_gpu(r1: tuple[list[Any], Any]) -> None:
    from quantforge.catalogue import catalogue

    plans, dims = r1
    cat = catalogue("ik")
    mis = next(p for p in plans if p.name == "Q4_K_R4-mispacked")
    r = plan_fit(mis, dims, load_target("256gb-24gb"), settings=Settings(n_ctx=32768), with_placement=True)
    assert r.placement is not None
    types = {t.name: t.type for t in mis.tensors}
    for name, dev in r.placement.items():
        qt = cat.get(types[name])
        if qt.interleave > 1 and not qt.cuda_matmul:
            assert dev == "CPU", name
    codes = {f.code: f for f in r.findings}
    assert codes["r4-on-gpu"].count > 0 and codes["r4-on-gpu"].cost_ms_per_token > 0


def test_gate_and_up_stay_together(r1: tuple[list[Any], Any]) -> None:
    plans, dims = r1
    for p in plans:
        r = plan_fit(
            p, dims, load_target("256gb-3x24gb"), settings=Settings(n_ctx=16384), with_placement=True
        )
        assert r.placement is not None
        for layer in range(dims.n_layer):
            g = r.placement.get(f"blk.{layer}.ffn_gate_exps.weight")
            assert g == r.placement.get(f"blk.{layer}.ffn_up_exps.weight")


# ------------------------------------------------------------------------------ verdicts


def test_hand_checked_verdicts(r1: tuple[list[Any], Any]) -> None:
    plans, dims = r1
    by = {p.name: p for p in plans}
    assert 124 * GIB < by["IQ1_S_R4"].tensor_bytes < 135 * GIB
    assert 660 * GIB < by["Q8_0"].tensor_bytes < 670 * GIB

    def v(q: str, t: str, ctx: int = 32768) -> Any:
        return plan_fit(by[q], dims, load_target(t), settings=Settings(n_ctx=ctx))

    # 1-2: the ~131 GiB IQ1_S_R4 fits 256 GB + 24 GB at 32k, and even 128 GB + 24 GB (110 GiB in RAM)
    assert v("IQ1_S_R4", "256gb-24gb").verdict == "fits"
    assert v("IQ1_S_R4", "128gb-24gb").verdict == "fits"
    # 3: not 64 GB + 24 GB: RAM short by ~50 GiB
    r = v("IQ1_S_R4", "64gb-24gb")
    assert r.verdict == "does_not_fit" and 45 * GIB < r.short_by_bytes < 55 * GIB
    # 4: CPU-only 128 GB: 131 GiB of weights > 122 GiB usable
    assert v("IQ1_S_R4", "cpu-128gb").verdict == "does_not_fit"
    # 5: CPU-only 368 GB takes it, with R4 advice silent (already _r4 experts)
    assert v("IQ1_S_R4", "cpu-368gb").verdict == "fits"
    # 6-7: 226 GiB IQ2_K_R4 fits 256 GB + 24 GB at 32k but not at the full 160k; max context in between
    r = v("IQ2_K_R4", "256gb-24gb")
    assert r.verdict == "fits" and 32768 < r.max_ctx < 163840
    r = v("IQ2_K_R4", "256gb-24gb", ctx=163840)
    assert r.verdict == "fits_smaller_ctx" and r.max_ctx == v("IQ2_K_R4", "256gb-24gb").max_ctx
    assert r.cheapest_change is not None
    # 8: 300 GiB IQ3_K_R4 needs three 3090s' worth of VRAM on a 256 GB box
    assert v("IQ3_K_R4", "256gb-24gb").verdict == "does_not_fit"
    assert v("IQ3_K_R4", "256gb-3x24gb").verdict == "fits"
    # 9: Q8_0 (~665 GiB) fits none of the non-server rigs, but the 1 TB EPYC and the 768 GB 2-socket
    for t in list_targets():
        got = v("Q8_0", t.name).verdict
        assert (got == "fits") == (t.name in ("1tb-epyc-2x24gb", "2s-epyc-rtx8000")), t.name
        if not t.server:
            assert got == "does_not_fit"
    # 10: 16 GB VRAM cannot even hold IQ2_K_R4's q8_0 attention + shared experts
    r = v("IQ2_K_R4", "32gb-16gb")
    gpu = next(d for d in r.devices if d.name == "CUDA0")
    assert r.verdict == "does_not_fit" and gpu.headroom_bytes < 0


def test_every_shipped_target_gets_a_verdict(r1: tuple[list[Any], Any]) -> None:
    from quantforge.fit.api import breakpoint_matrix

    plans, dims = r1
    m = breakpoint_matrix(plans, dims, list_targets(), settings=Settings(n_ctx=32768))
    assert len(m.cells) == len(plans) * len(list_targets())
    assert {c.verdict for c in m.cells} <= {"fits", "fits_smaller_ctx", "does_not_fit"}


def test_command_flags_ik(r1: tuple[list[Any], Any]) -> None:
    plans, dims = r1
    r = plan_fit(plans[0], dims, load_target("256gb-24gb"), settings=Settings(n_ctx=32768))
    cmd = r.command
    for flag in ("-fa", "-mla", "-amb", "-ctk", "-ctv", "-ngl", "-ot"):
        assert flag in cmd
    # ik fuses MoE by default and knows only -no-fmoe; -fa takes its value
    assert "-fmoe" not in cmd
    assert cmd[cmd.index("-fa") + 1] in ("on", "off")
    assert int(cmd[cmd.index("-b") + 1]) >= int(cmd[cmd.index("-ub") + 1])
    assert cmd[cmd.index("-c") + 1] == "32768"
    r3 = plan_fit(plans[0], dims, load_target("256gb-3x24gb"), settings=Settings(n_ctx=32768), with_placement=True)
    assert r3.placement is not None
    gpu_of = {layer: int(r3.placement[f"blk.{layer}.attn_norm.weight"][-1]) for layer in range(61)}
    assert sorted(set(gpu_of.values())) == [0, 1, 2] and list(gpu_of.values()) == sorted(gpu_of.values())
    # -ts: each GPU's memory in MiB (three 24 GiB cards), which ik's loader turns into its layer split
    assert r3.command[r3.command.index("-ts") + 1] == "24576,24576,24576"
    assert r3.tensor_split == [24576, 24576, 24576]
    # each GPU holds the experts of its own layers first: its own expert layers are the first
    # ones of its range (others' layers only take the room its next own layer did not fit in)
    for d in r3.devices[1:]:
        k = int(d.name[-1])
        mine = [layer for layer in range(3, 61) if gpu_of[layer] == k]
        own = [layer for layer in d.expert_layers if gpu_of[layer] == k]
        assert len(own) >= 3 and own == mine[: len(own)], (d.name, d.expert_layers)


def test_cpu_only_r4_advice(smol_dims: Any) -> None:
    from quantforge.fit.api import recipe_plans
    from quantforge.recipe import load_recipe

    plans, dims = recipe_plans(load_recipe(Path(__file__).parents[1] / "recipes" / "smollm2-135m.toml"))
    r = plan_fit(plans[0], dims, load_target("cpu-128gb"), settings=Settings(n_ctx=8192))
    assert r.verdict == "fits" and r.max_ctx == 8192
    adv = next(f for f in r.findings if f.code == "r4-cpu-plain")
    assert adv.count > 0 and "-rtr" in adv.message


# ---------------------------------------------------------------------------------- CLI


def test_cli_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert (
        main(["plan", str(R1), "--quant", "IQ1_S_R4", "--target", "256gb-24gb", "--ctx", "32768", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "fits" and data["kv_bytes"] == 2196 * MIB
    assert data["max_ctx"] >= 32768
    assert {d["name"]: d["kind"] for d in data["devices"]} == {"CPU": "cpu", "CUDA0": "gpu"}
    for d in data["devices"]:
        assert set(d) >= {
            "name",
            "kind",
            "weights_bytes",
            "kv_bytes",
            "compute_bytes",
            "total_bytes",
            "capacity_bytes",
        }
    assert data["command"][0] == "llama-server"


def test_cli_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(R1), "--matrix"]) == 0
    out = capsys.readouterr().out
    assert "IQ1_S_R4" in out and "cpu-368gb" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ctx", "0"], "--ctx 0: the context must be a positive number of tokens"),
        (["--ctx", "99999999999"], "--ctx 99999999999: absurdly large"),
        (["--ctk", "q7_0"], "--ctk q7_0: not a KV cache type of ik"),
        (["--ub", "0"], "--ub 0: the u-batch must be between 1 and 65536"),
    ],
)
def test_cli_bad_settings(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["plan", str(R1), "--target", "256gb-24gb", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"quantforge: error: {message}")


def test_cli_unknown_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(R1), "--target", "nowhere.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.toml: no such target file" in err[0]
