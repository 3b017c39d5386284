"""Build, evaluate and sweep on a real 3-node Ray cluster on this machine (head + 2 workers).

The nodes are separate raylets with their own CPUs, memory, ``rig:NAME`` resources, scratch
and cache folders (``tests/support/ray_cluster.py``); the driver is the CLI with ``--cluster
ray://…``, as a user runs it. The tools are the bundled ik ``llama-quantize`` and evaluator on
the real SmolLM2: every output is compared with a local build of the same recipe, file by file
(sha256), tensor by tensor (type, shape, bytes).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from quantforge.cli import main
from quantforge.gguf_header import read_header
from quantforge.manifest import read_manifest, resolve_file

pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -e '.[test]'")

from support import sigint_default  # noqa: E402
from support.ray_cluster import LoopbackCluster, processes_with  # noqa: E402

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]

# A 2-variant slice of the shipped SmolLM2 ladder: IQ4_KS, and IQ2_KS, which needs the imatrix
# (so the shipped imatrix and its recorded name are part of what must come out identical).
RECIPE = """\
[model]
base = "{base}"
engine = "ik"
name = "SmolLM2-135M-Instruct"

[imatrix]
file = "{imatrix}"
{cluster}
[[quant]]
name = "IQ4_KS"
ftype = "IQ4_KS"
default = "iq4_ks"
rules = [
  {{ match = 'token_embd', type = "q8_0" }},
  {{ match = 'attn_', type = "q6_0" }},
  {{ match = 'ffn_down', layers = "0-29", type = "iq5_ks" }},
  {{ match = 'ffn_(gate|up)', type = "iq4_ks" }},
]

[[quant]]
name = "IQ2_KS"
ftype = "IQ2_KS"
extends = "IQ4_KS"
default = "iq4_ks"
rules = [
  {{ match = 'ffn_down', layers = "2-27", type = "iq3_ks" }},
  {{ match = 'ffn_(gate|up)', layers = "2-27", type = "iq2_ks" }},
]
"""
VARIANTS = ("IQ4_KS", "IQ2_KS")


def run_cli(args: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(args)
    return rc, buf.getvalue()


def tensors(path: Path) -> list[tuple[str, int, tuple[int, ...], int]]:
    h = read_header(path)
    return [(t.name, t.type_id, tuple(t.shape), t.offset) for t in h.tensors]


def sha256(path: Path) -> str:
    from quantforge.fsutil import sha256_file

    return sha256_file(path)


@contextlib.contextmanager
def uncaptured(config: pytest.Config) -> Any:
    """The nodes' processes must not inherit pytest's capture files: Ray Client's per-driver server,
    started later by the head, fails to start on them."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Any:
    with uncaptured(pytestconfig):
        c = LoopbackCluster(
            tmp_path_factory.mktemp("ray-nodes"),
            [{"cpus": 1, "resources": {"rig:rig-a": 1}}, {"cpus": 1, "resources": {"rig:rig-b": 1}}],
        ).start()
    c.uncaptured = lambda: uncaptured(pytestconfig)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, smol_f16: Path, smol_imatrix: Path) -> dict[str, Any]:
    """The reference: the same recipe built locally, one thread, as a user would."""
    d = tmp_path_factory.mktemp("local")
    recipe = d / "smol.toml"
    recipe.write_text(RECIPE.format(base=smol_f16, imatrix=smol_imatrix, cluster=""))
    rc, out = run_cli(["build", str(recipe), "--all", "--out", str(d / "out"), "--threads", "1", "--json"])
    assert rc == 0
    return {"recipe": recipe, "out": d / "out", "result": json.loads(out)}


def assert_same_outputs(local_out: Path, cluster_out: Path, names: tuple[str, ...] = VARIANTS) -> None:
    for name in names:
        a = local_out / f"SmolLM2-135M-Instruct-{name}.gguf"
        b = cluster_out / f"SmolLM2-135M-Instruct-{name}.gguf"
        assert tensors(a) == tensors(b), name
        assert a.stat().st_size == b.stat().st_size
        assert sha256(a) == sha256(b), name
        ma, mb = read_manifest(a), read_manifest(b)
        assert [f.sha256 for f in ma.files] == [f.sha256 for f in mb.files] == [sha256(b)]
        assert ma.plan == mb.plan and ma.verification == mb.verification
        assert ma.base["sha256"] == mb.base["sha256"]
        # The same imatrix record, naming the same (driver's) file from each folder.
        assert ma.imatrix is not None and mb.imatrix is not None
        assert {**ma.imatrix, "path": None} == {**mb.imatrix, "path": None}
        assert resolve_file(a.with_name(a.name + ".manifest.json"), ma.imatrix["path"]) == resolve_file(
            b.with_name(b.name + ".manifest.json"), mb.imatrix["path"])


def test_ladder_pulled_back_equals_local(cluster: Any, local: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, text = run_cli(["build", str(local["recipe"]), "--all", "--out", str(out), "--cluster",
                        cluster.address,
                        "--json"])
    assert rc == 0
    res = json.loads(text)
    assert [r["status"] for r in res["results"]] == ["built", "built"]
    assert_same_outputs(local["out"], out)
    # Which node built what: two live worker nodes (the head has no CPUs), one variant each.
    workers = {n.node_id for n in cluster.workers}
    nodes = {}
    for name in VARIANTS:
        gguf = out / f"SmolLM2-135M-Instruct-{name}.gguf"
        node = read_manifest(gguf).node
        assert node is not None and node["node_id"] in workers
        assert node["pulled"]["bytes"] == gguf.stat().st_size
        assert node["scratch"] == str(cluster.scratch[node["node_id"]])
        nodes[name] = node["node_id"]
        # The node's own verified build stays in its scratch folder, with the same bytes.
        kept = Path(node["out_dir"]) / gguf.name
        assert kept.is_file() and sha256(kept) == sha256(gguf)
        # The pulled log is the node's log of that build, byte for byte.
        log = (out / f"{gguf.name}.log").read_bytes()
        assert log == (Path(node["out_dir"]) / f"{gguf.name}.log").read_bytes() and b"[   1/ 272]" in log
    assert len(set(nodes.values())) == 2
    assert not list(out.glob("*.partial"))
    # A rerun resumes: every variant verifies where it is, no task runs, nothing is rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, text = run_cli(["build", str(local["recipe"]), "--all", "--out", str(out), "--cluster",
                        cluster.address,
                        "--json"])
    assert rc == 0
    assert [r["status"] for r in json.loads(text)["results"]] == ["skipped", "skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_eval_on_cluster_equals_local(cluster: Any, local: dict[str, Any], tmp_path: Path) -> None:
    corpus = REPO / "quantforge" / "data" / "demo-eval.txt"
    args = ["eval", str(local["recipe"]), "--all", "--out-dir", str(local["out"]), "--ppl", "--corpus",
            str(corpus),
            "--ctx", "128", "--chunks", "2", "--threads", "1", "--no-manifest", "--json"]
    rc, text = run_cli(args)
    assert rc == 0
    here = json.loads(text)
    rc, text = run_cli([*args, "--cluster", cluster.address])
    assert rc == 0
    there = json.loads(text)
    workers = {n.node_id for n in cluster.workers}
    for a, b in zip(here, there, strict=True):
        assert b["node"]["node_id"] in workers
        assert a["model"] == b["model"] and a["model_sha256"] == b["model_sha256"]
        assert (a["ppl"], a["ppl_err"], a["chunk_ppl"], a["n_tokens_scored"]) == (
            b["ppl"], b["ppl_err"], b["chunk_ppl"], b["n_tokens_scored"])
        assert a["ppl"] > 1.0


def test_sweep_runs_on_the_node_of_its_rig(cluster: Any, local: dict[str, Any], tmp_path: Path) -> None:
    model = local["out"] / "SmolLM2-135M-Instruct-IQ4_KS.gguf"
    rig_b = next(n for n in cluster.workers if "rig:rig-b" in cluster.resources[n.node_id])
    for rig in ("rig-b", "rig-b"):  # twice: a placement by chance would pick the other node half the time
        out = tmp_path / f"sweep-{time.monotonic_ns()}.json"
        rc, text = run_cli(["sweep", "--model", str(model), "--repeat", "1", "--ctx", "64", "--ubatch", "32",
                            "--tg", "4", "--threads", "1", "--rig", rig, "--cluster", cluster.address, "-o",
                            str(out),
                            "--no-manifest", "--json"])
        assert rc == 0
        res = json.loads(text)
        assert res["node"]["node_id"] == rig_b.node_id and res["node"]["rig"] == "rig-b"
        assert res["model"] == str(model)
        assert [s["n_kv"] for s in res["summary"]] == [0, 32]
        assert all(s["s_pp_mean"] > 0 and s["s_tg_mean"] > 0 for s in res["summary"])
        assert json.loads(out.read_text())["node"]["node_id"] == rig_b.node_id
        assert Path(res["raw_jsonl"]).is_file()
    rc = main(["sweep", "--model", str(model), "--rig", "rig-z", "--cluster", cluster.address])
    assert rc == 1  # no node offers rig:rig-z: refused at once instead of waiting forever


def _shared_recipe(tmp_path: Path, smol_f16: Path, smol_imatrix: Path) -> tuple[Path, Path]:
    shared = tmp_path / "nfs"
    (shared / "out").mkdir(parents=True)
    recipe = tmp_path / "smol.toml"
    recipe.write_text(RECIPE.format(base=smol_f16, imatrix=smol_imatrix,
                                    cluster=f'\n[cluster]\nshared = "{shared}"\n'))
    return recipe, shared / "out"


def _driver(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # SIGINT back to its default in the driver: a suite started in the background (nohup, `&`) runs
    # with SIGINT ignored, which children inherit, and the Ctrl-C test would never interrupt it
    return subprocess.Popen([sys.executable, "-m", "quantforge", *args, "--no-progress"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, preexec_fn=sigint_default)


def _writing(partials: list[Path], timeout: float = 120) -> list[int]:
    """The llama-quantize pids once every one of ``partials`` is being written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tools = [pid for p in partials for pid in processes_with(str(p))]
        if len(tools) >= len(partials) and all(p.is_file() and p.stat().st_size > 4 * 1024**2
                                               for p in partials):
            return tools
        time.sleep(0.05)
    pytest.fail("llama-quantize never started writing every partial output")


def test_ctrl_c_on_the_driver_cancels_every_task(
    cluster: Any, tmp_path: Path, smol_f16: Path, smol_imatrix: Path
) -> None:
    recipe, out = _shared_recipe(tmp_path, smol_f16, smol_imatrix)
    partials = [out / f"SmolLM2-135M-Instruct-{n}.gguf.partial" for n in VARIANTS]
    driver = _driver(["build", str(recipe), "--all", "--out", str(out), "--cluster", cluster.address])
    try:
        tools = _writing(partials)  # both variants quantizing, one on each worker node
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Ctrl-C: cancelled 2 cluster task(s)" in lines[0], stderr
    time.sleep(0.5)
    assert not [pid for pid in tools if Path(f"/proc/{pid}").exists()]  # every tool stopped
    assert sorted(p.name for p in out.iterdir()
                  if not p.name.endswith(".log")) == []  # nothing partial, nothing final


def test_worker_killed_mid_build_then_rerun_resumes(
    cluster: Any, local: dict[str, Any], tmp_path: Path, smol_f16: Path, smol_imatrix: Path
) -> None:
    """A node dies while llama-quantize writes into the shared folder: its .partial stays, never a
    final name; the driver says what was lost; the rerun on the surviving nodes replaces it."""
    recipe, out = _shared_recipe(tmp_path, smol_f16, smol_imatrix)
    final = out / "SmolLM2-135M-Instruct-IQ4_KS.gguf"
    partial = out / f"{final.name}.partial"
    driver = _driver(["build", str(recipe), "-q", "IQ4_KS", "--out", str(out), "--cluster", cluster.address])
    try:
        tools = _writing([partial])
        victim = cluster.node_of_pid(tools[0])
        assert victim is not None
        dead = victim.node_id
        cluster.kill_node(victim, tools)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "died" in lines[0] and "run the same command again" in lines[0], stderr
    assert "Traceback" not in stderr
    assert not final.exists()  # never a partial under the final name
    assert partial.is_file()  # the dead node's partial, as a killed local build leaves it
    with cluster.uncaptured():
        cluster.add_worker({"cpus": 1}, name="worker3")  # the replacement machine
    rc, text = run_cli(["build", str(recipe), "-q", "IQ4_KS", "--out", str(out), "--cluster", cluster.address,
                        "--json"])
    assert rc == 0
    assert json.loads(text)["results"][0]["status"] == "built"
    assert not partial.exists()
    assert_same_outputs(local["out"], out, ("IQ4_KS",))
    node = read_manifest(final).node
    assert node is not None and node["node_id"] != dead and node["out_dir"] == str(out)
    assert "pulled" not in node  # written in place on the shared folder


def test_sensitivity_runs_are_tasks_and_fill_the_same_cache(
    cluster: Any, tmp_path: Path, smol_f16: Path, smol_imatrix: Path, ik_quantize: Path,
    monkeypatch: pytest.MonkeyPatch, ik_fixtures: Path,
) -> None:  # fmt: skip
    """The base run and one group measured as two tasks on two nodes; a local rerun then finds both
    in its cache (the same keys) and measures nothing; the baseline is the local Q8_0's KLD."""
    from support import cached_quant

    from quantforge import constants
    from quantforge.evaluate.perplexity import evaluate

    monkeypatch.setattr(constants, "CACHE_DIR", tmp_path / "cache")  # nothing measured before
    d = tmp_path / "sens"
    d.mkdir()
    (d / "r.toml").write_text((REPO / "recipes" / "smollm2-135m.toml").read_text())
    (d / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
    (d / "smollm2-135m.imatrix").symlink_to(smol_imatrix)
    corpus = d / "eval.txt"
    text = (ik_fixtures / "corpus.txt").read_text(encoding="utf-8")
    corpus.write_text(text[int(len(text) * 0.6):], encoding="utf-8")
    args = ["sensitivity", str(d / "r.toml"), "--quant", "Q8_0", "--corpus", str(corpus), "--kind",
            "ffn_down",
            "--buckets", "1", "--type", "iq4_nl", "--no-check", "--ctx", "256", "--chunks", "2",
            "--no-progress",
            "-o", str(d / "t.csv"), "--json"]  # fmt: skip
    rc, text_out = run_cli([*args, "--cluster", cluster.address])
    assert rc == 0
    there = json.loads(text_out)
    assert (there["measured"], there["cached"]) == (2, 0)
    table = there["table"]
    (entry,) = table["entries"]
    assert (entry["group"], entry["type"], entry["written"]) == ("ffn_down@0-29", "iq4_nl", ["iq4_nl"] * 30)
    assert entry["delta"] > 0
    q8 = cached_quant(ik_quantize, smol_f16, "Q8_0", imatrix=smol_imatrix)
    direct = evaluate(q8, engine="bundled", corpus=corpus, ctx=256, chunks=2, base=smol_f16)
    assert direct.kld is not None and table["baseline"] == pytest.approx(direct.kld.mean, rel=1e-9)
    rc, text_out = run_cli([*args[:-3], "-o", str(d / "t2.csv"), "--json"])  # locally, same method
    assert rc == 0
    here = json.loads(text_out)
    assert (here["measured"], here["cached"]) == (0, 2)
    assert here["table"]["entries"] == table["entries"] and here["table"]["baseline"] == table["baseline"]
