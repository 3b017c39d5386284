"""Measured sensitivity on the real SmolLM2 with the bundled engine: a representative subset (two
kinds, one bucket, two types, two chunks), resumed after Ctrl-C and after SIGKILL; published tables
imported; the solver over a measured table, and --verify building and measuring its variant.

The full acceptance run (8 kinds x 3 buckets x 3-4 types, 8 chunks) is ``bench/fit_smollm2.py``; its
numbers are in docs/fit-smollm2.md. Measured runs are cached in ``.qf-cache/sensitivity`` (keyed by
the method and the exact quantize arguments), so a second run of the suite measures nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import TEST_CACHE, cached_quant, sigint_default

from quantforge import constants
from quantforge.catalogue import catalogue
from quantforge.cli import main
from quantforge.evaluate import _util
from quantforge.sensitivity.table import read_table

REPO = Path(__file__).resolve().parents[1]
THIREUS = REPO / "tests" / "data" / "sensitivity" / "thireus" / "DeepSeek-V3.1-Terminus.kld_results.csv"
CURVE = THIREUS.with_name("DeepSeek-V3.1-Terminus.group0.kld_results.csv")
R1 = REPO / "tests" / "data" / "fit" / "deepseek-r1-0528.toml"
SUBSET = ["--kind", "attn_v", "--kind", "ffn_down", "--buckets", "1", "--type", "q5_0", "--type", "iq4_nl",
          "--chunks", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(ik_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (ik_fixtures / "corpus.txt").read_text(encoding="utf-8")
    p = tmp_path_factory.mktemp("corpus") / "eval.txt"
    p.write_text(text[int(len(text) * 0.6):], encoding="utf-8")
    return p


def _smol(d: Path, smol_f16: Path, smol_imatrix: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "r.toml").write_text((REPO / "recipes" / "smollm2-135m.toml").read_text())
    if not (d / "smollm2-135m-f16.gguf").exists():
        (d / "smollm2-135m-f16.gguf").symlink_to(smol_f16)
        (d / "smollm2-135m.imatrix").symlink_to(smol_imatrix)
    return d / "r.toml"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The suite's persistent cache (base logits and measured runs) instead of ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setattr(constants, "CACHE_DIR", TEST_CACHE / "qf-cache")
    yield TEST_CACHE / "qf-cache"
    mp.undo()


@pytest.fixture(scope="module")
def measured(cache: Path, corpus: Path, smol_f16: Path, smol_imatrix: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # fmt: skip
    d = tmp_path_factory.mktemp("sens")
    recipe = _smol(d, smol_f16, smol_imatrix)
    out = d / "smol.sensitivity.csv"
    args = ["sensitivity", str(recipe), "--corpus", str(corpus), *SUBSET, "-o", str(out), "--json"]
    return {"recipe": recipe, "out": out, "args": args, "dir": d}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    capsys.readouterr()
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


def test_sensitivity_measures_each_group_with_the_real_engine(
    measured: dict[str, Any], capsys: pytest.CaptureFixture[str], corpus: Path, smol_f16: Path,
    smol_imatrix: Path, ik_quantize: Path,
) -> None:  # fmt: skip
    res = _json(capsys, measured["args"])
    table = res["table"]
    cat = catalogue("ik")
    groups = {g["name"]: g for g in table["groups"]}
    assert list(groups) == ["attn_v@0-29", "ffn_down@0-29"]
    assert groups["attn_v@0-29"]["tensors"] == [f"blk.{i}.attn_v.weight" for i in range(30)]
    assert groups["attn_v@0-29"]["base_type"] == "q8_0"
    entries = {(e["group"], e["type"]): e for e in table["entries"]}
    assert set(entries) == {(g, t) for g in groups for t in ("iq4_nl", "q5_0")}
    # what llama-quantize wrote, and the group's bytes at that type, exact
    assert entries[("attn_v@0-29", "q5_0")]["written"] == ["q5_0"] * 30
    assert entries[("attn_v@0-29", "q5_0")]["bytes"] == 30 * cat.get("q5_0").tensor_bytes((576, 192))
    assert entries[("ffn_down@0-29", "iq4_nl")]["bytes"] == 30 * cat.get("iq4_nl").tensor_bytes((1536, 576))
    for e in entries.values():
        assert e["delta"] == pytest.approx(e["value"] - table["baseline"], abs=1e-12)
        assert e["delta"] > 0  # a lower type than q8_0 always costs
    # fewer bits cost more, for both kinds
    for g in groups:
        assert entries[(g, "iq4_nl")]["delta"] > entries[(g, "q5_0")]["delta"]
    # the method it was measured by
    assert (table["engine"], table["metric"], table["ctx"], table["chunks"], table["base_variant"]) == (
        "ik", "kld", 512, 2, "Q8_0")
    assert table["corpus_sha256"] == _util.sha256_file(corpus)
    assert table["base_sha256"] == _util.sha256_file(smol_f16)
    assert table["evaluator"].startswith("bundled ik-llama-cpp-python")
    # the baseline is the KLD of Q8_0 itself: the same number as llama-quantize Q8_0 + quantforge eval
    from quantforge.evaluate.perplexity import evaluate

    q8 = cached_quant(ik_quantize, smol_f16, "Q8_0", imatrix=smol_imatrix)
    direct = evaluate(q8, engine="bundled", corpus=corpus, ctx=512, chunks=2, base=smol_f16)
    assert direct.kld is not None and table["baseline"] == pytest.approx(direct.kld.mean, rel=1e-9)
    # the interaction checks: every group at its rank-r type at once, against the additive sum
    checks = {c["name"]: c for c in table["checks"]}
    assert set(checks) == {"all@rank0", "all@rank1"}
    c0 = checks["all@rank0"]
    assert c0["assignment"] == {"attn_v@0-29": "iq4_nl", "ffn_down@0-29": "iq4_nl"}
    assert c0["predicted"] == pytest.approx(
        table["baseline"] + entries[("attn_v@0-29", "iq4_nl")]["delta"] + entries[("ffn_down@0-29", "iq4_nl")]["delta"])
    # the CSV written reads back as the same table
    back = read_table(measured["out"])
    assert back.model_dump(mode="json") == {**table, "notes": table["notes"]}
    # a second run measures nothing
    again = _json(capsys, measured["args"])
    assert (again["measured"], again["cached"]) == (0, 1 + 4 + 2)
    assert again["table"]["entries"] == table["entries"]


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "quantforge", *args], cwd=cwd, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=sigint_default,
    )  # fmt: skip


def _runs(cache: Path) -> list[Path]:
    return sorted(cache.glob("sensitivity/*/runs/*.json"))


def _wait(pred: Any, proc: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read().decode() if proc.stderr else ''}")
        assert time.monotonic() - t0 < timeout, "the run never reached the point to interrupt"
        time.sleep(0.1)


def test_sensitivity_resumes_after_ctrl_c_and_after_a_kill(
    tmp_path: Path, corpus: Path, smol_f16: Path, smol_imatrix: Path
) -> None:
    recipe = _smol(tmp_path / "smol", smol_f16, smol_imatrix)
    cache = tmp_path / "cache"
    env = {"QUANTFORGE_CACHE": str(cache)}
    args = ["sensitivity", str(recipe), "--corpus", str(corpus), "--kind", "attn_k", "--buckets", "1",
            "--type", "iq4_nl", "--type", "q5_0", "--type", "q6_0", "--no-check", "--chunks", "1",
            "-o", str(tmp_path / "t.csv"), "--json"]  # fmt: skip
    # Ctrl-C once the first run (the base) is stored: exit 130, one line, the stored run kept
    p = _start([*args, "--jobs", "1"], tmp_path, env)
    _wait(lambda: len(_runs(cache)) >= 1, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert p.returncode == 130, err.decode()
    assert len(lines) == 1 and "Traceback" not in err.decode(), lines
    assert "runs are in the cache" in lines[0] and "run the same command again to resume" in lines[0]
    kept = len(_runs(cache))
    assert kept >= 1
    assert not list(cache.glob("sensitivity/*/work/*.gguf")), "no quantized variant left behind"
    assert not (tmp_path / "t.csv").exists()
    # SIGKILL (a crash) while the next ones run: nothing can clean up, the next run does
    p = _start([*args, "--jobs", "2"], tmp_path, env)
    _wait(lambda: len(_runs(cache)) >= kept + 1, p)
    p.kill()
    p.wait(timeout=60)
    kept2 = len(_runs(cache))
    assert kept2 >= kept + 1
    for f in _runs(cache):
        json.loads(f.read_text())  # every stored run is whole (written atomically)
    # the same command completes, measuring only what is missing; a llama-quantize orphaned by the
    # kill keeps the cache folder's lock until it ends, so the rerun queues behind it (--wait)
    # instead of clearing the folder under it
    p = _start([*args, "--jobs", "2", "--wait"], tmp_path, env)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err.decode()
    res = json.loads(out)
    assert res["cached"] == kept2 and res["measured"] == 4 - kept2
    assert [e["type"] for e in res["table"]["entries"]] == ["iq4_nl", "q5_0", "q6_0"]
    d = [e["delta"] for e in res["table"]["entries"]]
    assert d[0] > d[1] > d[2]  # iq4_nl costs more than q5_0, which costs more than q6_0
    assert not list(cache.glob("sensitivity/*/work/*")), "the work folder is cleaned"
    # a second run of the same method while one is measuring stops at once, naming the holder
    (cdir,) = cache.glob("sensitivity/*/method.json")
    table_bytes = (tmp_path / "t.csv").read_bytes()
    code = ("import sys, time; from quantforge.lock import folder_lock\n"
            "with folder_lock(sys.argv[1], purpose='quantforge sensitivity other.toml'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(cdir.parent)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        p = _start(args, tmp_path, env)
        _, err = p.communicate(timeout=120)
        lines = err.decode().strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, err.decode()
        assert f"pid {holder.pid} (quantforge sensitivity other.toml" in lines[0], lines[0]
        assert "is using this folder" in lines[0] and "--wait" in lines[0], lines[0]
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "t.csv").read_bytes() == table_bytes, "the stopped run wrote nothing"


# ------------------------------------------------------------------------------ imports


def test_import_thireus_table_for_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r1.sensitivity.csv"
    res = _json(capsys, ["sensitivity", str(R1), "--import", str(THIREUS), "--curve", str(CURVE), "-o", str(out),
                         "--json"])  # fmt: skip
    assert len(res["groups"]) == 725 and res["metric"] == "kld" and res["arch"] == "deepseek2"
    assert res["model"] == "deepseek-ai/DeepSeek-R1-0528"
    back = read_table(out)
    assert back.model_dump(mode="json") == res
    # the per-tensor costs read straight from the published file
    row = dict(zip(THIREUS.read_text().splitlines()[0].split(",")[1:],
                   map(float, THIREUS.read_text().splitlines()[1].split(",")[1:]), strict=True))  # fmt: skip
    got = {e.group: e.value for e in back.entries if e.type == "iq1_m_r4"}
    assert got == row
    # written again without --force: the same method, so allowed (a resumed or refreshed import)
    assert main(["sensitivity", str(R1), "--import", str(THIREUS), "--curve", str(CURVE), "-o", str(out)]) == 0


def test_import_tensor_kld_rows_and_bad_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "t.csv"
    rows.write_text("tensor,kld\nblk.3.ffn_down_exps.weight,0.5\nblk.4.ffn_down_exps.weight,0.25\n")
    t = read_table(rows, engine="ik")
    assert t.metric == "relative" and [g.name for g in t.groups] == ["blk.3.ffn_down_exps.weight",
                                                                      "blk.4.ffn_down_exps.weight"]
    iq1 = {e.group: e.delta for e in t.entries if e.type == "iq1_s"}
    assert iq1 == {"blk.3.ffn_down_exps.weight": pytest.approx(0.5), "blk.4.ffn_down_exps.weight": pytest.approx(0.25)}
    bad = tmp_path / "bad.csv"
    bad.write_text("QTYPE,blk.0.attn_q.weight,blk.0.attn_k.weight\niq1_m_r4,0.1\n")
    assert main(["sensitivity", str(R1), "--import", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2: row has 2 cells, the header 3" in err[0]
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("QTYPE,blk.0.ffn_up_exps_nope.weight\niq1_m_r4,0.1\n")
    assert main(["sensitivity", str(R1), "--import", str(foreign)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the table's tensors" in err[0]
    # an existing file that is not such a table is never overwritten without --force
    other = tmp_path / "notes.csv"
    other.write_text("my notes\n")
    assert main(["sensitivity", str(R1), "--import", str(THIREUS), "-o", str(other)]) == 2
    assert other.read_text() == "my notes\n"
    assert "pass --force" in capsys.readouterr().err


# ------------------------------------------------------------------------------ solving over it


def test_fit_budget_over_a_measured_table_and_verify(
    measured: dict[str, Any], capsys: pytest.CaptureFixture[str], corpus: Path, tmp_path: Path
) -> None:
    table = read_table(measured["out"])
    costs = table.costs()
    base_bytes = 143_025_408  # the Q8_0 plan's tensor data (see the table's note)
    assert table.notes[0] == f"base variant Q8_0: {base_bytes:,} bytes of tensor data"
    # 2 MB under Q8_0: one group must drop; the cheapest way is the one the table says
    budget = base_bytes - 2_000_000
    out = tmp_path / "built"
    res = _json(capsys, ["fit", str(measured["recipe"]), "--budget", str(budget), "--sensitivity", str(measured["out"]),
                         "--name", "FIT-TEST", "--write", "--verify", "--corpus", str(corpus), "--out-dir", str(out),
                         "--json"])  # fmt: skip
    assert res["tensor_bytes"] <= budget and res["status"] == "optimal"
    chosen = {c["group"]: c["type"] for c in res["choices"]}
    cat = catalogue("ik")
    size = {g.name: g.bytes for g in table.groups}
    options = []
    for a, ta in costs["attn_v@0-29"].items():
        for b, tb in costs["ffn_down@0-29"].items():
            by = {"attn_v@0-29": a, "ffn_down@0-29": b}
            nbytes = base_bytes + sum(
                next((e.bytes for e in table.entries if e.group == g and e.type == t), size[g]) - size[g]  # type: ignore[misc]
                for g, t in by.items())  # fmt: skip
            if nbytes <= budget:
                options.append((ta + tb, by))
    best = min(options, key=lambda o: o[0])
    assert chosen == best[1]
    assert res["predicted"] == pytest.approx(table.baseline + best[0])
    assert res["types"]["blk.0.attn_v.weight"] == cat.normalise(chosen["attn_v@0-29"])
    # --verify built it with llama-quantize and measured it as the table was measured
    v = res["verify"]
    assert v["chunks"] == 2 and v["engine"] == "bundled"
    assert v["error"] == pytest.approx((res["predicted"] - v["measured"]) / v["measured"])
    assert abs(v["error"]) < 0.25  # one group changed: the additive model is exact up to noise
    man = json.loads(Path(v["manifest"]).read_text())
    assert man["fit"]["predicted_kld"] == res["predicted"] and man["fit"]["measured_kld"] == v["measured"]
    assert man["eval"]["latest"]["kld"]["mean"] == v["measured"]
    # the card shows both
    from quantforge.manifest import read_manifest
    from quantforge.publish.card import card_data_from_manifests, render_card
    from quantforge.recipe import load_recipe

    r = load_recipe(measured["recipe"])
    m = read_manifest(v["manifest"])
    data = card_data_from_manifests(r, [(Path(v["manifest"]), m)], repo=None,
                                    files_in_repo={"FIT-TEST": ("x.gguf",)})  # fmt: skip
    text = render_card(data)
    assert "KLD predicted" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| FIT-TEST |"))
    assert f"{res['predicted']:.6f}" in row and f"{v['measured']:.6f}" in row
