"""Which cluster a run uses, what its tasks ask for, and the refusals that need no cluster at all."""

from __future__ import annotations

from pathlib import Path

import pytest

import quantforge as qf
from quantforge import constants
from quantforge.catalogue import catalogue
from quantforge.cluster.config import check_out_dir, resolve_cluster
from quantforge.cluster.resources import (
    PROCESS_RESERVE_BYTES,
    NodeInfo,
    TaskResources,
    build_resources,
    check_feasible,
    quantize_working_set,
    sweep_resources,
)
from quantforge.errors import ClusterError, InputError, UsageError
from quantforge.plan import expand, recipe_inventory

REPO = Path(__file__).resolve().parents[1]


def test_address_precedence_flag_env_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[cluster]\naddress = "ray://cfg-head:10001"\n')
    monkeypatch.setattr(constants, "CONFIG_FILE", cfg)
    monkeypatch.setattr(constants, "CLUSTER_ADDRESS", None)
    spec = resolve_cluster(None)
    assert spec is not None and (spec.address, spec.source, spec.client) == ("ray://cfg-head:10001", "config",
                                                                             True)
    monkeypatch.setattr(constants, "CLUSTER_ADDRESS", "ray://env-head:10001")
    assert resolve_cluster(None).address == "ray://env-head:10001"  # type: ignore[union-attr]
    spec = resolve_cluster("10.0.0.1:6379")
    assert spec is not None and (spec.address, spec.source, spec.client) == ("10.0.0.1:6379", "--cluster",
                                                                             False)
    assert resolve_cluster("local") is None  # one local run despite the configured cluster
    monkeypatch.setattr(constants, "CLUSTER_ADDRESS", "head")
    with pytest.raises(UsageError, match="QUANTFORGE_CLUSTER: bad cluster address 'head'"):
        resolve_cluster(None)
    monkeypatch.setattr(constants, "CLUSTER_ADDRESS", None)
    cfg.write_text("cluster = 3\n")
    with pytest.raises(InputError, match=r"\[cluster\] must be a table"):
        resolve_cluster(None)
    cfg.unlink()
    assert resolve_cluster(None) is None  # nothing configured: a local run, as before


def test_shared_folder_from_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "CONFIG_FILE", tmp_path / "none.toml")
    (tmp_path / "nfs").mkdir()
    r = tmp_path / "r.toml"
    r.write_text('[model]\nid = "HuggingFaceTB/SmolLM2-135M-Instruct"\n[cluster]\nshared = '
                 '"nfs"\nretries = 2\n'
                 '[[quant]]\nname = "Q8_0"\nftype = "Q8_0"\ndefault = "q8_0"\n')
    spec = resolve_cluster("ray://h:1", recipe=qf.load_recipe(r))
    assert spec is not None and spec.shared == (tmp_path / "nfs").resolve() and spec.retries == 2
    check_out_dir(spec, tmp_path / "nfs" / "out", where="--out")
    with pytest.raises(UsageError, match="is not inside the shared cluster folder"):
        check_out_dir(spec, tmp_path / "out", where="--out")


def test_a_build_asks_for_llama_quantize_s_working_set() -> None:
    """The largest tensor's source bytes and two f32 buffers of it, not the base: DeepSeek-R1's
    1.3 TB BF16 base needs 35.5 GiB, set by its bf16 [2048, 7168, 256] expert tensors."""
    r = qf.load_recipe(REPO / "recipes" / "deepseek-r1-0528.toml")
    inv = recipe_inventory(r)
    plan = expand(r, "IQ2_K_R4", inv)
    n = 2048 * 7168 * 256
    assert quantize_working_set(plan, inv) == 2 * n + 8 * n + PROCESS_RESERVE_BYTES == 38_117_834_752
    smol = qf.load_recipe(REPO / "recipes" / "smollm2-135m.toml")
    sinv = recipe_inventory(smol)
    n_embd = 576 * 49152  # token_embd, f16
    assert quantize_working_set(expand(smol, "IQ4_KS", sinv), sinv) == (
        catalogue("ik").get("f16").tensor_bytes((576, 49152)) + 8 * n_embd + PROCESS_RESERVE_BYTES)
    nodes = [NodeInfo(node_id="a" * 56, ip="10.0.0.2", cpus=64, memory=512 * 2**30),
             NodeInfo(node_id="b" * 56, ip="10.0.0.3", cpus=16, memory=48 * 2**30),
             NodeInfo(node_id="c" * 56, ip="10.0.0.4", cpus=8, memory=32 * 2**30)]
    req = build_resources(plan, inv, threads=None, nodes=nodes)
    assert (req.cpus, req.memory) == (16, 38_117_834_752)  # the 32 GiB node cannot hold it
    check_feasible("the build of IQ2_K_R4", req, nodes, address="ray://h:1")
    with pytest.raises(ClusterError,
                       match=r"no node of the cluster can run the build of IQ2_K_R4: it needs 16 CPUs, "
                                           r"35\.50 GiB memory; nodes: 10\.0\.0\.4 c{8} \(8 CPUs, "
                                           r"32\.00 GiB\)"):
        check_feasible("the build of IQ2_K_R4", req, nodes[2:], address="ray://h:1")


def test_a_sweep_asks_for_its_rig_and_all_of_that_node() -> None:
    nodes = [NodeInfo(node_id="a" * 56, ip="10.0.0.2", cpus=32, memory=256 * 2**30,
                      custom={"rig:256gb-24gb": 1.0}),
             NodeInfo(node_id="b" * 56, ip="10.0.0.3", cpus=8, memory=64 * 2**30,
                      custom={"rig:64gb-24gb": 1.0})]
    req = sweep_resources("256gb-24gb", 10 * 2**30, nodes=nodes)
    assert req == TaskResources(cpus=32, memory=12 * 2**30, custom={"rig:256gb-24gb": 1.0})
    with pytest.raises(ClusterError,
                       match=r"no node of the cluster offers the resource rig:cpu-128gb \(rigs on this "
                                           r"cluster: 256gb-24gb, 64gb-24gb;"):
        sweep_resources("cpu-128gb", 0, nodes=nodes)
